"""The widget notebooks are demos: each one, run with Run All in a real JupyterLab, leaves its widget on screen
in a meaningful state, with no error output, and the widget answers a person's clicks.

One headless JupyterLab on 127.0.0.1 (its own config, data and runtime folders) serves copies of
nbs/widgets/*.ipynb; Playwright drives Debian's chromium through it, one tab and one kernel per notebook.
The notebooks run at once (Run > Run All Cells in each tab); each test waits until every code cell of its
notebook has run, checks that no cell wrote an error or to stderr, then reads concrete facts off the page (the builder's parameter count, the
explorer's predicted digit, the monitor's final validation accuracy and its Stop button, the registry
browser's table and Load buttons) and clicks through the widget. Screenshots go to tests/artifacts/
(git-ignored): `<notebook>_demo.png` is the widget as Run All left it, `<notebook>_after.png` after the clicks.
This Run All is the widget notebooks' notebook test as well: tests/test_notebooks.py leaves them to it whenever it runs.
See shared/notes/browser-testing.md for the pitfalls this handles."""
import json, os, re, shutil, signal, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest
from conftest import CHROMIUM, WIDGET_NOTEBOOKS

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT/'nbs'/'widgets'
ARTIFACTS = ROOT/'tests'/'artifacts'
ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
        '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage']
TOKEN = 'core-models-test'
RUN_S = 240  # all four at once: ~60 s on two idle cores; room for a busy shared machine
playwright = pytest.importorskip('playwright.sync_api', reason='playwright is not installed (pip install -e ".[dev]")')
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason='chromium not found and not installed: `make test` installs it with apt-get as root')

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def _settings(config:Path, plugin:str, name:str, value:dict):
    d = config/'lab'/'user-settings'/'@jupyterlab'/plugin
    d.mkdir(parents=True, exist_ok=True)
    (d/f'{name}.jupyterlab-settings').write_text(json.dumps(value))

@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    "One JupyterLab for all four notebooks, serving copies of them (Run All must not write into nbs/)."
    tmp = tmp_path_factory.mktemp('lab')
    home, work = tmp/'jupyter', tmp/'work'
    env = {**os.environ, 'JUPYTER_CONFIG_DIR': str(home/'config'), 'JUPYTER_DATA_DIR': str(home/'data'),
           'JUPYTER_RUNTIME_DIR': str(home/'runtime'), 'TMPDIR': str(home/'tmp'), 'IPYTHONDIR': str(home/'ipython'),
           'JUPYTER_PLATFORM_DIRS': '1', 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '1'}
    (home/'tmp').mkdir(parents=True); work.mkdir()
    _settings(home/'config', 'apputils-extension', 'notification', {'fetchNews': 'false', 'checkForUpdates': False})
    # every cell in the DOM (JupyterLab 4 otherwise renders only the cells near the viewport)
    _settings(home/'config', 'notebook-extension', 'tracker', {'windowingMode': 'none'})
    for nb in NBS.glob('*.ipynb'): shutil.copy(nb, work/nb.name)
    port = _free_port()
    log = open(tmp/'lab.log', 'w')
    proc = subprocess.Popen([str(Path(sys.executable).parent/'jupyter'), 'lab', '--ip=127.0.0.1', f'--port={port}', '--no-browser',
                             '--allow-root', f'--IdentityProvider.token={TOKEN}', f'--ServerApp.root_dir={work}'],
                            env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT)
    url = f'http://127.0.0.1:{port}'
    try:
        for _ in range(120):
            try: urllib.request.urlopen(f'{url}/api/status?token={TOKEN}', timeout=1); break
            except Exception: time.sleep(0.5)
            if proc.poll() is not None: pytest.fail(f'jupyter lab exited: {(tmp/"lab.log").read_text()[-2000:]}')
        else: pytest.fail(f'jupyter lab did not start: {(tmp/"lab.log").read_text()[-2000:]}')
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try: proc.wait(timeout=20)
        except subprocess.TimeoutExpired: proc.kill()
        log.close()

