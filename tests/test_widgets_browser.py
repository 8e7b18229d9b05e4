"""The widgets in a real browser: JupyterLab headless on 127.0.0.1, driven by Playwright through Debian's chromium.

Runs tests/fixtures/widgets_demo.ipynb (a ModelBuilder and a FeatureMapExplorer), changes the builder's backbone
dropdown and its input-size slider, and checks that the parameter count shown and the diagram change.
Screenshots before and after go to tests/artifacts/ (git-ignored). See shared/notes/browser-testing.md."""
import base64, json, os, shutil, signal, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT/'tests'/'artifacts'
CHROMIUM = shutil.which('chromium') or ('/usr/bin/chromium' if Path('/usr/bin/chromium').exists() else None)
ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
        '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage']
playwright = pytest.importorskip('playwright.sync_api', reason='playwright is not installed (pip install -e ".[dev]")')
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason='chromium not found and not installed: `make test` installs it with apt-get as root')

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

@pytest.fixture
def lab(tmp_path):
    "JupyterLab on a free port with its own config/data/runtime dirs, serving a copy of the fixture notebook."
    home = tmp_path/'jupyter'
    env = {**os.environ, 'JUPYTER_CONFIG_DIR': str(home/'config'), 'JUPYTER_DATA_DIR': str(home/'data'),
           'JUPYTER_RUNTIME_DIR': str(home/'runtime'), 'TMPDIR': str(home/'tmp'), 'IPYTHONDIR': str(home/'ipython'),
           'JUPYTER_PLATFORM_DIRS': '1', 'PYTHONPATH': str(ROOT)}
    (home/'tmp').mkdir(parents=True)
    news = home/'config'/'lab'/'user-settings'/'@jupyterlab'/'apputils-extension'
    news.mkdir(parents=True)
    (news/'notification.jupyterlab-settings').write_text(json.dumps({'fetchNews': 'false', 'checkForUpdates': False}))
    work = tmp_path/'work'; work.mkdir()
    shutil.copy(ROOT/'tests'/'fixtures'/'widgets_demo.ipynb', work/'widgets_demo.ipynb')
    port, token = _free_port(), 'core-models-test'
    jupyter = Path(sys.executable).parent/'jupyter'
    log = open(tmp_path/'lab.log', 'w')
    proc = subprocess.Popen([str(jupyter), 'lab', '--ip=127.0.0.1', f'--port={port}', '--no-browser', '--allow-root',
                             f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={work}'],
                            env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT)
    url = f'http://127.0.0.1:{port}'
    try:
        for _ in range(120):
            try: urllib.request.urlopen(f'{url}/api/status?token={token}', timeout=1); break
            except Exception: time.sleep(0.5)
            if proc.poll() is not None: pytest.fail(f'jupyter lab exited: {(tmp_path/"lab.log").read_text()[-2000:]}')
        else: pytest.fail(f'jupyter lab did not start: {(tmp_path/"lab.log").read_text()[-2000:]}')
        yield f'{url}/lab/tree/widgets_demo.ipynb?token={token}'
    finally:
        proc.send_signal(signal.SIGTERM)
        try: proc.wait(timeout=20)
        except subprocess.TimeoutExpired: proc.kill()
        log.close()

def _params(page) -> str:
    "The parameter count the builder shows (its first Label ending in 'parameters')."
    return page.locator('.widget-label', has_text='parameters').first.inner_text()

def _diagram_src(page) -> str:
    return page.locator('.widget-image').first.get_attribute('src') or ''

def _diagram(page) -> str:
    "The PNG bytes (base64) of the builder's diagram, its first image widget: what is drawn, not the blob's name."
    return page.evaluate("""async () => {
        const b = await (await fetch(document.querySelectorAll('.widget-image')[0].src)).arrayBuffer();
        return btoa(String.fromCharCode(...new Uint8Array(b)));}""")

def _wait_new_diagram(page, old_src:str):
    page.wait_for_function("(old) => (document.querySelectorAll('.widget-image')[0].getAttribute('src') || '') !== old",
                           arg=old_src, timeout=30_000)

def test_widgets_in_jupyterlab(lab):
    t0 = time.time()
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={'width': 1400, 'height': 1100})
        try:
            page.goto(lab)
            page.locator('#jp-main-statusbar', has_text='| Idle').wait_for(timeout=90_000)
            page.locator('.jp-NotebookPanel .jp-Cell').first.click()
            page.locator('.lm-MenuBar-itemLabel', has_text='Run').click()
            page.locator('.lm-Menu-item:not(.lm-mod-disabled) .lm-Menu-itemLabel').get_by_text('Run All Cells', exact=True).click()
            page.locator('.widget-label', has_text='parameters').first.wait_for(timeout=90_000)
            page.locator('.widget-image').nth(1).wait_for(timeout=60_000)  # the explorer's plot: the whole notebook ran
            page.wait_for_function("() => [...document.querySelectorAll('.widget-image')].every(i => (i.getAttribute('src') || '').length > 0)",
                                   timeout=30_000)
            before_params, before_fig, src = _params(page), _diagram(page), _diagram_src(page)
            assert before_params == '104,042 parameters', before_params  # simple_cnn, 10 classes
            page.screenshot(path=str(ARTIFACTS/'widgets_before.png'), full_page=True)

            page.locator('.widget-dropdown select').nth(1).select_option('resnet18')  # the builder's backbone
            page.wait_for_function("() => [...document.querySelectorAll('.widget-label')].some(l => l.textContent === '11,181,642 parameters')",
                                   timeout=30_000)
            _wait_new_diagram(page, src)
            after_backbone_fig, src = _diagram(page), _diagram_src(page)
            slider = page.locator('.widget-slider [role=slider]').first  # the builder's input size
            slider.focus()
            slider.press('ArrowRight')  # 32 -> 48 px; sliders report on release, so one press, one rebuild
            page.locator('.widget-slider .widget-readout').first.filter(has_text='48').wait_for(timeout=10_000)
            page.wait_for_function("() => [...document.querySelectorAll('.widget-label')].some(l => /at 1×3×48×48/.test(l.textContent))",
                                   timeout=30_000)
            _wait_new_diagram(page, src)
            after_params, after_fig = _params(page), _diagram(page)
            page.screenshot(path=str(ARTIFACTS/'widgets_after.png'), full_page=True)
        finally: browser.close()
    assert after_params == '11,181,642 parameters' and after_params != before_params
    assert before_fig and after_backbone_fig != before_fig and after_fig != after_backbone_fig
    print(f'browser test: {time.time() - t0:.1f} s')
