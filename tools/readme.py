"""Write README.md from nbs/index.ipynb: `python tools/readme.py [--check]`.

nbdev's own `nbdev-readme` renders the index notebook with Quarto, which our machines can't install; this does
the same job for the parts a README needs, so the index page and the README can never drift apart:

- markdown cells are copied as they are;
- code cells become ```python blocks without their `#|` directive lines; cells marked `#| hide` are left out;
- a code cell's text output (a stream or a `text/plain` result) follows it in a plain ``` block when it is at
  most MAX_OUTPUT_LINES lines long (a long table belongs in the notebook, not the README); `#| output: false`
  leaves the output out, `#| echo: false` the code.

`--check` writes nothing: it exits 1 naming what to run when README.md is not what the notebook generates
(`make test` runs it through tests/test_docs.py).
"""
import json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INDEX, README = ROOT/'nbs'/'index.ipynb', ROOT/'README.md'
MAX_OUTPUT_LINES = 12
HEADER = '<!-- Generated from nbs/index.ipynb by tools/readme.py: edit the notebook, then run `make docs`. -->\n\n'

def _directives(src:list[str]) -> tuple[dict, list[str]]:
    "Split a code cell into its `#|` directives ({name: value}) and the remaining lines."
    opts, code = {}, []
    for line in src:
        if line.startswith('#|'):
            key, _, val = line[2:].strip().partition(':')
            opts[key.strip()] = val.strip() or True
        else: code.append(line)
    return opts, code

def _output_text(outputs:list[dict]) -> str:
    "The text a reader sees below a code cell: streams and plain-text results, in order."
    parts = []
    for o in outputs:
        if o.get('output_type') == 'stream': parts.append(''.join(o.get('text', '')))
        elif o.get('output_type') in ('execute_result', 'display_data') and 'text/plain' in o.get('data', {}):
            parts.append(''.join(o['data']['text/plain']))
    return '\n'.join(p.rstrip('\n') for p in parts if p.strip())

def render(nb:dict) -> str:
    "The README's text for the notebook `nb` (parsed JSON)."
    blocks = []
    for cell in nb['cells']:
        src = ''.join(cell['source']).splitlines()
        if cell['cell_type'] == 'markdown':
            if src: blocks.append('\n'.join(src).strip())
            continue
        if cell['cell_type'] != 'code': continue
        opts, code = _directives(src)
        if opts.get('hide') is True or opts.get('include') == 'false': continue
        code_text = '\n'.join(code).strip()
        if code_text and opts.get('echo') != 'false': blocks.append(f'```python\n{code_text}\n```')
        out = _output_text(cell.get('outputs', []))
        if out and opts.get('output') != 'false' and len(out.splitlines()) <= MAX_OUTPUT_LINES:
            blocks.append(f'```\n{out}\n```')
    return HEADER + '\n\n'.join(blocks) + '\n'

def main(argv:list[str]) -> int:
    text = render(json.loads(INDEX.read_text()))
    if '--check' in argv:
        if README.exists() and README.read_text() == text: return 0
        print(f'README.md is not what {INDEX.relative_to(ROOT)} generates: edit the notebook (not README.md), '
              'then run `make docs` or `.venv/bin/python tools/readme.py`', file=sys.stderr)
        return 1
    README.write_text(text)
    print(f'wrote {README.relative_to(ROOT)} from {INDEX.relative_to(ROOT)}')
    return 0

if __name__ == '__main__': sys.exit(main(sys.argv[1:]))