@pytest.fixture(scope='module')
def chromium():
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try: yield browser
        finally: browser.close()

def _api(lab:str, path:str, method:str='GET'):
    req = urllib.request.Request(f'{lab}{path}?token={TOKEN}', method=method)
    with urllib.request.urlopen(req, timeout=10) as r: body = r.read()
    return json.loads(body) if body else None

# JS: 'done' when every code cell shows an execution count, 'error' as soon as one shows an error or stderr
_STATE = """() => {
    const bad = document.querySelector('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]');
    if (bad) return 'error';
    const prompts = [...document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell .jp-InputArea-prompt')].map(p => p.textContent.trim());
    return prompts.length > 0 && prompts.every(t => /^\\[\\d+\\]:$/.test(t)) ? 'done' : '';
}"""

NOTEBOOKS = {Path(nb).stem: test for nb, test in WIDGET_NOTEBOOKS.items()}  # '00_builder': 'test_builder_notebook'

def _open_and_run(chromium, lab:str, name:str):
    page = chromium.new_page(viewport={'width': 1400, 'height': 1400})
    page.goto(f'{lab}/lab/workspaces/{name}/tree/{name}.ipynb?reset&token={TOKEN}')
    page.locator('#jp-main-statusbar', has_text='| Idle').wait_for(timeout=90_000)  # the kernel exists: Run All works
    page.keyboard.press('Control+b')  # fold the file browser away: the notebook gets the width
    page.locator('.jp-NotebookPanel .jp-Cell').first.click()
    page.locator('.lm-MenuBar-itemLabel', has_text='Run').click()
    page.locator('.lm-Menu-item:not(.lm-mod-disabled) .lm-Menu-itemLabel').get_by_text('Run All Cells', exact=True).click()
    return page

@pytest.fixture(scope='module')
def ran(request, lab, chromium):
    """Run All in every widget notebook whose test was selected, all at once (one tab and kernel each: on two
    cores the runs overlap, and their page loads and kernel starts overlap the others' runs); then wait until
    each one is done or shows an error. A test calls `ran[name]` for its notebook's page."""
    wanted = [n for n, t in NOTEBOOKS.items() if any(item.name == t for item in request.session.items)]
    for name in wanted: (ARTIFACTS/f'{name}_error.png').unlink(missing_ok=True)
    t0, pages, done = time.time(), {}, {}
    try:
        for name in wanted: pages[name] = _open_and_run(chromium, lab, name)
        while len(done) < len(pages) and time.time() - t0 < RUN_S:
            for name, page in pages.items():
                if name not in done and page.evaluate(_STATE): done[name] = (page.evaluate(_STATE), time.time() - t0)
            time.sleep(0.5)
        for name, (state, s) in done.items(): print(f'{name}: Run All {state} {s:.1f} s after the first tab opened')
        yield _Runs(pages, done)
    finally:
        for page in pages.values(): page.close()
        for s in _api(lab, '/api/sessions'): _api(lab, f'/api/sessions/{s["id"]}', 'DELETE')

class _Runs:
    def __init__(self, pages, done): self.pages, self.done = pages, done
    def __getitem__(self, name:str):
        "The page of `name` after a clean Run All (fails the test with the error shown otherwise)."
        page = self.pages[name]
        state, _ = self.done.get(name, ('', None))
        if state != 'done':
            out = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
            if out.count(): out.first.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS/f'{name}_error.png'))
            pytest.fail(f'{name}: ' + (f'a cell wrote an error or to stderr:\n{out.first.inner_text()[-3000:]}' if out.count()
                                       else f'Run All did not finish in {RUN_S} s'))
        page.locator('#jp-main-statusbar', has_text='| Idle').wait_for(timeout=30_000)
        text = page.locator('.jp-NotebookPanel').inner_text()
        assert 'Error displaying widget' not in text and 'Traceback' not in text, f'{name}: a widget failed to display'
        return page

def _shot(widget, name:str):
    widget.scroll_into_view_if_needed()
    widget.screenshot(path=str(ARTIFACTS/f'{name}.png'))

