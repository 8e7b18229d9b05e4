import contextlib, fcntl, importlib.util, io, json, os, re, shutil, subprocess, sys, time
from pathlib import Path
from typing import NamedTuple
import pytest

pytest.register_assert_rewrite('fidelity')  # the shared fidelity checks report both sides when they fail

ROOT = Path(__file__).resolve().parents[1]

NBS = ROOT/'nbs'


def notebooks() -> list[Path]:
    "The notebooks under nbs/, sorted (names starting with `_` and checkpoints left out, as nbdev does)."
    return [p for p in sorted(NBS.rglob('*.ipynb')) if '.ipynb_checkpoints' not in p.parts and not p.name.startswith('_')]


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
# A unit of work goes whole to one worker: a test module (so its module fixtures are built once), or one notebook of
# tests/test_notebooks.py (UnitScheduling below). Units go out in the order of UNITS_FIRST (the longest, measured CPU
# seconds, issue 18), then the rest in collection order: the short ones fill the gaps at the end, and the notebooks and
# the test modules share one tail. The README journey (readme_journey) is built once for both workers. Without -n the
# same order runs in one process.
UNITS_FIRST = [  # the CPU seconds of each, measured in one run of the whole suite on 2 cores (issue 18)
    'test_widgets_browser.py',          # 164: JupyterLab and Chromium, the widget notebooks in real kernels
    'test_pipeline.py',                 # 138: builds the README journey (readme_journey), then releases, checkouts
    'tutorials/06_versioning.ipynb',    # 146: dvc repro, two experiments, two releases
    'tutorials/09_own_images.ipynb',    # 126: two pipelines and a detector on photographs
    'tutorials/05_segmentation.ipynb',  # 116: an FPN model and two DeepLabs trained
    'tutorials/04_detection.ipynb',     # 111: an FCOS detector trained
    'test_own_data_pipeline.py', 'test_checkpoint.py', 'test_registry.py', 'tutorials/10_predict.ipynb',  # 110, 83, 69, 63
    'test_timm_backbones.py', 'architectures/05_multilabel.ipynb', 'test_distributed.py', 'test_cli.py',  # 62, 56, 52, 48
    'test_finetune.py', 'test_export.py', 'test_own_data.py', 'test_docs.py', 'test_seed_examples.py',    # 45 to 37
    'test_tracing.py', 'test_imports.py', 'test_readme.py', 'test_gpu_check.py', 'tutorials/08_scaling_out.ipynb',  # 35 to 30
    'tutorials/07_performance.ipynb', 'test_registry_faults.py', '07_cli.ipynb', 'versioning/00_checkpoint.ipynb',  # 29 to 24
    'tutorials/00_tour.ipynb', 'test_backbones_efficient.py', 'tutorials/02_vit_from_patches.ipynb',                # 23 to 21
    'tutorials/03_features_gradcam.ipynb', '06_training.ipynb', 'test_predict.py', '08a_export.ipynb',             # 18 to 16
    'tutorials/01_cnn_from_blocks.ipynb', 'test_backbones_resnet.py', 'backbones/02_vit.ipynb', 'test_usage_recorded.py',  # 15 to 13
]
# One OpenMP thread a worker: two workers fill the two cores; two threads each would spin against each other. Set
# before torch is imported (libgomp reads it once); the subprocesses a test starts inherit it.
if os.environ.get('PYTEST_XDIST_WORKER'): os.environ.setdefault('OMP_NUM_THREADS', '1')


def unit_of(item) -> str:
    "The unit of work `item` belongs to: its notebook (tests/test_notebooks.py::test_notebook), else its test module."
    if item.path.name == 'test_notebooks.py' and item.originalname == 'test_notebook': return item.callspec.params['nb']
    return item.path.name


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SLOW_MODULES: item.add_marker(pytest.mark.slow)
    first = {u: i for i, u in enumerate(UNITS_FIRST)}
    items.sort(key=lambda item: first.get(unit_of(item), len(first)))  # stable: a module's tests keep their order


def pytest_xdist_make_scheduler(config, log):
    "`--dist loadfile`, with each notebook of tests/test_notebooks.py a unit of its own (xdist's own loadgroup does not"
    " group under pytest 9, which no longer reads the node id xdist rewrites)."
    if config.getoption('dist') != 'loadfile': return None
    from xdist.scheduler import LoadFileScheduling

    class UnitScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid:str) -> str:
            return nodeid if '/test_notebooks.py::test_notebook[' in f'/{nodeid}' else super()._split_scope(nodeid)
    return UnitScheduling(config, log)


def pytest_terminal_summary(terminalreporter):
    "The notebooks' CPU seconds (with the processes each started; tests/notebook_runner.py), the largest first."
    cpu = {r.nodeid.split('[', 1)[1].rstrip(']'): dict(r.user_properties)['cpu_seconds']
           for r in terminalreporter.stats.get('passed', []) + terminalreporter.stats.get('failed', [])
           if r.when == 'call' and 'cpu_seconds' in dict(r.user_properties)}
    if cpu:
        top = ', '.join(f'{nb} {s:.0f}' for nb, s in sorted(cpu.items(), key=lambda o: -(o[1] or 0))[:12])
        terminalreporter.write_line(f'notebooks: {len(cpu)} run, {sum(s or 0 for s in cpu.values()):.0f} s of CPU; the largest: {top}')


# -- the browser test (tests/test_widgets_browser.py) ----------------------------------------------------------------
# Debian's chromium, driven by Playwright (shared/notes/browser-testing.md); without either the test skips, and
# tests/test_notebooks.py runs the widget notebooks with nbdev instead.
CHROMIUM = shutil.which('chromium') or ('/usr/bin/chromium' if Path('/usr/bin/chromium').exists() else None)
BROWSER = CHROMIUM is not None and importlib.util.find_spec('playwright') is not None
# the widget notebooks (under nbs/) and the browser test that runs each one
WIDGET_NOTEBOOKS = {'widgets/00_builder.ipynb': 'test_builder_notebook', 'widgets/01_features.ipynb': 'test_features_notebook',
                    'widgets/02_monitor.ipynb': 'test_monitor_notebook', 'widgets/03_registry.ipynb': 'test_registry_notebook',
                    'widgets/04_predict.ipynb': 'test_predict_notebook'}


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


SNAP = r'''__snap() {  # after README line $1: where HEAD is, the model's digest, the learning rate, what git sees (how many, which)
  printf '{"line": %s, "t": %s, "head": "%s", "model": "%s", "lr": "%s", "dirty": %s, "changed": "%s"}\n' "$1" "$(date +%s.%N)" \
    "$(git rev-parse HEAD)" "$(sha256sum models/digits-cnn/model.safetensors 2>/dev/null | cut -c1-64)" \
    "$(grep -E '^  lr:' params.yaml | awk '{print $2}')" "$(git status --porcelain | wc -l)" \
    "$(git status --porcelain | cut -c4- | sort | paste -sd, -)" >> "$SNAPSHOTS"
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
