"""Build the docs site: `python tools/build_docs.py [OUT_DIR] [--only REGEX] [--proc DIR] [--workers N]`.

Where Quarto is installed this runs `nbdev-docs` (the real nbdev site, written to `_docs/`).
Where it isn't (our machines), it builds a plain static HTML site instead, offline:

1. processes every notebook under `nbs/` the way `nbdev-proc-nbs` does, with nbdev's own `FilterDefaults`
   processors: `show_doc` cells are added and executed (with the cells nbdev runs for them: exports and
   imports), exports and hidden cells are stripped, and every other cell keeps the outputs the notebook was
   saved with (they are not run again). Unlike `nbdev-proc-nbs` it neither tries to install Quarto nor stops
   at the first notebook that fails: a notebook whose processing fails (or takes over `--timeout` seconds) is
   rendered as it is saved (with its outputs) under a banner naming the error, reported on stderr (exit 1
   with `--strict`);
2. a notebook whose saved outputs show widgets without their state (ipywidgets keeps a widget's content in the
   kernel; the notebook only holds `VBox(children=...)`) is instead run top to bottom in a fresh process, in
   its folder, as Run All in a new kernel would, still through nbdev's processors (`#| eval: false` cells
   are skipped); its widgets' state is then drawn as
   static HTML (boxes, labels, HTML, a disabled copy of each control, and the PNG of every `Image` widget)
   in place of the widget, with a note that the live widget needs a kernel. No widget JavaScript is needed,
   so the pages work offline. The widget demos (`nbs/widgets/`) always run this way, so their pages show what
   Run All leaves on screen; a notebook saved with its widget state (`metadata.widgets`) is not re-run;
3. renders each processed notebook to HTML with nbconvert's `lab` template, without `In [ ]:`/`Out[ ]:`
   prompts (require.js and the widget-manager CDN links are dropped; MathJax's stays, for when there is a
   network: offline, math shows as its TeX source), with a sidebar listing every page
   grouped by folder (modules, blocks, backbones, heads, architectures, versioning, widgets, tutorials);
   `index.html` is the home page (`nbs/index.ipynb`).

`show_doc` signatures are written as in the source: nbdev (fastcore's docments) prints the type of a default
as if it were an annotation (`config:NoneType=None`, `n=3` as `n:int=3`), a class as `def Class(...)->None`
and a sentinel default with its memory address; here an unannotated parameter stays unannotated
(`config=None`), a class reads `class Class(...)`, and `<object object at 0x...>` reads `<object>`.

Speed: nbdev's processing itself takes about 0.1 s a notebook; what cost most was starting Python and importing
torch for each notebook (4-5 s). Here the parent imports torch, the package, nbdev and nbconvert once, then each
notebook is processed and rendered in its own process forked from it (as isolated from the other notebooks as
a fresh interpreter, started in milliseconds), `--workers` at a time (default: one per CPU).

OUT_DIR defaults to `_docs/`, the processed notebooks go to `_proc/` (or `--proc`). `--only REGEX` builds only
the notebooks whose path under `nbs/` matches (the index page is always built): the test uses it to stay fast.
"""
import argparse, html, json, os, re, shutil, subprocess, sys, time
from multiprocessing import get_context
from multiprocessing.connection import wait
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT/'nbs'
GROUPS = ['', 'blocks', 'backbones', 'heads', 'architectures', 'versioning', 'widgets', 'tutorials']
GROUP_TITLES = {'': 'Modules'}
WIDGET_VIEW, WIDGET_STATE = 'application/vnd.jupyter.widget-view+json', 'application/vnd.jupyter.widget-state+json'

def notebooks(only:str|None=None) -> list[Path]:
    "The notebooks under nbs/ (relative paths), as nbdev lists them: no `_*` or `.*` names, no checkpoints."
    out = []
    for p in sorted(NBS.rglob('*.ipynb')):
        rel = p.relative_to(NBS)
        if any(part.startswith(('_', '.')) for part in rel.parts): continue
        if only and rel.as_posix() != 'index.ipynb' and not re.search(only, rel.as_posix()): continue
        out.append(rel)
    return out