def _img_src(locator) -> str: return locator.get_attribute('src') or ''

def _wait_src_change(page, selector:str, old:str):
    page.wait_for_function("([sel, old]) => { const i = document.querySelector(sel); return i && (i.getAttribute('src') || '') !== old; }",
                           arg=[selector, old], timeout=30_000)

def _meta_params(**kw) -> str:
    "The parameter count of `create_model(**kw)`, as the builder writes it: what the page must show."
    import torch
    from core_models import create_model
    with torch.device('meta'): m = create_model(**kw)
    return f'{sum(p.numel() for p in m.parameters()):,} parameters'

def test_builder_notebook(ran):
    page = ran['00_builder']
    w = page.locator('.cm-model-builder')
    assert w.count() == 1, 'the page should end with one live ModelBuilder'
    params = w.locator('.widget-label', has_text='parameters')
    assert params.inner_text() == '11,181,642 parameters' == _meta_params(architecture='cnn', backbone='resnet18', num_classes=10)
    assert w.locator('.widget-label', has_text='FLOPs').inner_text().endswith('at 1×3×64×64')
    assert '✓ CNNArchitecture built' in w.locator('.widget-html', has_text='built').inner_text()
    assert [s.input_value() for s in w.locator('.widget-dropdown select').all()[:2]] == ['cnn', 'resnet18']
    assert _img_src(w.locator('.widget-image'))
    _shot(w, '00_builder_demo')

    # a person switches to a ViT: the count is the ViT's, and its 12 blocks are one stack in the diagram
    src = _img_src(w.locator('.widget-image'))
    w.locator('.widget-dropdown select').nth(0).select_option('transformer')  # resnet18 has no encoder: an error, kept views
    w.locator('.widget-html', has_text='encoder_depth').wait_for(timeout=30_000)
    assert params.inner_text() == '11,181,642 parameters'
    w.locator('.widget-dropdown select').nth(1).select_option('vit_tiny_16')
    vit = _meta_params(architecture='transformer', backbone='vit_tiny_16', num_classes=10, img_size=64)
    w.locator('.widget-label', has_text=vit).wait_for(timeout=30_000)
    _wait_src_change(page, '.cm-model-builder .widget-image', src)
    assert w.locator('.cm-stages td', has_text='12 × AttentionBlock').count() == 1  # the blocks are one row, one box
    # and the input-size slider: one key press, one step of 16 px, one rebuild
    slider = w.locator('.widget-slider [role=slider]').first
    slider.focus(); slider.press('ArrowRight')
    w.locator('.widget-label', has_text='at 1×3×80×80').wait_for(timeout=30_000)
    assert params.inner_text() == _meta_params(architecture='transformer', backbone='vit_tiny_16', num_classes=10, img_size=80)
    assert '✓ TransformerArchitecture built' in w.locator('.widget-html', has_text='built').inner_text()
    _shot(w, '00_builder_after')

def _top_class(w) -> str: return w.locator('.widget-html table tbody tr td').first.inner_text()

def test_features_notebook(ran):
    page = ran['01_features']
    w = page.locator('.cm-feature-explorer')
    assert w.count() == 1, 'the page should end with one live FeatureMapExplorer'
    selects = w.locator('.widget-dropdown select')
    assert selects.nth(0).input_value() == 'digit 3' and selects.nth(1).input_value() == 'trained digits cnn'
    assert _top_class(w) == '3', 'the trained digits model should name the digit it is shown'
    assert 'feature maps in' in w.locator('.widget-html', has_text='input:').inner_text()
    assert _img_src(w.locator('.widget-image'))
    _shot(w, '01_features_demo')

    selects.nth(0).select_option('digit 7')
    page.wait_for_function("() => document.querySelector('.cm-feature-explorer .widget-html table tbody tr td')?.textContent === '7'",
                           timeout=30_000)
    src = _img_src(w.locator('.widget-image'))
    w.locator('.widget-toggle-button', has_text='Grad-CAM').click()
    _wait_src_change(page, '.cm-feature-explorer .widget-image', src)
    w.locator('.widget-html', has_text='Grad-CAM in').wait_for(timeout=30_000)
    assert _top_class(w) == '7'
    _shot(w, '01_features_after')

