"""Every notebook under nbs/ runs top to bottom as `nbdev-test` runs it, with its `#| slow` cells: a notebook's
`fastcore.test` assertions are its module's unit tests, and a lesson that fails to run is a broken page.

Each notebook is one test and its own unit of work (tests/conftest.py gives every other test module as one unit): the
notebooks and the test modules share the workers, longest first, so `make test` has one tail, not one per phase (issue
18). Each notebook runs in a fresh process that tests/notebook_runner.py forks (torch and the plotting libraries
already imported, nothing else). `make test-fast` deselects the notebooks marked slow here (they train) and runs the
rest whole; a `#| slow` cell belongs in a slow notebook (checked below). The widget notebooks are run by
tests/test_widgets_browser.py, with Run All in JupyterLab, whenever it runs them: that run holds every cell this one
would, so they are not run twice.
"""
import json, re, subprocess, sys
from pathlib import Path
import pytest
from conftest import ROOT, NBS, BROWSER, WIDGET_NOTEBOOKS, notebooks as notebook_paths

# The notebooks whose lessons train a model (or run a pipeline, or a training widget): `make test` runs them, `make
# test-fast` (-m 'not slow') skips them. The ones that train nothing but prove full-size models against torchvision and
# onnxruntime (ResNet-50, ViT-B/16, EfficientNet, FCOS and FPN heads on them, ONNX export) stay in the quick tier: 3 to
# 16 s each, 52 s together (their durations in a run of the whole suite, issue 18).
SLOW = ['tutorials/', 'index.ipynb', '06_training.ipynb', '07_cli.ipynb', '08_inference.ipynb', 'architectures/05_multilabel.ipynb',
        'backbones/04_timm.ipynb', 'widgets/01_features.ipynb', 'widgets/02_monitor.ipynb']


def notebooks() -> list[str]:
    "The notebooks under nbs/, as paths relative to it ('tutorials/04_detection.ipynb')."
    return [str(p.relative_to(NBS)) for p in notebook_paths()]


def is_slow(nb:str) -> bool: return any(nb == s or (s.endswith('/') and nb.startswith(s)) for s in SLOW)


def has_slow_cells(nb:str) -> bool:
    return any(c['cell_type'] == 'code' and re.match(r'\s*#\|\s*slow\b', ''.join(c['source']))
               for c in json.loads((NBS/nb).read_text())['cells'])


class NotebookRunner:
    "tests/notebook_runner.py, started once for this process: `run(nb, log)` runs one notebook and returns its answer."
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, str(ROOT/'tests'/'notebook_runner.py')], cwd=ROOT, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def run(self, nb:Path, log:Path) -> dict:
        self.proc.stdin.write(json.dumps({'nb': str(nb), 'flags': ['slow'], 'log': str(log)}) + '\n')
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer: raise RuntimeError(f'tests/notebook_runner.py exited ({self.proc.wait()}) while running {nb}')
        return json.loads(answer)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope='session')
def notebook_runner():
    runner = NotebookRunner()
    yield runner
    runner.close()


@pytest.mark.parametrize('nb', [pytest.param(nb, marks=[pytest.mark.slow] if is_slow(nb) else []) for nb in notebooks()])
def test_notebook(nb, notebook_runner, request, record_property, tmp_path):
    test = WIDGET_NOTEBOOKS.get(nb)
    if test and BROWSER and any(item.name == test for item in request.session.items):
        pytest.skip(f'tests/test_widgets_browser.py::{test} runs it with Run All in JupyterLab')
    log = tmp_path/'nbdev-test.log'
    r = notebook_runner.run(NBS/nb, log)
    record_property('cpu_seconds', r['cpu'])
    assert r['ok'], f'nbs/{nb} failed (nbdev test_nb, its `#| slow` cells included):\n{log.read_text()[-6000:]}'


def test_slow_cells_live_in_slow_notebooks():
    "`make test-fast` runs the notebooks it keeps whole: a `#| slow` cell in one of them would run there."
    assert [nb for nb in notebooks() if has_slow_cells(nb) and not is_slow(nb)] == []
    assert sum(map(has_slow_cells, notebooks())) >= 2  # tutorials 05 and 09: the check sees the directive
