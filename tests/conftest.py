import contextlib, fcntl, io, json, os, re, shutil, subprocess, sys, time
from pathlib import Path
from typing import NamedTuple
import pytest

pytest.register_assert_rewrite('fidelity')  # the shared fidelity checks report both sides when they fail

ROOT = Path(__file__).resolve().parents[1]

# Test modules that train, drive a browser, run DVC pipelines or many subprocesses: `make test` runs them,
# `make test-fast` (pytest -m 'not slow') skips them. A single slow test elsewhere takes @pytest.mark.slow.
SLOW_MODULES = {
    'test_readme.py', 'test_widgets_browser.py', 'test_pipeline.py', 'test_own_data.py', 'test_own_data_pipeline.py',
    'test_finetune.py', 'test_distributed.py', 'test_docs.py', 'test_registry.py', 'test_training.py', 'test_exercises.py',
    'test_seed_examples.py', 'test_tracing.py', 'test_backbones_resnet.py', 'test_backbones_efficient.py',
    'test_backbones_vit.py', 'test_timm_backbones.py', 'test_export.py', 'test_predict.py', 'test_checkpoint.py',
    'test_checkpoint_kills.py', 'test_disk_full.py', 'test_registry_faults.py', 'test_cli.py', 'test_project.py',
}


def pytest_configure(config):
    config.addinivalue_line('markers', "slow: trains, drives a browser, runs pipelines or subprocesses (skipped by make test-fast)")


# -- two workers (`make test`: pytest -n 2 --dist loadfile --no-loadscope-reorder, pytest-xdist) --------------------
# A test module is one unit of work, sent whole to one worker, so its module fixtures are built once. Units go out in
# the order of UNITS_FIRST (the longest, measured, issue 18), then the rest in collection order: the short ones fill
# the gaps at the end. The README journey (readme_journey) is built once for both workers. Without -n the same order
# runs in one process.
UNITS_FIRST = [
    'test_widgets_browser.py',  # JupyterLab and Chromium, the widget notebooks in real kernels
    'test_pipeline.py',         # the README journey (readme_journey), then releases, checkouts, an experiment
    'test_own_data_pipeline.py', 'test_readme.py', 'test_predict.py', 'test_checkpoint.py', 'test_timm_backbones.py',
    'test_registry.py', 'test_own_data.py', 'test_export.py', 'test_finetune.py', 'test_seed_examples.py', 'test_docs.py',
    'test_distributed.py', 'test_cli.py', 'test_registry_faults.py',
]
# One OpenMP thread a worker: two workers fill the two cores; two threads each would spin against each other. Set
# before torch is imported (libgomp reads it once); the subprocesses a test starts inherit it.
if os.environ.get('PYTEST_XDIST_WORKER'): os.environ.setdefault('OMP_NUM_THREADS', '1')


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SLOW_MODULES: item.add_marker(pytest.mark.slow)
    first = {u: i for i, u in enumerate(UNITS_FIRST)}
    items.sort(key=lambda item: first.get(item.path.name, len(first)))  # stable: a module's tests keep their order


@pytest.fixture
def run_python(tmp_path):
    "Run `code` in a fresh interpreter of this venv (cwd `tmp_path` unless given); returns the CompletedProcess."
    def run(code, *, env=None, cwd=None):
        full_env = {**os.environ, **(env or {})}
        return subprocess.run([sys.executable, '-c', code], cwd=cwd or tmp_path, env=full_env,
                              capture_output=True, text=True, timeout=300)
    return run


def cli_in_process(*args, cwd) -> subprocess.CompletedProcess:
    """`core-models *args` run in this process (`core_models.cli.main`, as the console script calls it), in `cwd`: for
    the cases that are not about the process boundary (a test module's first call of a command crosses it for real);
    saves the 2-4 s of CPU an interpreter start with torch (and torchvision) takes."""
    from core_models.cli import main
    from core_models.settings import get_settings
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            get_settings(reload=True)  # as a process started in `cwd` reads them: its settings.ini, its data_path
            code = main([str(a) for a in args])
    finally: get_settings(reload=True)
    return subprocess.CompletedProcess(['core-models', *map(str, args)], code, out.getvalue(), err.getvalue())


@pytest.fixture
def one_thread():
    "One torch thread for a test of tiny models (as fast, and no stalls when other jobs share the CPU); the caller's count restored."
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- one released digits project for the whole session -------------------------------------------------------------
# README.md's round trip (make run, release 1.0.0, an experiment, release 1.1.0, back to 1.0.0 and forward again) is
# run once, from the README's own text, by the `readme_journey` fixture below. tests/test_readme.py judges the journey;
# tests/test_pipeline.py and tests/test_predict.py work on copies of the project it leaves (`copy_project`: git, the
# .dvc cache and the DVC remote beside it, copied in a fraction of a second, where a `dvc repro` takes a minute).

README_TEXT = (ROOT/'README.md').read_text()
VENV_BIN = str(Path(sys.executable).parent)
# a plain shell: the system's PATH, without this venv (DVC's stages must find core-models the way the README says)
PLAIN_PATH = os.pathsep.join(p for p in os.environ.get('PATH', '/usr/bin:/bin').split(os.pathsep)
                             if p and Path(p).resolve() != Path(VENV_BIN).resolve())
PLAIN_ENV = {k: v for k, v in os.environ.items() if k not in ('VIRTUAL_ENV', 'PYTHONPATH')} | {
    'PATH': PLAIN_PATH, 'OMP_NUM_THREADS': '1'}
DVC_REMOTE = 'core-models-dvc-storage'  # .dvc/config's remote: ../core-models-dvc-storage, beside the repo


def shell_blocks(text:str) -> list[str]:
    "The ```bash blocks of a markdown text, in order."
    return re.findall(r'^```bash\n(.*?)^```', text, flags=re.S | re.M)


