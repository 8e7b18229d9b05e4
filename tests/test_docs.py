"""The docs site in a real browser: build a subset of it with tools/build_docs.py into a temporary folder
(the index and the backbone-contract page; `make docs` builds every notebook), then open the index and the API
page in headless Debian chromium through Playwright, from file:// URLs.

Checks that the index's sidebar lists the pages in their folder groups and links to the API page, and that the
API page shows nbdev's `show_doc` output for `create_backbone` and `FeatureInfo`. Screenshots go to tests/artifacts/."""
import shutil, subprocess, sys, time
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT/'tests'/'artifacts'
CHROMIUM = '/usr/bin/chromium' if Path('/usr/bin/chromium').exists() else shutil.which('chromium')
ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
        '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage']
playwright = pytest.importorskip('playwright.sync_api', reason='playwright is not installed (pip install -e ".[dev]")')
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason='/usr/bin/chromium missing: `make test` installs it with apt-get as root')

@pytest.fixture(scope='module')
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp('docs')
    t0 = time.time()
    r = subprocess.run([sys.executable, str(ROOT/'tools'/'build_docs.py'), str(out/'_docs'), '--proc', str(out/'_proc'),
                        '--only', r'^backbones/00_base', '--no-quarto', '--strict'],
                       cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, f'build_docs failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}'
    print(f'docs subset built in {time.time()-t0:.1f}s')
    return out/'_docs'

def test_docs_build_writes_pages(site):
    assert (site/'index.html').exists() and (site/'backbones'/'base.html').exists()
    assert sorted(p.relative_to(site).as_posix() for p in site.rglob('*.html')) == ['backbones/base.html', 'index.html']

def test_docs_in_browser(site):
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={'width': 1300, 'height': 900})
        try:
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
        finally:
            browser.close()

def test_readme_is_generated_from_index():
    "README.md is what tools/readme.py makes of nbs/index.ipynb (nbdev-readme's job, without Quarto)."
    r = subprocess.run([sys.executable, str(ROOT/'tools'/'readme.py'), '--check'], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    readme = (ROOT/'README.md').read_text()
    assert readme.index('make run') < readme.index('make test') < readme.index('## Where to start'), 'the two commands come first'

def test_learning_path_names_real_notebooks():
    "Every notebook the index names exists, and every tutorial is on the index's learning path."
    import json, re
    text = ''.join(''.join(c['source']) for c in json.loads((ROOT/'nbs'/'index.ipynb').read_text())['cells'] if c['cell_type'] == 'markdown')
    named = set(re.findall(r'`((?:tutorials|widgets|versioning|blocks|backbones|heads|architectures)/\d\d_\w+|\d\d_\w+)`', text))
    missing = sorted(n for n in named if not (ROOT/'nbs'/f'{n}.ipynb').exists())
    assert not missing, f'the index names notebooks that do not exist: {missing}'
    tutorials = sorted(p.stem for p in (ROOT/'nbs'/'tutorials').glob('[0-9]*.ipynb'))
    unlisted = [t for t in tutorials if f'tutorials/{t}' not in named]
    assert not unlisted, f'tutorials missing from the index learning path: {unlisted}'