# ---------------------------------------------------------------------------------------------------------
# Which notebooks must run: widget views whose state the notebook doesn't hold

def widget_ids(nb:dict) -> list[str]:
    "The model ids of the widget views among a notebook's outputs."
    return [o['data'][WIDGET_VIEW]['model_id'] for c in nb['cells'] if c['cell_type'] == 'code'
            for o in c.get('outputs', []) if WIDGET_VIEW in o.get('data', {})]

def needs_run(nb:dict, widget_demo:bool=False) -> bool:
    """True when the notebook shows widgets whose state it wasn't saved with: only running it can draw them.
    A widget demo (a notebook under nbs/widgets/) runs unless it was saved with its widget state: its page shows
    what Run All leaves on screen even when the notebook was saved with no outputs."""
    state = nb.get('metadata', {}).get('widgets', {}).get(WIDGET_STATE, {}).get('state', {})
    return any(i not in state for i in widget_ids(nb)) or (widget_demo and not state)

# ---------------------------------------------------------------------------------------------------------
# Readable show_doc signatures

def _readable_renderer():
    "nbdev's `BasicMarkdownRenderer`, with signatures as written in the source (see the module docstring)."
    import inspect
    from dataclasses import is_dataclass
    from fastcore.docments import DocmentText, _fmt_sig, empty
    from nbdev.showdoc import BasicMarkdownRenderer

    class SourceText(DocmentText):
        def _fmt_param(self, nm, p):
            s = super()._fmt_param(nm, p)
            return re.sub(r'=<([\w.]+) object at 0x[0-9a-f]+>$', r'=<\1>', s)
        def __str__(self):
            if not inspect.isclass(self.obj): return super().__str__()
            return _fmt_sig(self.obj.__name__, self.params, '):', self.maxline, prefix='class')
        __repr__ = __str__

    class ReadableRenderer(BasicMarkdownRenderer):
        def __init__(self, sym, *args, **kwargs):
            super().__init__(sym, *args, **kwargs)
            if not isinstance(self.dm, DocmentText): return
            self.dm.__class__ = SourceText
            obj = self.dm.obj
            target = obj.__init__ if inspect.isclass(obj) and not is_dataclass(obj) else obj
            try: params = inspect.signature(target).parameters
            except (TypeError, ValueError): return
            for k, d in self.dm.dm.items():
                if k in params and params[k].annotation is inspect.Parameter.empty: d['anno'] = empty
    return ReadableRenderer

# ---------------------------------------------------------------------------------------------------------
# Processing (in the worker processes)

def _procs(run_all:bool):
    "nbdev's doc processors; with `run_all`, its show_doc executor runs every code cell, as Run All does."
    from nbdev.processors import FilterDefaults, exec_show_docs
    if not run_all: return FilterDefaults()
    class exec_all_cells(exec_show_docs):
        "Run every code cell in order (but `#| eval: false` ones and `nbdev_export()`), keeping its outputs."
        def __call__(self, cell):
            if not hasattr(self, 'k') or cell.cell_type != 'code' or not cell.source.strip(): return
            if cell.directives_.get('eval', '').lower() == 'false' or 'nbdev_export'+'()' in cell.source: return
            self.k.cell(cell)
            if (e := self.k.exc):
                raise Exception(f"Error in cell {cell.idx_}:\n{cell.source}\n{type(e).__name__}: {e}") from e
    exec_all_cells.__name__ = 'exec_show_docs'  # so [tool.nbdev] skip_procs still names it
    class RunAll(FilterDefaults):
        def base_procs(self): return [exec_all_cells if p is exec_show_docs else p for p in super().base_procs()]
    return RunAll()

