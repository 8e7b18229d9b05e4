"""Build the docs site: `python tools/build_docs.py [OUT_DIR] [--only REGEX] [--proc DIR] [--workers N]`.

Where Quarto is installed this runs `nbdev-docs` (the real nbdev site, written to `_docs/`).
Where it isn't (our machines), it builds a plain static HTML site instead:

1. processes every notebook under `nbs/` the way `nbdev-proc-nbs` does (nbdev's own `FilterDefaults`
   processors: `show_doc` cells are added and executed, so the API reference is there, exports and hidden
   cells are stripped), one notebook per fresh process. Unlike `nbdev-proc-nbs` it neither tries to install
   Quarto nor stops at the first notebook that fails: a notebook whose processing fails is rendered as it
   is saved (with its outputs) under a banner naming the error, reported on stderr (exit 1 with `--strict`);
2. renders each processed notebook to HTML with nbconvert's `lab` template (outputs are already in the
   notebooks; no network needed: require.js is dropped, the MathJax CDN link only typesets math when online);
3. writes `index.html`: the home page (`nbs/index.ipynb`) with a sidebar listing every page grouped by folder
   (modules, blocks, backbones, heads, architectures, versioning, widgets, tutorials); every page has the
   same sidebar.

OUT_DIR defaults to `_docs/`, the processed notebooks go to `_proc/` (or `--proc`). `--only REGEX` builds only
the notebooks whose path under `nbs/` matches (the index page is always built): the test uses it to stay fast.
"""
import argparse, html, json, os, re, shutil, subprocess, sys, time, traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT/'nbs'
GROUPS = ['', 'blocks', 'backbones', 'heads', 'architectures', 'versioning', 'widgets', 'tutorials']
GROUP_TITLES = {'': 'Modules'}

def notebooks(only:str|None=None) -> list[Path]:
    "The notebooks under nbs/ (relative paths), as nbdev lists them: no `_*` or `.*` names, no checkpoints."
    out = []
    for p in sorted(NBS.rglob('*.ipynb')):
        rel = p.relative_to(NBS)
        if any(part.startswith(('_', '.')) for part in rel.parts): continue
        if only and rel.as_posix() != 'index.ipynb' and not re.search(only, rel.as_posix()): continue
        out.append(rel)
    return out

def _proc_one(rel:str, proc_dir:str) -> str|None:
    "Process one notebook with nbdev's doc processors (run in a fresh process); None, or the error."
    os.chdir(ROOT)
    from nbdev.processors import FilterDefaults
    from nbdev.serve_drv import main
    dst = Path(proc_dir)/rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    try: main((NBS/rel, dst, FilterDefaults)); return None
    except Exception as e:
        msg = str(e).strip().splitlines()
        return msg[0] + (' ... ' + msg[-1] if len(msg) > 1 else '') if msg else type(e).__name__

def process(rels:list[Path], proc_dir:Path, workers:int) -> dict[str, str]:
    "Process the notebooks into proc_dir, `workers` at a time; returns {relative path: error} for those that failed."
    import nbdev.doclinks
    os.chdir(ROOT); nbdev.doclinks._build_modidx()
    errors = {}
    with ProcessPoolExecutor(workers, mp_context=get_context('spawn'), max_tasks_per_child=1) as ex:
        futs = {ex.submit(_proc_one, r.as_posix(), str(proc_dir)): r for r in rels}
        for f in as_completed(futs):
            err = f.result()
            if err: errors[futs[f].as_posix()] = err
    return errors

def _frontmatter(nb:dict) -> dict:
    "Title and description from the raw `---` cell nbdev's processors put first (or the first H1)."
    meta = {}
    for c in nb['cells'][:3]:
        src = ''.join(c['source'])
        if c['cell_type'] == 'raw' and src.startswith('---'):
            import yaml
            meta = yaml.safe_load(src.strip().strip('-')) or {}
            break
        if c['cell_type'] == 'markdown' and (m := re.search(r'^#\s+(.+)$', src, re.M)):
            meta = {'title': m.group(1).strip()}
            if d := re.search(r'^>\s*(.+)$', src, re.M): meta['description'] = d.group(1).strip()
            break
    return meta

def _prepare(nb:dict, title:str, error:str|None) -> dict:
    "Drop the frontmatter cell, put the title back as an H1, hide `#| echo: false` sources and strip `#|` lines."
    cells = [c for c in nb['cells'] if not (c['cell_type'] == 'raw' and ''.join(c['source']).startswith('---'))]
    for c in cells:
        c.get('metadata', {}).pop('execution', None)  # nbdev's timing metadata is not valid nbformat
        if c['cell_type'] != 'code': continue
        src = ''.join(c['source'])
        tags = c.setdefault('metadata', {}).setdefault('tags', [])
        if re.search(r'^#\|\s*echo:\s*false', src, re.M): tags.append('remove_input')
        if re.search(r'^#\|\s*(hide|exporti?|eval:\s*false)\b', src, re.M) and error: tags.append('remove_cell')
        c['source'] = '\n'.join(l for l in src.splitlines() if not l.startswith('#|')).strip('\n')
    head = f'# {title}\n'
    if error: head += f'\n<div class="docs-error"><b>API reference not rendered</b>: processing this notebook failed: <code>{html.escape(error)}</code></div>\n'
    has_h1 = cells and cells[0]['cell_type'] == 'markdown' and ''.join(cells[0]['source']).lstrip().startswith('# ')
    if not has_h1: cells.insert(0, {'cell_type': 'markdown', 'metadata': {}, 'source': head})
    nb['cells'] = cells
    return nb