def test_monitor_notebook(ran):
    page = ran['02_monitor']
    w = page.locator('.cm-training-monitor')
    assert w.count() == 1, 'the page should end with one live TrainingMonitor'
    status = w.locator('.widget-label', has_text='finished').inner_text()
    assert status.startswith('finished · epoch 5/5: '), status
    acc = float(re.search(r'val_accuracy ([\d.]+)', status)[1])
    assert acc > 0.9, f'the demo model should learn the digits: {status}'
    assert w.locator('.widget-hprogress', has_text='epoch 5/5').is_visible()
    assert w.locator('.widget-label', has_text='done in').count() == 1
    stop = w.locator('button', has_text='Stop')
    assert stop.count() == 1 and not stop.is_visible(), 'the Stop button should be gone once training ended'
    assert _img_src(w.locator('.widget-image'))
    _shot(w, '02_monitor_demo')
    print(f'monitor: final val_accuracy shown {acc}')

def test_registry_notebook(ran):
    page = ran['03_registry']
    w = page.locator('.cm-registry-browser')
    assert w.count() == 1, 'the page should end with one live RegistryBrowser'
    versions = w.locator('table.cm-table').first.locator('tbody tr')
    assert versions.count() >= 2 and versions.count() == 4
    assert [versions.nth(i).locator('td').nth(1).inner_text() for i in range(4)] == ['1.0.0', '1.1.0', '1.2.0', '1.3.0']
    assert w.locator('.widget-html', has_text='4 versions').count() == 1
    _shot(w, '03_registry_demo')

    status = w.locator('.widget-html', has_text='loaded')
    for button, version in (('Load A', '1.2.0'), ('Load B', '1.3.0')):
        w.locator('button', has_text=button).click()
        w.locator('.widget-html', has_text=f'loaded digits_cnn {version} into .model').wait_for(timeout=30_000)
        text = status.inner_text()
        assert '⚠' not in text and 'could not' not in text, text
    _shot(w, '03_registry_after')

def test_predict_notebook(ran, tmp_path):
    page = ran['04_predict']
    w = page.locator('.cm-predict')
    assert w.count() == 1, 'the page should end with one live PredictWidget'
    selects = w.locator('.widget-dropdown select')
    assert selects.nth(0).input_value() == 'digits 1.0.0' and selects.nth(1).input_value() == 'digit 7'
    assert _top_class(w) == '7', 'the digits version should name the digit it is shown'
    status = w.locator('.widget-html', has_text='predicted in')
    assert re.search(r'digit 7 \(32x32 px\) · digits@1.0.0 · predicted in [\d.]+ ms', status.inner_text()), status.inner_text()
    assert _img_src(w.locator('.widget-image'))
    _shot(w, '04_predict_demo')

    # a person picks another digit, then the photograph, then drops a file of their own
    src = _img_src(w.locator('.widget-image'))
    selects.nth(1).select_option('digit 2')
    page.wait_for_function("() => document.querySelector('.cm-predict .widget-html table tbody tr td')?.textContent === '2'", timeout=30_000)
    _wait_src_change(page, '.cm-predict .widget-image', src)
    selects.nth(1).select_option('photo: astronaut')
    w.locator('.widget-html', has_text='photo: astronaut (512x512 px)').wait_for(timeout=30_000)
    from PIL import Image
    Image.new('RGB', (120, 80), 'white').save(tmp_path/'mine.png')
    with page.expect_file_chooser() as chooser: w.locator('.widget-upload', has_text='your photo').click()
    chooser.value.set_files(str(tmp_path/'mine.png'))
    w.locator('.widget-html', has_text='mine.png (120x80 px)').wait_for(timeout=30_000)
    _shot(w, '04_predict_after')