def _process_one(rel:str, proc_dir:str, run_all:bool) -> str|None:
    "Process one notebook into proc_dir with nbdev's processors; None, or the error."
    from fastcore.nbio import read_nb, write_nb
    dst = Path(proc_dir)/rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.environ['IN_TEST'] = '1'  # as nbdev's own doc processing (serve_drv) does
    if run_all:  # as Jupyter and nbdev-test run a notebook: in its folder, importable from it (a forked child: no harm to the parent)
        os.chdir((NBS/rel).parent); sys.path.insert(0, str((NBS/rel).parent))
    try:
        nb = read_nb(NBS/rel)
        _procs(run_all)(nb)
        write_nb(nb, dst)
        return None
    except Exception as e:
        if dst.exists(): dst.unlink()
        msg = str(e).strip().splitlines()
        return msg[0] + (' ... ' + msg[-1] if len(msg) > 1 else '') if msg else type(e).__name__
    finally: os.environ.pop('IN_TEST', None)

def _warm_up():
    """Import once, in the parent, what every notebook imports (torch, the package, nbdev, IPython, nbconvert):
    each task then runs in a process forked from it, started in milliseconds instead of the 4-5 s an import of
    torch costs, yet as clean as a new kernel after its imports (no notebook has run in the parent)."""
    import importlib, pkgutil, warnings
    os.chdir(ROOT)
    if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        import torch, torchvision, core_models, execnb.shell, nbdev.processors, nbconvert, nbformat  # noqa: F401
        for m in pkgutil.walk_packages(core_models.__path__, 'core_models.'):
            try: importlib.import_module(m.name)
            except Exception: pass  # the notebook that imports it reports the error
    _exporter()
    import nbdev.showdoc
    nbdev.showdoc.BasicMarkdownRenderer = _readable_renderer()  # show_doc looks it up at each call

def _work(rels:list[str], run_all:bool, proc_dir:str, out:str, pages:list[dict]) -> dict[str, dict]:
    "A task: process then render each of `rels`; {rel: {'error', 'process_s', 'render_s'}}."
    res = {}
    for rel in rels:
        t0, c0 = time.time(), time.process_time()
        err = _process_one(rel, proc_dir, run_all)
        t1 = time.time()
        page = next(p for p in pages if p['rel'] == rel)
        src = Path(proc_dir)/rel
        if err or not src.exists(): src, err = NBS/rel, err or 'no processed notebook written'
        nb = json.loads(src.read_text(encoding='utf-8'))
        render_page(_prepare(nb, page['title'], err), page, pages, Path(out))
        res[rel] = {'error': err, 'process_s': t1-t0, 'render_s': time.time()-t1, 'cpu_s': time.process_time()-c0, 'rendered': True}
    return res

# ---------------------------------------------------------------------------------------------------------
# Widgets as static HTML, from their state

_BOXES = {'VBoxModel': 'column', 'HBoxModel': 'row', 'BoxModel': 'row', 'GridBoxModel': 'row'}
_LAYOUT_CSS = ('width', 'height', 'min_width', 'max_width', 'min_height', 'max_height', 'margin', 'padding', 'border',
               'display', 'flex', 'flex_flow', 'align_items', 'justify_content', 'grid_template_columns', 'visibility')

def _state_models(meta:dict) -> dict:
    "{model_id: {'model_name', 'state'}} from a notebook's widget-state metadata, buffers put back in place."
    models = {}
    for mid, m in meta.get('widgets', {}).get(WIDGET_STATE, {}).get('state', {}).items():
        st = dict(m.get('state', {}))
        for b in m.get('buffers', []):
            if b.get('path'): st[b['path'][0]] = ('b64', b['data'])
        models[mid] = {'model_name': m.get('model_name', ''), 'state': st}
    return models

def _ref(v): return v[len('IPY_MODEL_'):] if isinstance(v, str) and v.startswith('IPY_MODEL_') else None

def _style(models, st) -> str:
    lay = models.get(_ref(st.get('layout')) or '', {}).get('state', {})
    css = [f"{k.replace('_', '-')}:{lay[k]}" for k in _LAYOUT_CSS if lay.get(k) not in (None, '')]
    if lay.get('border_top'): css.append(f"border:{lay['border_top']}")
    sty = models.get(_ref(st.get('style')) or '', {}).get('state', {})
    if sty.get('button_color'): css.append(f"background:{sty['button_color']}")
    if sty.get('font_weight'): css.append(f"font-weight:{sty['font_weight']}")
    return f' style="{html.escape(";".join(css))}"' if css else ''

