"""The docs site in a real browser: build a subset of it with tools/build_docs.py into a temporary folder (the
index, two API pages and the model-builder widget demo; `make docs` builds every notebook), then open the pages
in headless Debian chromium through Playwright, from file:// URLs, with every http(s) request refused (the site
must work offline; only MathJax's link may be asked for).

Checks what a reader sees: the sidebar lists the pages in their folder groups; the API reference (nbdev's
`show_doc`) is there with signatures as written (`class ConvBlock(config=None, **overrides)`, not
`config:NoneType=None`); no `In [ ]:`/`Out[1]:` prompts on any page; the widget demo shows the widget as a
picture of its state after Run All (its images decoded), not its repr (`ModelBuilder(children=...)`).
Screenshots go to tests/artifacts/."""
import re, shutil, subprocess, sys, time
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT/'tests'/'artifacts'
CHROMIUM = '/usr/bin/chromium' if Path('/usr/bin/chromium').exists() else shutil.which('chromium')
ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
        '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage']
PAGES = ['index.html', 'backbones/base.html', 'blocks/conv.html', 'widgets/builder.html']
PROMPT = re.compile(r'\b(In|Out)\s*\[\s*\d*\s*\]\s*:')
REPR = re.compile(r'\b(VBox|HBox|ModelBuilder|FeatureMapExplorer|TrainingMonitor|RegistryBrowser)\(children=')
playwright = pytest.importorskip('playwright.sync_api', reason='playwright is not installed (pip install -e ".[dev]")')
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason='/usr/bin/chromium missing: `make test` installs it with apt-get as root')

@pytest.fixture(scope='module')
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp('docs')
    t0 = time.time()
    r = subprocess.run([sys.executable, str(ROOT/'tools'/'build_docs.py'), str(out/'_docs'), '--proc', str(out/'_proc'),
                        '--only', r'^(backbones/00_base|blocks/00_conv|widgets/00_builder)', '--no-quarto', '--strict', '--verbose'],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f'build_docs failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}'
    print(f'docs subset built in {time.time()-t0:.1f}s\n{r.stdout}')
    return out/'_docs'

@pytest.fixture(scope='module')
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try: yield b
        finally: b.close()

@pytest.fixture
def page(browser):
    "A page that refuses every http(s) request and records it: the site is read offline."
    pg = browser.new_page(viewport={'width': 1300, 'height': 900})
    pg.requested = []
    def refuse(route):
        pg.requested.append(route.request.url); route.abort()
    pg.route(re.compile(r'^https?://'), refuse)
    yield pg
    pg.close()
    asked = [u for u in pg.requested if 'mathjax' not in u.lower()]
    assert not asked, f'the page asked the network for {asked}'

def test_docs_build_writes_pages(site):
    assert sorted(p.relative_to(site).as_posix() for p in site.rglob('*.html')) == sorted(PAGES)

def test_docs_in_browser(site, page):
    ARTIFACTS.mkdir(exist_ok=True)
    page.goto((site/'index.html').as_uri(), wait_until='domcontentloaded')
    nav = page.locator('#docs-nav')
    assert nav.locator('h2.docs-group[data-group="backbones"]').count() == 1  # shown upper-case by the CSS
    link = nav.locator('a[href="backbones/base.html"]')
    assert link.count() == 1 and 'Backbones' in link.inner_text()
    assert page.locator('.docs-main h1').count() >= 1  # the home page's own content is there
    page.screenshot(path=str(ARTIFACTS/'docs_index.png'))

    link.click()
    page.wait_for_url('**/backbones/base.html', wait_until='domcontentloaded')
    main = page.locator('.docs-main')
    # nbdev's show_doc output: an H3 per documented symbol, with its signature
    headings = main.locator('h3').all_inner_texts()
    assert any('create_backbone' in h for h in headings), headings
    assert any('FeatureInfo' in h for h in headings), headings
    assert 'def create_backbone' in main.inner_text()
    assert page.locator('#docs-nav a[href="../index.html"]').count() >= 1  # the way back
    page.screenshot(path=str(ARTIFACTS/'docs_api_page.png'), full_page=False)

def test_no_prompts(site, page):
    "No `In [ ]:` / `Out[3]:` on any page, neither as text nor as (empty) prompt boxes taking room."
    for rel in PAGES:
        page.goto((site/rel).as_uri(), wait_until='domcontentloaded')
        text = page.locator('.docs-main').inner_text()
        assert not PROMPT.search(text), f'{rel}: prompt shown: {PROMPT.search(text).group(0)!r}'
        visible = page.evaluate("""() => [...document.querySelectorAll('.jp-InputPrompt, .jp-OutputPrompt')]
                                   .filter(e => e.offsetWidth > 0 || e.offsetHeight > 0).length""")
        assert visible == 0, f'{rel}: {visible} prompt boxes visible'

def test_signatures_read_as_written(site, page):
    "show_doc signatures as in the source: `config=None`, not nbdev's `config:NoneType=None`; classes as `class`."
    page.goto((site/'blocks'/'conv.html').as_uri(), wait_until='domcontentloaded')
    main = page.locator('.docs-main')
    sig = main.locator('h3#ConvBlock + div.highlight pre').first.inner_text()
    assert re.search(r'class ConvBlock\(\s*config=None, \*\*overrides\s*\):', sig), sig
    assert 'NoneType' not in main.inner_text()
    assert 'def ConvBlock(' not in main.inner_text()
    main.locator('h3#ConvBlock').first.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS/'docs_signature.png'))

