"""README.md's shell blocks run as written, in order, in a fresh clone: real git, real DVC, a plain shell.

The test takes every ```bash block of README.md, joins them into one bash script and runs it in a new clone of the
work tree (tracked and untracked-but-not-ignored files, committed there). Only three things are added around the
README's own lines: git's user.name/email (a new machine has none), the venv (a link to this one: creating a
venv is what CI's clean clone tests, and `make install` sees it is up to date), and, after each line, a snapshot
(HEAD, the model's sha256, params) that the assertions read. `make test` is the one line left out: it is the
command that runs this test (CI runs it from .ci/run).

Then: the version round trip restores v1.0.0's model bytes; no command at the root mentions the detection and
segmentation projects in pipelines/; a failed experiment is undone by the one command the README gives; the train
stage's dependencies cover every module a training run imports.
"""
import hashlib, json, os, re, shutil, subprocess, sys
from pathlib import Path
import pytest, yaml
from conftest import ROOT, PLAIN_ENV as ENV, README_TEXT as README, bash as sh, shell_blocks, readme_lines, copy_project

MODEL = 'models/digits-cnn/model.safetensors'


@pytest.fixture(scope='module')
def journey(readme_journey):
    "The README's commands, run once in a fresh clone (tests/conftest.py, shared with the pipeline and predict tests)."
    return readme_journey


def line_index(lines, pattern) -> int:
    hits = [i for i, l in enumerate(lines) if re.search(pattern, l)]
    assert len(hits) == 1, f'expected one README line matching {pattern!r}, got {hits}'
    return hits[0]


def test_readme_has_the_round_trip():
    lines = readme_lines()
    assert lines[0].startswith('make run'), 'the first command is the main job'
    for pattern in (r'^make release NAME=digits-cnn VERSION=1\.0\.0', r'^make release NAME=digits-cnn VERSION=1\.1\.0',
                    r'^dvc exp run -S', r'^git checkout digits-cnn@v1\.0\.0 && dvc checkout'):
        line_index(lines, pattern)
    assert re.search(r'^make test\b', shell_blocks(README)[0], flags=re.M), 'the first block shows the two commands'


def test_the_round_trip_restores_version_1_bit_for_bit(journey):
    repo, lines, snaps, out = journey
    after = {s['line']: s for s in snaps}
    v1 = after[line_index(lines, r'VERSION=1\.0\.0')]
    v2 = after[line_index(lines, r'VERSION=1\.1\.0')]
    back = after[line_index(lines, r'^git checkout digits-cnn@v1\.0\.0')]
    newest = after[len(lines) - 1]
    assert v1['model'] and v2['model'] and v1['model'] != v2['model'], 'the experiment trained another model'
    assert (v1['lr'], v2['lr']) == ('0.003', '0.01')
    assert back['model'] == v1['model'] and back['lr'] == '0.003' and back['dirty'] == 0
    assert newest['model'] == v2['model'] and newest['dirty'] == 0
    assert sh('git tag --list', repo).stdout.split() == ['digits-cnn@v1.0.0', 'digits-cnn@v1.1.0']
    assert hashlib.sha256((repo/MODEL).read_bytes()).hexdigest() == v2['model']


def test_make_run_prints_the_kits_lines_not_dvcs_hints(journey):
    repo, lines, snaps, out = journey
    for hint in ('git add dvc.lock', 'core.autostage', 'Use `dvc push`'):
        assert hint not in out, f'DVC hint {hint!r} in the output'
    table = out[out.index('metric'):].split('\n\n')[0].splitlines()
    assert table[0].split() == ['metric', 'value'] and any(l.startswith('test accuracy') for l in table)
    assert max(map(len, table)) <= 100
    assert 'nothing changed since the last run' in out  # README's second `make run` did no training


def test_root_commands_leave_the_task_pipelines_alone(journey):
    repo, lines, snaps, out = journey
    assert 'pipelines/' not in out, [l for l in out.splitlines() if 'pipelines/' in l]
    r = sh(f'. .venv/bin/activate && dvc status && dvc checkout', repo)
    assert 'pipelines/' not in r.stdout + r.stderr and 'up to date' in r.stdout


def test_a_failed_experiment_is_undone_by_the_readmes_command(journey, tmp_path):
    repo = copy_project(journey, tmp_path, remote=False)  # the journey's project as it ended, to fail in
    restore = re.search(r'If one fails[^`]*`([^`]+)` puts the workspace back', README.replace('\n', ' '))
    assert restore, 'the README says how to undo a failed experiment'
    before = (repo/MODEL).read_bytes()
    r = sh('. .venv/bin/activate && dvc exp run -S train.epochs=0', repo, check=False)
    assert r.returncode != 0 and 'epochs' in r.stdout + r.stderr
    assert sh('git status --porcelain', repo).stdout.strip(), 'the failed experiment changed the workspace'
    sh(f'. .venv/bin/activate && {restore[1]}', repo)
    assert sh('git status --porcelain', repo).stdout == ''
    assert (repo/MODEL).read_bytes() == before
    assert 'up to date' in sh('. .venv/bin/activate && dvc status', repo).stdout