def _desc(st) -> str:
    d = st.get('description') or ''
    return f'<span class="w-desc">{html.escape(d) if not st.get("description_allow_html") else d}</span>' if d else ''

def _img_src(v, fmt='png') -> str|None:
    if isinstance(v, tuple) and v[0] == 'b64': return f'data:image/{fmt};base64,{v[1]}'
    if isinstance(v, str) and v: return f'data:image/{fmt};base64,{v}'
    return None

def _output_html(o:dict) -> str:
    "One output of an `Output` widget."
    t = o.get('output_type')
    if t == 'stream': return f'<pre class="w-stream">{html.escape("".join(o.get("text", "")))}</pre>'
    if t == 'error':
        tb = re.sub(r'\x1b\[[0-9;]*m', '', '\n'.join(o.get('traceback', [])))
        return f'<pre class="w-error">{html.escape(tb)}</pre>'
    d = o.get('data', {})
    for mime in ('image/png', 'image/jpeg'):
        if mime in d: return f'<img src="data:{mime};base64,{"".join(d[mime]).strip()}">'
    if 'image/svg+xml' in d: return ''.join(d['image/svg+xml'])
    if 'text/html' in d: return ''.join(d['text/html'])
    if 'text/plain' in d: return f'<pre>{html.escape("".join(d["text/plain"]))}</pre>'
    return ''

def widget_html(models:dict, mid:str, depth:int=0) -> str:
    "The static picture of widget `mid` and its children, as HTML."
    m = models.get(mid)
    if m is None or depth > 40: return '<span class="w-missing">(widget)</span>'
    name, st = m['model_name'], m['state']
    sty, desc, esc = _style(models, st), _desc(st), lambda v: html.escape(str(v))
    kids = lambda: ''.join(widget_html(models, _ref(c), depth+1) for c in st.get('children', []) if _ref(c))
    cls = ' '.join(['w', 'w-' + name.removesuffix('Model').lower()] + [esc(c) for c in st.get('_dom_classes', [])])
    if name in _BOXES: return f'<div class="{cls} w-box w-{_BOXES[name]}"{sty}>{kids()}</div>'
    if name in ('TabModel', 'AccordionModel', 'StackModel'):
        titles, sel = st.get('titles', []), st.get('selected_index', 0) or 0
        children = [_ref(c) for c in st.get('children', [])]
        head = ''.join(f'<span class="w-tab{" w-sel" if i == sel else ""}">{esc(t)}</span>' for i, t in enumerate(titles))
        body = widget_html(models, children[sel], depth+1) if 0 <= sel < len(children) else ''
        return f'<div class="{cls} w-box w-column"{sty}><div class="w-tabs">{head}</div>{body}</div>'
    if name in ('HTMLModel', 'HTMLMathModel'): return f'<div class="{cls}"{sty}>{desc}{st.get("value", "")}</div>'
    if name == 'LabelModel': return f'<div class="{cls}"{sty}>{desc}{esc(st.get("value", ""))}</div>'
    if name == 'ImageModel':
        src = _img_src(st.get('value'), st.get('format', 'png'))
        size = ''.join(f' {k}="{esc(st[k])}"' for k in ('width', 'height') if st.get(k))
        return f'<img class="{cls}"{sty}{size} src="{src}" alt="widget image">' if src else f'<div class="{cls} w-empty"{sty}></div>'
    if name == 'OutputModel': return f'<div class="{cls}"{sty}>{"".join(_output_html(o) for o in st.get("outputs", []))}</div>'
    if name in ('DropdownModel', 'SelectModel', 'RadioButtonsModel'):
        labels, idx = st.get('_options_labels', []), st.get('index')
        opts = ''.join(f'<option{" selected" if i == idx else ""}>{esc(l)}</option>' for i, l in enumerate(labels))
        return f'<div class="{cls} w-row"{sty}>{desc}<select disabled>{opts}</select></div>'
    if name == 'ToggleButtonsModel':
        labels, idx = st.get('_options_labels', []), st.get('index')
        bs = ''.join(f'<button disabled class="{"w-sel" if i == idx else ""}">{esc(l)}</button>' for i, l in enumerate(labels))
        return f'<div class="{cls} w-row"{sty}>{desc}{bs}</div>'
    if name in ('IntSliderModel', 'FloatSliderModel', 'FloatLogSliderModel'):
        v, lo, hi = st.get('value', 0), st.get('min', 0), st.get('max', 100)
        ro = f'<span class="w-readout">{esc(v)}</span>' if st.get('readout', True) else ''
        return f'<div class="{cls} w-row"{sty}>{desc}<input type="range" disabled min="{esc(lo)}" max="{esc(hi)}" step="{esc(st.get("step", 1))}" value="{esc(v)}">{ro}</div>'
    if name in ('IntRangeSliderModel', 'FloatRangeSliderModel'):
        return f'<div class="{cls} w-row"{sty}>{desc}<span class="w-readout">{esc(st.get("value"))}</span></div>'
    if name in ('IntProgressModel', 'FloatProgressModel'):
        return f'<div class="{cls} w-row"{sty}>{desc}<progress value="{esc(st.get("value", 0))}" max="{esc(st.get("max", 100))}"></progress></div>'
    if name in ('ButtonModel', 'ToggleButtonModel', 'FileUploadModel'):
        label = st.get('description') or ('Upload' if name == 'FileUploadModel' else '')
        return f'<button disabled class="{cls}"{sty}>{esc(label)}</button>'
    if name in ('CheckboxModel', 'ValidModel'):
        return f'<label class="{cls} w-row"{sty}><input type="checkbox" disabled{" checked" if st.get("value") else ""}>{desc}</label>'
    if name in ('TextModel', 'TextareaModel', 'IntTextModel', 'FloatTextModel', 'BoundedIntTextModel', 'BoundedFloatTextModel', 'PasswordModel'):
        return f'<div class="{cls} w-row"{sty}>{desc}<input disabled value="{esc(st.get("value", ""))}"></div>'
    return f'<div class="{cls}"{sty}>{desc}{esc(name.removesuffix("Model"))}</div>'