def readme_lines() -> list[str]:
    "The README's shell commands in order (comment-only and blank lines dropped), `make test` left out."
    lines = [l for b in shell_blocks(README_TEXT) for l in b.splitlines() if l.strip() and not l.lstrip().startswith('#')]
    return [l for l in lines if not re.match(r'\s*make test\b', l)]


def bash(cmd:str, cwd:Path, check=True, env=None, timeout=900) -> subprocess.CompletedProcess:
    "`cmd` in a plain bash (PLAIN_ENV unless `env`); raises with its output when it fails and `check`."
    r = subprocess.run(['bash', '-c', cmd], cwd=cwd, env=env or PLAIN_ENV, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode: raise AssertionError(f'{cmd!r} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}')
    return r


def fresh_clone(base:Path) -> Path:
    "A clone of the work tree as it is now (committed in a scratch repo first), with this venv linked in."
    src, repo = base/'src', base/'repo'
    files = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard', '-z'], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split('\0')):
        if not os.path.lexists(ROOT/rel): continue  # deleted in the work tree, not yet committed
        (src/rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT/rel, src/rel, follow_symlinks=False)
    ident = 'git -c user.name=readme -c user.email=readme@example.com'
    bash(f'git init -q -b main && git add -A && {ident} commit -q -m "core_models"', src)
    bash(f'git clone -q {src} {repo}', base)
    bash('git config user.name "A New User" && git config user.email user@example.com', repo)
    (repo/'.venv').symlink_to(ROOT/'.venv')
    return repo


SNAP = r'''__snap() {  # after README line $1: where HEAD is, the model's digest, the learning rate, what git sees
  printf '{"line": %s, "t": %s, "head": "%s", "model": "%s", "lr": "%s", "dirty": %s}\n' "$1" "$(date +%s.%N)" "$(git rev-parse HEAD)" \
    "$(sha256sum models/digits-cnn/model.safetensors 2>/dev/null | cut -c1-64)" \
    "$(grep -E '^  lr:' params.yaml | awk '{print $2}')" "$(git status --porcelain | wc -l)" >> "$SNAPSHOTS"
}
'''


class Journey(NamedTuple):
    repo: Path          # the clone after the README's last line (HEAD: the newest version, digits-cnn@v1.1.0)
    lines: list         # the README lines run, in order
    snaps: list         # one snapshot (dict) after each line
    out: str            # what the lines printed (stdout + stderr)

    def after(self, pattern:str) -> dict:
        "The snapshot after the one README line matching `pattern`."
        hits = [i for i, l in enumerate(self.lines) if re.search(pattern, l)]
        assert len(hits) == 1, f'expected one README line matching {pattern!r}, got {hits}'
        return self.snaps[hits[0]]


@pytest.fixture(scope='session')
def readme_journey(tmp_path_factory) -> Journey:
    """The README's commands, run once in a fresh clone as a user types them: the clone, each line's snapshot and the
    output. Once for the whole run: under pytest-xdist the first worker to ask runs them (the others wait on a lock)
    into a folder the workers share, which nothing touches afterwards; each worker gets its own copy of that project
    (`copy_project`), so no git or DVC command of one worker runs in a folder another one is copying."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get('PYTEST_XDIST_WORKER'): shared = shared.parent  # .../pytest-N, above popen-gw0, popen-gw1
    with open(shared/'readme.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = shared/'readme'/'journey.json'
        if done.exists():
            j = json.loads(done.read_text())
            built = Journey(Path(j['repo']), j['lines'], j['snaps'], j['out'])
        else:
            built = _run_readme(shared/'readme')
            done.write_text(json.dumps(built._replace(repo=str(built.repo))._asdict()))
        return built._replace(repo=copy_project(built, tmp_path_factory.mktemp('journey')))


def _run_readme(base:Path) -> Journey:
    "The README's lines in a fresh clone under `base` (emptied first: a failed earlier attempt may have left one)."
    shutil.rmtree(base, ignore_errors=True); base.mkdir()
    repo = fresh_clone(base)
    lines = readme_lines()
    script = 'set -e -o pipefail\n' + SNAP + ''.join(f'{l}\n__snap {i}\n' for i, l in enumerate(lines))
    (base/'readme.sh').write_text(script)
    start = time.time()
    r = subprocess.run(['bash', str(base/'readme.sh')], cwd=repo, env=PLAIN_ENV | {'SNAPSHOTS': str(base/'snapshots.jsonl')},
                       capture_output=True, text=True, timeout=1200)
    snaps = [json.loads(l) for l in (base/'snapshots.jsonl').read_text().splitlines()] if (base/'snapshots.jsonl').exists() else []
    done, t = len(snaps), [start] + [s['t'] for s in snaps]
    print('\n'.join(f'{t[i + 1] - t[i]:6.1f} s  {lines[i]}' for i in range(done)))  # what a new user waits for (pytest -s)
    assert r.returncode == 0, (f'README line {done} failed ({r.returncode}): {lines[done] if done < len(lines) else "?"}\n'
                               f'{r.stdout[-4000:]}\n{r.stderr[-4000:]}')
    return Journey(repo, lines, snaps, r.stdout + r.stderr)


def copy_project(journey:Journey, dest:Path, remote:bool=True) -> Path:
    """A copy of the journey's project in `dest`/repo (its git history and tags, .dvc cache, work tree and venv link),
    with the DVC remote beside it in `dest` unless not `remote`; returns the copy's repo. For tests that change it."""
    src = journey.repo
    shutil.copytree(src, dest/'repo', symlinks=True)
    if remote: shutil.copytree(src.parent/DVC_REMOTE, dest/DVC_REMOTE, symlinks=True)
    return dest/'repo'