CSS = """<style>
body{margin:0} .docs-side{position:fixed;top:0;left:0;bottom:0;width:260px;overflow:auto;padding:12px 16px;
background:#f6f7f9;border-right:1px solid #ddd;font:14px/1.45 system-ui,sans-serif;box-sizing:border-box}
.docs-side h2{font-size:13px;text-transform:uppercase;color:#555;margin:14px 0 4px}
.docs-side ul{list-style:none;margin:0;padding:0} .docs-side li{margin:2px 0}
.docs-side a{color:#1a4f9c;text-decoration:none} .docs-side a.current{font-weight:bold}
.docs-main{margin-left:260px} .docs-error{background:#fff3cd;border:1px solid #e0c36c;padding:8px;margin:8px 0}
</style>"""

def sidebar(pages:list[dict], current:str) -> str:
    "The navigation: every page as a link, grouped by folder, relative to `current`'s folder."
    depth = current.count('/')
    up = '../'*depth
    parts = ['<nav class="docs-side" id="docs-nav"><h2><a href="%sindex.html">core_models</a></h2>' % up]
    for g in GROUPS:
        ps = [p for p in pages if p['group'] == g and p['html'] != 'index.html']
        if not ps: continue
        parts.append(f'<h2 class="docs-group" data-group="{g or "modules"}">{GROUP_TITLES.get(g, g.capitalize())}</h2><ul>')
        for p in ps:
            cls = ' class="current"' if p['html'] == current else ''
            parts.append(f'<li><a{cls} href="{up}{p["html"]}">{html.escape(p["title"])}</a></li>')
        parts.append('</ul>')
    parts.append('</nav>')
    return ''.join(parts)

def render(pages:list[dict], out:Path):
    "Render every page with nbconvert's lab template and wrap it with the sidebar."
    import nbformat
    from nbconvert import HTMLExporter
    from traitlets.config import Config
    c = Config()
    c.TagRemovePreprocessor.remove_input_tags = {'remove_input'}
    c.TagRemovePreprocessor.remove_cell_tags = {'remove_cell'}
    c.TagRemovePreprocessor.enabled = True
    exp = HTMLExporter(config=c, template_name='lab')
    for p in pages:
        nb = nbformat.reads(json.dumps(p['nb']), as_version=4, capture_validation_error={})  # joins line lists; no raise
        body, _ = exp.from_notebook_node(nb, resources={'metadata': {'name': p['title']}})
        nav = sidebar(pages, p['html'])
        body = re.sub(r'<script src="https?://[^"]*require[^"]*"[^>]*>\s*</script>', '', body)  # no widget state: not needed
        body = body.replace('</head>', CSS + '</head>', 1)
        body = re.sub(r'(<body[^>]*>)', lambda m: m.group(1) + nav + '<div class="docs-main">', body, count=1)
        body = body.replace('</body>', '</div></body>', 1)
        dst = out/p['html']
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(body, encoding='utf-8')

def build(out:Path, proc_dir:Path, only:str|None=None, workers:int=2) -> dict[str, str]:
    "Process and render; returns the errors ({notebook: message}) of notebooks rendered unprocessed."
    rels = notebooks(only)
    t0 = time.time()
    errors = process(rels, proc_dir, workers)
    print(f'build_docs: processed {len(rels)} notebooks in {time.time()-t0:.1f}s ({len(errors)} failed)')
    pages = []
    for rel in rels:
        src = proc_dir/rel
        err = errors.get(rel.as_posix())
        if err or not src.exists(): src, err = NBS/rel, err or 'no processed notebook written'
        nb = json.loads(src.read_text(encoding='utf-8'))
        meta = _frontmatter(nb)
        title = meta.get('title') or rel.stem
        group = rel.parent.as_posix() if rel.parent.as_posix() != '.' else ''
        name = 'index.html' if rel.as_posix() == 'index.ipynb' else (meta.get('output-file') or re.sub(r'^\d+_', '', rel.stem) + '.html')
        pages.append({'group': group, 'title': title, 'nb': _prepare(nb, title, err),
                      'html': (f'{group}/' if group else '') + name})
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    render(pages, out)
    print(f'build_docs: rendered {len(pages)} pages to {out} in {time.time()-t0:.1f}s')
    if only is None:  # a full build: pages of notebooks that were renamed or removed must not linger in the site
        for stale in sorted(set(out.rglob('*.html')) - {out/p['html'] for p in pages}):
            stale.unlink(); print(f'build_docs: removed {stale.relative_to(out)} (its notebook is gone)')
    return errors

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('out', nargs='?', default=str(ROOT/'_docs'), help='output folder (default _docs/)')
    ap.add_argument('--proc', default=None, help='processed notebooks folder (default _proc/, or OUT/../_proc when OUT is given)')
    ap.add_argument('--only', default=None, help='regex on the notebook path under nbs/: build only those (and the index)')
    ap.add_argument('--workers', type=int, default=2)
    ap.add_argument('--strict', action='store_true', help='exit 1 when any notebook fails processing')
    ap.add_argument('--no-quarto', action='store_true', help='build the static site even where Quarto is installed')
    a = ap.parse_args(argv)
    if shutil.which('quarto') and not a.no_quarto and a.only is None:
        nbdev_docs = Path(sys.executable).parent/'nbdev-docs'
        return subprocess.call([str(nbdev_docs)], cwd=ROOT)
    out = Path(a.out).absolute()
    proc = Path(a.proc).absolute() if a.proc else (ROOT/'_proc' if a.out == str(ROOT/'_docs') else out.parent/'_proc')
    errors = build(out, proc, a.only, a.workers)
    for nb, err in errors.items(): print(f'build_docs: {nb}: processing failed, rendered without API reference: {err}', file=sys.stderr)
    return 1 if errors and a.strict else 0

if __name__ == '__main__': sys.exit(main())