NOTE = ('<div class="docs-widget-note">A picture of this widget as the notebook left it when run top to bottom. '
        'Open the notebook in JupyterLab (<code>make lab</code>) to use it.</div>')

def static_widgets(nb:dict) -> int:
    "Replace every widget view among the outputs with its static picture; the number of views left undrawn."
    models, missing = _state_models(nb.get('metadata', {})), 0
    for c in nb['cells']:
        for o in c.get('outputs', []):
            d = o.get('data', {})
            if WIDGET_VIEW not in d: continue
            mid = d[WIDGET_VIEW].get('model_id')
            if mid in models: body = widget_html(models, mid) + NOTE
            else:
                missing += 1
                body = ('<div class="docs-widget-note">An interactive widget: its state was not saved with the '
                        'notebook. Open the notebook in JupyterLab to see it.</div>')
            o['data'] = {'text/html': f'<div class="docs-widget">{body}</div>'}
            o.get('metadata', {}).pop(WIDGET_VIEW, None)
    nb.get('metadata', {}).pop('widgets', None)  # no embedded state: nbconvert would load the widget manager from a CDN
    return missing

# ---------------------------------------------------------------------------------------------------------
# Pages

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

def page_info(rel:Path) -> dict:
    "Where a notebook's page goes and its title, from the notebook as saved (as nbdev's frontmatter does)."
    nb = json.loads((NBS/rel).read_text(encoding='utf-8'))
    meta = _frontmatter(nb)
    title = meta.get('title') or rel.stem
    group = rel.parent.as_posix() if rel.parent.as_posix() != '.' else ''
    name = 'index.html' if rel.as_posix() == 'index.ipynb' else (meta.get('output-file') or re.sub(r'^\d+_', '', rel.stem) + '.html')
    return {'rel': rel.as_posix(), 'group': group, 'title': title, 'html': (f'{group}/' if group else '') + name,
            'run_all': needs_run(nb, widget_demo=group == 'widgets')}