def test_train_depends_on_every_module_a_training_run_imports(journey, tmp_path):
    repo = copy_project(journey, tmp_path/'project', remote=False)  # its files are changed below
    params = yaml.safe_load((repo/'params.yaml').read_text())
    params['train'].update(epochs=1); params['data'].update(train_subset=64)
    (tmp_path/'params.yaml').write_text(yaml.safe_dump(params))
    code = ('import json, sys; from core_models.cli import main\n'
            "for cmd in (['prepare', '--only', 'digits'], ['train'], ['evaluate']): assert main([*cmd, '--params', 'params.yaml']) == 0\n"
            "print(json.dumps(sorted(m.__file__ for n, m in sys.modules.items() if n.split('.')[0] == 'core_models' and getattr(m, '__file__', None))))")
    r = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=ENV | {'CORE_MODELS_DEVICE': 'cpu'}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    used = {Path(f).resolve().relative_to(ROOT).as_posix() for f in json.loads(r.stdout.splitlines()[-1])}
    assert {'core_models/blocks/conv.py', 'core_models/training.py', 'core_models/heads/classifier.py'} <= used
    act = '. .venv/bin/activate && '
    deps = yaml.safe_load((repo/'dvc.yaml').read_text())['stages']['train']['deps']
    outside = [f for f in used if not any(f == d or f.startswith(d.rstrip('/') + '/') for d in deps)]
    assert not outside, f'modules a training run imports that no train dependency holds: {outside}'
    ignored = sh(act + 'dvc check-ignore ' + ' '.join(sorted(used)), repo, check=False).stdout.split()
    assert not ignored, f'modules a training run imports that .dvcignore leaves out of the hash: {ignored}'
    # and DVC sees it: a change to a block retrains, a change to a widget does not
    for rel, retrains in (('core_models/blocks/conv.py', True), ('core_models/widgets/builder.py', False)):
        original = (repo/rel).read_text()
        try:
            (repo/rel).write_text(original + '\n# changed\n')
            status = json.loads(sh(act + 'dvc status train --json', repo).stdout or '{}')
            assert ('train' in status) == retrains, (rel, status)
        finally: (repo/rel).write_text(original)


def test_make_lab_starts_as_root_and_runs_plain_jupyter_lab_for_a_normal_user():
    """`make lab` serves JupyterLab as root (the page answers; stopped with SIGTERM once it does). As a normal user
    it runs plain `jupyter lab` (no --allow-root): shown with `make -n` as the user nobody, because this venv's
    Python lives under /root, which nobody cannot enter."""
    import socket, tempfile, time, urllib.request, signal
    if os.geteuid() != 0: pytest.skip('needs root: as root, and as the user nobody through setpriv')
    as_nobody = ['setpriv', '--reuid', 'nobody', '--regid', 'nogroup', '--clear-groups']
    dry = subprocess.run([*as_nobody, 'make', '-n', 'lab'], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    lab = [l for l in dry.stdout.splitlines() if 'jupyter lab' in l]
    assert lab == ['.venv/bin/jupyter lab --notebook-dir=. '], dry.stdout
    home = Path(tempfile.mkdtemp(prefix='lab-'))
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    env = ENV | {'HOME': str(home), 'JUPYTER_CONFIG_DIR': str(home/'cfg'), 'JUPYTER_DATA_DIR': str(home/'data'),
                 'JUPYTER_RUNTIME_DIR': str(home/'run'), 'JUPYTER_PORT': str(port), 'JUPYTER_TOKEN': 'lab-test',
                 'BROWSER': 'true', 'TMPDIR': str(home)}
    p = subprocess.Popen(['make', '-s', 'lab'], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, start_new_session=True)
    try:
        deadline, status = time.time() + 120, None
        while time.time() < deadline and p.poll() is None:
            try:
                with urllib.request.urlopen(f'http://127.0.0.1:{port}/lab?token=lab-test', timeout=5) as resp: status = resp.status
                break
            except OSError: time.sleep(1)
        alive = p.poll() is None
    finally:
        if p.poll() is None: os.killpg(p.pid, signal.SIGTERM)
        try: out = p.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired: os.killpg(p.pid, signal.SIGKILL); out = p.communicate()[0]
        shutil.rmtree(home, ignore_errors=True)
    assert alive and status == 200, f'make lab as root: {out[-2000:]}'
    assert 'Running as root is not recommended' not in out