def test_widget_shown_as_picture(site, page):
    "The builder demo's widget is drawn from its state after Run All: controls, labels and its decoded diagram."
    page.goto((site/'widgets'/'builder.html').as_uri(), wait_until='load')
    main = page.locator('.docs-main')
    assert not REPR.search(main.inner_text()), REPR.search(main.inner_text()).group(0)
    widget = main.locator('.docs-widget').filter(has=page.locator('.w-dropdown')).first
    assert widget.count() == 1, 'no drawn widget with its dropdowns on the builder page'
    assert widget.locator('select').count() >= 2 and 'resnet' in widget.inner_text()
    imgs = widget.locator('img')
    assert imgs.count() >= 1, 'the widget picture has no image'
    sizes = imgs.evaluate_all('els => els.map(e => [e.naturalWidth, e.naturalHeight])')
    assert all(w > 100 and h > 50 for w, h in sizes), sizes  # decoded PNGs, not broken images
    widget.scroll_into_view_if_needed()
    widget.screenshot(path=str(ARTIFACTS/'docs_widget_builder.png'))

def test_readme_is_generated_from_index():
    "README.md is what tools/readme.py makes of nbs/index.ipynb (nbdev-readme's job, without Quarto)."
    r = subprocess.run([sys.executable, str(ROOT/'tools'/'readme.py'), '--check'], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    readme = (ROOT/'README.md').read_text()
    assert readme.index('make run') < readme.index('make test') < readme.index('## Where to start'), 'the two commands come first'

def test_learning_path_names_real_notebooks():
    "Every notebook the index names exists, and every tutorial is on the index's learning path."
    import json
    text = ''.join(''.join(c['source']) for c in json.loads((ROOT/'nbs'/'index.ipynb').read_text())['cells'] if c['cell_type'] == 'markdown')
    named = set(re.findall(r'`((?:tutorials|widgets|versioning|blocks|backbones|heads|architectures)/\d\d_\w+|\d\d_\w+)`', text))
    missing = sorted(n for n in named if not (ROOT/'nbs'/f'{n}.ipynb').exists())
    assert not missing, f'the index names notebooks that do not exist: {missing}'
    tutorials = sorted(p.stem for p in (ROOT/'nbs'/'tutorials').glob('[0-9]*.ipynb'))
    unlisted = [t for t in tutorials if f'tutorials/{t}' not in named]
    assert not unlisted, f'tutorials missing from the index learning path: {unlisted}'

def test_widget_picture_from_saved_state():
    "A notebook saved with its widget state is drawn from it without running: boxes, labels, controls, images, outputs."
    import base64, copy, importlib.util, io
    import ipywidgets as W
    from PIL import Image
    spec = importlib.util.spec_from_file_location('build_docs', ROOT/'tools'/'build_docs.py')
    bd = importlib.util.module_from_spec(spec); spec.loader.exec_module(bd)
    buf = io.BytesIO(); Image.new('RGB', (8, 4), (200, 30, 30)).save(buf, format='PNG')
    out = W.Output()
    out.outputs = ({'output_type': 'display_data', 'metadata': {}, 'data': {'text/plain': 'a plot', 'image/png': base64.b64encode(buf.getvalue()).decode()}},
                   {'output_type': 'stream', 'name': 'stdout', 'text': 'epoch 1 done\n'})
    box = W.VBox([W.HBox([W.Dropdown(options=['resnet18', 'resnet50'], value='resnet50', description='backbone'),
                          W.IntSlider(7, 0, 10, description='depth')]),
                  W.Label('11 M params'), W.Image(value=buf.getvalue(), format='png'), out])
    state = W.Widget.get_manager_state(drop_defaults=True, widgets=[box, *box.children, *box.children[0].children])
    nb = {'metadata': {'widgets': {bd.WIDGET_STATE: state}}, 'cells': [{'cell_type': 'code', 'source': 'box', 'metadata': {}, 'outputs': [
        {'output_type': 'execute_result', 'metadata': {}, 'execution_count': 1,
         'data': {'text/plain': 'VBox(children=(...))', bd.WIDGET_VIEW: {'version_major': 2, 'version_minor': 0, 'model_id': box.model_id}}}]}]}
    assert not bd.needs_run(nb) and not bd.needs_run(nb, widget_demo=True)  # its state is saved: no need to run it
    unsaved = {'metadata': {}, 'cells': copy.deepcopy(nb['cells'])}
    assert bd.needs_run(unsaved)  # the same notebook saved without its widget state must run to be drawn
    assert bd.static_widgets(nb) == 0
    drawn = nb['cells'][0]['outputs'][0]['data']
    assert list(drawn) == ['text/html'] and 'widgets' not in nb['metadata']
    h = drawn['text/html']
    assert '<option selected>resnet50</option>' in h and 'depth' in h and 'value="7"' in h and '11 M params' in h
    assert h.count('src="data:image/png;base64,') == 2 and 'epoch 1 done' in h  # the Image widget's and the Output's
    assert 'VBox(children=' not in h