def _prepare(nb:dict, title:str, error:str|None) -> dict:
    "Drop the frontmatter cell, put the title back as an H1, hide `#| echo: false` sources, strip `#|` lines, draw widgets."
    cells = [c for c in nb['cells'] if not (c['cell_type'] == 'raw' and ''.join(c['source']).startswith('---'))]
    for c in cells:
        c.get('metadata', {}).pop('execution', None)  # nbdev's timing metadata is not valid nbformat
        if c['cell_type'] != 'code': continue
        src = ''.join(c['source'])
        tags = c.setdefault('metadata', {}).setdefault('tags', [])
        if re.search(r'^#\|\s*echo:\s*false', src, re.M): tags.append('remove_input')
        if re.search(r'^#\|\s*(hide|exporti?|eval:\s*false)\b', src, re.M) and error: tags.append('remove_cell')
        c['source'] = '\n'.join(l for l in src.splitlines() if not l.startswith('#|')).strip('\n')
    has_h1 = cells and cells[0]['cell_type'] == 'markdown' and ''.join(cells[0]['source']).lstrip().startswith('# ')
    if not has_h1: cells.insert(0, {'cell_type': 'markdown', 'metadata': {}, 'source': f'# {title}\n'})
    if error:
        banner = (f'<div class="docs-error"><b>API reference not rendered</b>: processing this notebook failed: '
                  f'<code>{html.escape(error)}</code>. The page shows the notebook as it was saved.</div>')
        cells.insert(1, {'cell_type': 'markdown', 'metadata': {}, 'source': banner})
    nb['cells'] = cells
    static_widgets(nb)
    return nb

CSS = """<style>
body{margin:0} .docs-side{position:fixed;top:0;left:0;bottom:0;width:260px;overflow:auto;padding:12px 16px;
background:#f6f7f9;border-right:1px solid #ddd;font:14px/1.45 system-ui,sans-serif;box-sizing:border-box}
.docs-side h2{font-size:13px;text-transform:uppercase;color:#555;margin:14px 0 4px}
.docs-side ul{list-style:none;margin:0;padding:0} .docs-side li{margin:2px 0}
.docs-side a{color:#1a4f9c;text-decoration:none} .docs-side a.current{font-weight:bold}
.docs-main{margin-left:260px} .docs-error{background:#fff3cd;border:1px solid #e0c36c;padding:8px;margin:8px 0}
.jp-InputPrompt,.jp-OutputPrompt{display:none}
.docs-widget{border:1px solid #d0d7de;border-radius:4px;padding:8px;margin:4px 0;font:13px system-ui,sans-serif;overflow:auto}
.docs-widget .w-box{display:flex;gap:4px} .docs-widget .w-row{display:flex;flex-direction:row;align-items:center;gap:6px;flex-wrap:wrap}
.docs-widget .w-column{flex-direction:column} .docs-widget .w-desc{color:#333;margin-right:4px}
.docs-widget select,.docs-widget input,.docs-widget button{font:inherit;color:#222;opacity:1}
.docs-widget button{border:1px solid #bbb;background:#eee;padding:2px 10px;border-radius:2px}
.docs-widget button.w-sel,.docs-widget .w-tab.w-sel{background:#cfe2ff;font-weight:bold}
.docs-widget .w-tab{padding:2px 10px;border:1px solid #ccc;margin-right:2px}
.docs-widget img{max-width:100%;height:auto} .docs-widget table{border-collapse:collapse} .docs-widget td,.docs-widget th{padding:1px 6px}
.docs-widget-note{color:#666;font-size:12px;font-style:italic;margin-top:6px}
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

_EXPORTER = None
def _exporter():
    "nbconvert's lab HTML exporter, without prompts, removing cells and inputs by tag (one per process)."
    global _EXPORTER
    if _EXPORTER is None:
        from nbconvert import HTMLExporter
        from traitlets.config import Config
        c = Config()
        c.TagRemovePreprocessor.remove_input_tags = {'remove_input'}
        c.TagRemovePreprocessor.remove_cell_tags = {'remove_cell'}
        c.TagRemovePreprocessor.enabled = True
        _EXPORTER = HTMLExporter(config=c, template_name='lab', exclude_input_prompt=True, exclude_output_prompt=True)
        # Speed (a third of the render time): the template runs bleach over every highlighted code cell, and the
        # exporter re-parses the whole page with BeautifulSoup to add alt texts and tabindexes. Our pages are our
        # own notebooks (nbconvert doesn't sanitise their outputs either), so code is not sanitised and the alt
        # texts are added in render_page; the tabindexes (keyboard focus on cells) are left out.
        _EXPORTER.register_filter('clean_html', lambda s: s.decode() if isinstance(s, bytes) else str(s))
        import nbconvert.exporters.html as nbhtml
        class _AsIs(str):
            def __new__(cls, markup, features=None): return super().__new__(cls, markup)
            def select(self, selector): return []
        nbhtml.BeautifulSoup = _AsIs
    return _EXPORTER

def render_page(nb:dict, page:dict, pages:list[dict], out:Path):
    "Render one prepared notebook with nbconvert's lab template, wrapped with the sidebar, to out/page['html']."
    import nbformat
    node = nbformat.reads(json.dumps(nb), as_version=4, capture_validation_error={})  # joins line lists; no raise
    body, _ = _exporter().from_notebook_node(node, resources={'metadata': {'name': page['title']}})
    body = re.sub(r'<img(?![^>]*\balt=)', '<img alt="No description has been provided for this image"', body)
    # offline: no require.js nor widget manager from a CDN (widgets are drawn statically); MathJax's link stays (math typesets when online)
    body = re.sub(r'<script[^>]*src="https?://[^"]*(require|jupyter-widgets|html-manager)[^"]*"[^>]*>\s*</script>', '', body)
    body = body.replace('</head>', CSS + '</head>', 1)
    body = re.sub(r'(<body[^>]*>)', lambda m: m.group(1) + sidebar(pages, page['html']) + '<div class="docs-main">', body, count=1)
    body = body.replace('</body>', '</div></body>', 1)
    dst = out/page['html']
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(body, encoding='utf-8')

# ---------------------------------------------------------------------------------------------------------

def _tasks(pages:list[dict]) -> list[tuple[list[str], bool]]:
    "One task per notebook, the longest first: those that run all their cells, then by size (rendering varies with it)."
    cost = lambda p: (p['run_all'], (NBS/p['rel']).stat().st_size)
    return [([p['rel']], p['run_all']) for p in sorted(pages, key=cost, reverse=True)]

def _child(conn, rels, run_all, proc_dir, out, pages, threads):
    import torch
    torch.set_num_threads(threads)  # `workers` children share the CPUs: don't oversubscribe them
    try: res = _work(rels, run_all, proc_dir, out, pages)
    except BaseException as e: res = {r: {'error': f'{type(e).__name__}: {e}', 'process_s': 0., 'render_s': 0., 'rendered': False} for r in rels}
    conn.send(res); conn.close()
    os._exit(0)  # no atexit handlers of the parent's imports in a forked child

def _run_forked(tasks, workers:int, proc_dir:str, out:str, pages:list[dict], timeout:float=600) -> dict[str, dict]:
    "Run each task in a child forked from this (warm) process, `workers` at a time; their results merged."
    ctx, pending, running, results = get_context('fork'), list(tasks), {}, {}
    failed = lambda rels, why: {x: {'error': why, 'process_s': 0., 'render_s': 0., 'rendered': False} for x in rels}
    try:
        while pending or running:
            while pending and len(running) < max(1, workers):
                rels, run_all = pending.pop(0)
                r, w = ctx.Pipe(duplex=False)
                threads = max(1, (os.cpu_count() or 1)//workers)
                proc = ctx.Process(target=_child, args=(w, rels, run_all, proc_dir, out, pages, threads))
                proc.start(); w.close()
                running[r] = (proc, rels, time.time())
            for r in wait(list(running), timeout=5):
                proc, rels, _ = running.pop(r)
                try: results.update(r.recv())
                except EOFError: proc.join(); results.update(failed(rels, f'the process building it died (exit code {proc.exitcode})'))
                r.close(); proc.join()
            for r, (proc, rels, t0) in list(running.items()):
                if time.time() - t0 > timeout:
                    proc.kill(); proc.join(); r.close(); del running[r]
                    results.update(failed(rels, f'still running after {timeout:.0f}s: stopped'))
    finally:
        for proc, _, _ in running.values(): proc.kill(); proc.join()
    return results

def build(out:Path, proc_dir:Path, only:str|None=None, workers:int=2, verbose:bool=False, timeout:float=600) -> dict[str, str]:
    "Process and render; returns the errors ({notebook: message}) of notebooks rendered unprocessed."
    import nbdev.doclinks
    t0 = time.time()
    os.chdir(ROOT); nbdev.doclinks._build_modidx()
    pages = [page_info(rel) for rel in notebooks(only)]
    out.mkdir(parents=True, exist_ok=True)
    _warm_up()
    t1 = time.time()
    results = {}
    results = _run_forked(_tasks(pages), workers, str(proc_dir), str(out), pages, timeout)
    for p in pages:  # a task that died or was stopped: its page as the notebook was saved, under the error banner
        if not results.get(p['rel'], {}).get('rendered'):
            err = results.setdefault(p['rel'], {'error': 'not built', 'process_s': 0., 'render_s': 0.})['error']
            render_page(_prepare(json.loads((NBS/p['rel']).read_text(encoding='utf-8')), p['title'], err), p, pages, out)
    errors = {r: v['error'] for r, v in results.items() if v['error']}
    runs = [p['rel'] for p in pages if p['run_all']]
    print(f'build_docs: {len(pages)} pages in {time.time()-t0:.1f}s ({t1-t0:.1f}s of imports, then {workers} workers) '
          f'({len(errors)} failed; ran all cells of {len(runs)} widget notebooks: '
          + ', '.join(f"{r} {results[r]['process_s']:.1f}s" for r in runs) + ')')
    if verbose:
        for r, v in sorted(results.items(), key=lambda kv: -kv[1]['process_s']-kv[1]['render_s']):
            print(f"  {r:45s} process {v['process_s']:5.1f}s render {v['render_s']:5.1f}s cpu {v.get('cpu_s', 0):5.1f}s"
                  + (' (ran all cells)' if r in runs else ''))
    if only is None:  # a full build: pages of notebooks that were renamed or removed must not linger in the site
        for stale in sorted(set(out.rglob('*.html')) - {out/p['html'] for p in pages}):
            stale.unlink(); print(f'build_docs: removed {stale.relative_to(out)} (its notebook is gone)')
    return errors

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('out', nargs='?', default=str(ROOT/'_docs'), help='output folder (default _docs/)')
    ap.add_argument('--proc', default=None, help='processed notebooks folder (default _proc/, or OUT/../_proc when OUT is given)')
    ap.add_argument('--only', default=None, help='regex on the notebook path under nbs/: build only those (and the index)')
    ap.add_argument('--workers', type=int, default=os.cpu_count() or 2, help='parallel processes (default: one per CPU)')
    ap.add_argument('--verbose', action='store_true', help="print each notebook's processing and rendering time")
    ap.add_argument('--timeout', type=float, default=600, help='seconds a notebook may take before it is stopped (and fails)')
    ap.add_argument('--strict', action='store_true', help='exit 1 when any notebook fails processing')
    ap.add_argument('--no-quarto', action='store_true', help='build the static site even where Quarto is installed')
    a = ap.parse_args(argv)
    if shutil.which('quarto') and not a.no_quarto and a.only is None:
        nbdev_docs = Path(sys.executable).parent/'nbdev-docs'
        return subprocess.call([str(nbdev_docs)], cwd=ROOT)
    out = Path(a.out).absolute()
    proc = Path(a.proc).absolute() if a.proc else (ROOT/'_proc' if a.out == str(ROOT/'_docs') else out.parent/'_proc')
    errors = build(out, proc, a.only, a.workers, a.verbose, a.timeout)
    for nb, err in errors.items(): print(f'build_docs: {nb}: processing failed, rendered without API reference: {err}', file=sys.stderr)
    return 1 if errors and a.strict else 0

if __name__ == '__main__': sys.exit(main())
