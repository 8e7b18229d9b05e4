"""The model registry against faults: bad input, damaged and hostile files, and writers killed inside git.

- **Bad input** (one table, `CASES`): each case makes one mistake and names the error type and the words the message
  must hold (what was expected, what was given, which file or field); the error must be raised by core_models itself.
- **Hostile files**: pickle payloads, path traversal, links out of the root, class paths that walk attributes into
  other modules, absurd safetensors headers. Each is refused, no payload runs, and nothing outside the root is read
  (the outside files hold weights whose digest matches, so reading them would have *succeeded*).
- **Kills**: a server process forks one `register` at a time into its own process group; the test SIGKILLs the group
  at a random moment after the writer's first git command, checks that every visible version is committed, tagged and
  loadable, then registers the killed version again, which must succeed.

Run this file with python to print the tally (tried / clear / unclear / silent).
"""
import json, os, random, shutil, signal, subprocess, sys, time, warnings
from pathlib import Path
import pytest, torch
import faultcases
from faultcases import Case

from core_models.blocks.conv import ConvBlock
from core_models.versioning.checkpoint import CheckpointError, save_checkpoint, sha256_file
from core_models.versioning.registry import (ModelRegistry, RegistryError, DamagedRecordError, RegistryWarning, allow_module,
                                             resolve_class, weights_bytes, sha256_bytes)
pytestmark = pytest.mark.usefixtures('one_thread')  # tests/conftest.py: one torch thread per test, restored

NAN, INF = float('nan'), float('inf')


def tiny(seed=0, out_channels=2):
    torch.manual_seed(seed)
    return ConvBlock(in_channels=1, out_channels=out_channels)

def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)

def registry(tmp:Path, versions=('1.0.0',)) -> ModelRegistry:
    "A plain-folder registry in `tmp` holding `tiny` at `versions` (seeds 0, 1, ...)."
    reg = ModelRegistry(tmp/'registry')
    for i, v in enumerate(versions): reg.register('tiny', v, tiny(i))
    return reg

def meta_of(reg, v='1.0.0') -> Path: return reg.root/'tiny'/v/'meta.json'

def edit_meta(reg, edit, v='1.0.0'):
    f = meta_of(reg, v); rec = json.loads(f.read_text()); edit(rec); f.write_text(json.dumps(rec))

def weights_of(reg, v='1.0.0') -> Path: return reg.root/'tiny'/v/'model.safetensors'

def put_weights(reg, data:bytes, v='1.0.0'):
    "Replace the weights file *and* its recorded digest: the work of someone who edits both."
    weights_of(reg, v).write_bytes(data)
    edit_meta(reg, lambda r: r['weights'].update(sha256=sha256_bytes(data), bytes=len(data)), v)

def sh(*args, cwd):
    r = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, f'{args}: {r.stderr}'
    return r.stdout

def git_repo(d:Path) -> Path:
    d.mkdir(parents=True)
    sh('git', 'init', '-q', '-b', 'main', cwd=d)
    sh('git', 'config', 'user.email', 'test@example.com', cwd=d); sh('git', 'config', 'user.name', 'Test', cwd=d)
    # git's defaults otherwise, automatic maintenance on: the registry's commits turn it off themselves (a kill inside
    # `git maintenance run --auto` left .git/objects/maintenance.lock, once in 21 kills, when they did not)
    (d/'README.md').write_text('# project\n'); sh('git', 'add', 'README.md', cwd=d); sh('git', 'commit', '-qm', 'init', cwd=d)
    return d


# -- bad input: one table ---------------------------------------------------------------------------------------------

CASES: list[Case] = []
def case(id, error, *words):
    def deco(fn): CASES.append(Case(id, fn, error, words)); return fn
    return deco

@case('registry/root-is-a-file', RegistryError, 'expected a folder', 'which is a file', 'notes.txt')
def _(tmp): (tmp/'notes.txt').write_text('x'); ModelRegistry(tmp/'notes.txt')

@case('registry/root-inside-a-file', RegistryError, 'expected a folder', 'inside the file', 'notes.txt')
def _(tmp): (tmp/'notes.txt').write_text('x'); ModelRegistry(tmp/'notes.txt'/'registry')

@case('registry/root-is-a-number', RegistryError, 'root expected a folder path', 'int 42')
def _(tmp): ModelRegistry(42)

@case('registry/name-with-slashes', RegistryError, 'model name', "'../x'")
def _(tmp): registry(tmp, ()).register('../x', '1.0.0', tiny())

@case('registry/version-not-semver', RegistryError, 'expected a semantic version', "'1.0'")
def _(tmp): registry(tmp, ()).register('tiny', '1.0', tiny())

@case('registry/version-a-number', RegistryError, 'expected a semantic version', '1.5')
def _(tmp): registry(tmp, ()).register('tiny', 1.5, tiny())

@case('registry/tag-with-space', RegistryError, 'tag: expected', "'a b'")
def _(tmp): registry(tmp, ()).register('tiny', '1.0.0', tiny(), tags=['a b'])

@case('registry/model-a-number', RegistryError, 'model: expected an nn.Module class', '42')
def _(tmp): registry(tmp, ()).register('tiny', '1.0.0', 42)

@case('registry/unknown-architecture', RegistryError, "'no_such_arch'")
def _(tmp): registry(tmp, ()).register('tiny', '1.0.0', 'no_such_arch')

@case('registry/metrics-nan', RegistryError, 'metrics.acc', 'expected a finite number', 'nan', 'None')
def _(tmp): registry(tmp, ()).register('tiny', '1.0.0', tiny(), metrics={'acc': NAN})

@case('registry/metrics-inf-nested', RegistryError, 'metrics.val.loss', 'expected a finite number', 'inf')
def _(tmp): registry(tmp, ()).register('tiny', '1.0.0', tiny(), metrics={'val': {'loss': INF}})

@case('registry/metrics-nan-tensor', RegistryError, 'metrics.acc', 'nan')
def _(tmp): registry(tmp, ()).register('tiny', '1.0.0', tiny(), metrics={'acc': torch.tensor(NAN)})

@case('registry/metrics-a-list', RegistryError, 'metrics: expected a dict', 'list')
def _(tmp): registry(tmp, ()).register('tiny', '1.0.0', tiny(), metrics=[0.9])

@case('registry/description-a-number', RegistryError, 'description: expected a string', 'int')
def _(tmp): registry(tmp, ()).register('tiny', '1.0.0', tiny(), description=3)

@case('registry/instance-and-checkpoint', RegistryError, 'give the weights once')
def _(tmp): registry(tmp, ()).register('tiny', '1.0.0', tiny(), checkpoint=save_checkpoint(tiny(), path=tmp/'ck'))

@case('registry/missing-checkpoint', CheckpointError, 'no checkpoint at', 'nowhere')
def _(tmp): registry(tmp, ()).register('tiny', '1.0.0', ConvBlock, checkpoint=tmp/'nowhere')

@case('registry/same-version-other-weights', RegistryError, 'tiny 1.0.0 is already registered with a different weights')
def _(tmp): registry(tmp).register('tiny', '1.0.0', tiny(7))

@case('registry/unknown-model', RegistryError, "no model named 'nope'", 'registered: tiny')
def _(tmp): registry(tmp).load('nope')

@case('registry/unknown-version', RegistryError, "'tiny' has no version 9.9.9", 'versions: 1.0.0')
def _(tmp): registry(tmp).load('tiny', '9.9.9')

@case('registry/unknown-stage', RegistryError, "no version, stage or tag 'staging'", 'stages: none')
def _(tmp): registry(tmp).load('tiny', 'staging')

@case('registry/version-none', RegistryError, 'version: expected', 'None')
def _(tmp): registry(tmp).get('tiny', None)

@case('registry/stage-latest', RegistryError, "'latest' is reserved")
def _(tmp): registry(tmp).promote('tiny', '1.0.0', 'latest')

@case('registry/stage-with-space', RegistryError, 'stage: expected letters', "'pre prod'")
def _(tmp): registry(tmp).promote('tiny', '1.0.0', 'pre prod')

@case('registry/allow-module-not-dotted', RegistryError, 'expected a dotted module name', "'os; rm'")
def _(tmp): allow_module('os; rm')

@case('registry/meta-without-sha256', RegistryError, 'meta.json', 'weights.sha256', 'expected a sha256 digest', '<missing>')
def _(tmp):
    reg = registry(tmp); edit_meta(reg, lambda r: r['weights'].pop('sha256')); reg.load('tiny', '1.0.0')

@case('registry/meta-not-json', RegistryError, "tiny 1.0.0 can't be read", 'meta.json', 'not valid JSON')
def _(tmp):
    reg = registry(tmp); meta_of(reg).write_text('{"format": '); reg.load('tiny', '1.0.0')

@case('registry/meta-bytes-a-string', RegistryError, 'weights.bytes', 'expected an integer >= 0', "'many'")
def _(tmp):
    reg = registry(tmp); edit_meta(reg, lambda r: r['weights'].update(bytes='many')); reg.load('tiny', '1.0.0')

@case('registry/meta-config-a-list', RegistryError, 'config: expected an object or null', '[1]')
def _(tmp):
    reg = registry(tmp); edit_meta(reg, lambda r: r.update(config=[1])); reg.load('tiny', '1.0.0')

@case('registry/meta-of-another-version', RegistryError, 'records tiny 1.0.0, but lies where tiny 1.0.1 belongs')
def _(tmp):
    reg = registry(tmp, ('1.0.0', '1.0.1')); shutil.copy(meta_of(reg, '1.0.0'), meta_of(reg, '1.0.1')); reg.load('tiny', '1.0.1')

@case('registry/meta-wrong-format', RegistryError, 'format: expected', "'core_models.registry/1'", "'mlflow'")
def _(tmp):
    reg = registry(tmp); edit_meta(reg, lambda r: r.update(format='mlflow')); reg.load('tiny', '1.0.0')

@case('registry/labels-not-json', RegistryError, 'labels.json', 'not valid JSON', "no version, stage or tag 'production'")
def _(tmp):
    reg = registry(tmp); reg.promote('tiny', '1.0.0', 'production'); (reg.root/'tiny'/'labels.json').write_text('{')
    reg.load('tiny', 'production')

@case('registry/labels-stage-not-a-version', RegistryError, 'labels.json', 'stages: expected {stage: version}', '../../x')
def _(tmp):
    reg = registry(tmp); (reg.root/'tiny'/'labels.json').write_text(json.dumps({'stages': {'production': '../../x'}}))
    reg.promote('tiny', '1.0.0', 'staging')

@case('registry/weights-truncated', RegistryError, 'model.safetensors', 'does not match the recorded', 'truncated')
def _(tmp):
    reg = registry(tmp); f = weights_of(reg); f.write_bytes(f.read_bytes()[:-10]); reg.load('tiny', '1.0.0')

@case('registry/weights-missing', RegistryError, 'tiny 1.0.0', 'model.safetensors', 'is missing')
def _(tmp):
    reg = registry(tmp); weights_of(reg).unlink(); reg.load('tiny', '1.0.0')

@case('registry/weights-not-safetensors', RegistryError, 'model.safetensors', 'not a valid safetensors file', 'nothing was loaded')
def _(tmp):
    reg = registry(tmp); put_weights(reg, b'this is not a safetensors file at all'); reg.load('tiny', '1.0.0')

@case('registry/weights-of-another-shape', RegistryError, 'tiny 1.0.0', 'the weights do not fit ConvBlock')
def _(tmp):
    reg = registry(tmp); put_weights(reg, weights_bytes(tiny(0, out_channels=3))); reg.load('tiny', '1.0.0')

@case('registry/class-walks-into-torch', RegistryError, "'torch' in core_models.factory is the module 'torch'")
def _(tmp):
    reg = registry(tmp); edit_meta(reg, lambda r: r.update(model_class='core_models.factory:torch.nn.Identity')); reg.load('tiny', '1.0.0')

@case('registry/class-module-missing', RegistryError, "module 'core_models.nope' can't be imported")
def _(tmp):
    reg = registry(tmp); edit_meta(reg, lambda r: r.update(model_class='core_models.nope:Net')); reg.load('tiny', '1.0.0')

@case('registry/weights-file-traversal', RegistryError, 'weights.file', "'../../../../outside.safetensors'")
def _(tmp):
    reg = registry(tmp); edit_meta(reg, lambda r: r['weights'].update(file='../../../../outside.safetensors')); reg.load('tiny', '1.0.0')

@case('registry/foreign-index-lock', RegistryError, 'git is busy', 'index.lock', 'rm ')
def _(tmp):
    repo = git_repo(tmp/'repo'); (repo/'.git'/'index.lock').write_text('')
    ModelRegistry(repo/'registry').register('tiny', '1.0.0', tiny())


def outcome(c:Case, tmp:Path) -> tuple[str, str]: return faultcases.outcome(c, tmp, quiet=(RegistryWarning,))

@pytest.mark.parametrize('c', CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_clear_error(c, tmp_path):
    verdict, why = outcome(c, tmp_path)
    assert verdict == 'clear', f'{c.id}: {verdict}: {why}'

def test_enough_cases_with_unique_ids():
    ids = [c.id for c in CASES]
    assert len(ids) >= 20 and len(ids) == len(set(ids))


# -- one damaged record hides nothing else ----------------------------------------------------------------------------

def test_a_damaged_version_blocks_nothing_else(tmp_path):
    reg = registry(tmp_path, ('1.0.0', '1.0.1', '1.0.2'))
    reg.promote('tiny', '1.0.0', 'production')
    meta_of(reg, '1.0.1').write_text('{not json')
    edit_meta(reg, lambda r: r['weights'].pop('sha256'), '1.0.2')
    with pytest.warns(RegistryWarning, match=r'2 registry record\(s\) left out: .*1\.0\.1.*not valid JSON.*weights\.sha256'):
        assert [mv.version for mv in reg.versions('tiny')] == ['1.0.0']
    with pytest.warns(RegistryWarning): assert reg.list() == ['tiny']
    bad = reg.damaged()
    assert [(e.name, e.version, Path(e.file).name) for e in bad] == [('tiny', '1.0.1', 'meta.json'), ('tiny', '1.0.2', 'meta.json')]
    assert 'not valid JSON' in bad[0].reason and 'weights.sha256' in bad[1].reason
    with pytest.warns(RegistryWarning):
        assert same_weights(reg.load('tiny', '1.0.0'), tiny(0)) and same_weights(reg.load('tiny', 'production'), tiny(0))
        assert reg.get('tiny').version == '1.0.0'  # latest: the highest readable version (the warning names the others)
    assert '**left out**' in reg._repr_markdown_() and '1.0.1' in reg._repr_markdown_()


def test_a_damaged_labels_file_hides_no_version(tmp_path):
    reg = registry(tmp_path, ('1.0.0', '1.1.0'))
    (reg.root/'tiny'/'labels.json').write_text('[]')
    with pytest.warns(RegistryWarning, match='labels.json'):
        assert [mv.version for mv in reg.versions('tiny')] == ['1.0.0', '1.1.0']
        assert same_weights(reg.load('tiny'), tiny(1))
    with pytest.raises(RegistryError, match='labels.json: expected a JSON object'):  # a write would lose what it held: refused
        reg.promote('tiny', '1.0.0', 'production')


# -- hostile files ----------------------------------------------------------------------------------------------------

class Payload:
    "Unpickling this creates a file: proof that code ran."
    def __init__(self, target): self.target = str(target)
    def __reduce__(self): return (open, (self.target, 'w'))

def outside_weights(tmp:Path, seed=0) -> Path:
    "A valid weights file outside the registry whose bytes the registry's record accepts."
    f = tmp/'outside.safetensors'
    f.write_bytes(weights_bytes(tiny(seed)))
    return f

def test_pickle_payload_as_weights_never_runs(tmp_path):
    reg = registry(tmp_path)
    import pickle
    put_weights(reg, pickle.dumps(Payload(tmp_path/'PWNED')))
    with pytest.raises(RegistryError, match='not a valid safetensors file'): reg.load('tiny', '1.0.0')
    put_weights(reg, _torch_saved(Payload(tmp_path/'PWNED')))
    with pytest.raises(RegistryError, match='not a valid safetensors file'): reg.load('tiny', '1.0.0')
    assert not (tmp_path/'PWNED').exists()

def _torch_saved(obj) -> bytes:
    import io
    b = io.BytesIO(); torch.save({'weight': obj}, b); return b.getvalue()

def test_pickle_payload_in_a_checkpoint_is_never_read(tmp_path):
    "register(checkpoint=) reads only the safetensors weights: a training state holding a payload is not deserialised."
    ck = save_checkpoint(tiny(3), path=tmp_path/'ck')
    (ck/'training_state.pt').write_bytes(_torch_saved(Payload(tmp_path/'PWNED')))
    meta = json.loads((ck/'meta.json').read_text())
    digest, size = sha256_file(ck/'training_state.pt')
    meta['files']['training_state.pt'] = {'sha256': digest, 'size': size}
    (ck/'meta.json').write_text(json.dumps(meta))
    reg = registry(tmp_path, ())
    reg.register('tiny', '1.0.0', ConvBlock, checkpoint=ck)
    assert same_weights(reg.load('tiny'), tiny(3)) and not (tmp_path/'PWNED').exists()

@pytest.mark.parametrize('how', ['weights.file ../', 'weights.file absolute', 'weights link', 'meta.json link', 'version folder link',
                                 'labels.json link'])
def test_nothing_outside_the_root_is_read(tmp_path, how):
    reg = registry(tmp_path)
    out = outside_weights(tmp_path, seed=5)  # same digest as recorded below: reading it would load fine
    rel = os.path.relpath(out, weights_of(reg).parent)
    if how.startswith('weights'):
        edit_meta(reg, lambda r: r['weights'].update(sha256=sha256_bytes(out.read_bytes()), bytes=out.stat().st_size))
    if how == 'weights.file ../': edit_meta(reg, lambda r: r['weights'].update(file=rel))
    if how == 'weights.file absolute': edit_meta(reg, lambda r: r['weights'].update(file=str(out)))
    if how == 'weights link': weights_of(reg).unlink(); weights_of(reg).symlink_to(out)
    if how == 'meta.json link':
        (tmp_path/'meta.json').write_text(meta_of(reg).read_text()); meta_of(reg).unlink(); meta_of(reg).symlink_to(tmp_path/'meta.json')
    if how == 'version folder link':
        shutil.move(str(reg.root/'tiny'/'1.0.0'), str(tmp_path/'elsewhere')); (reg.root/'tiny'/'1.0.0').symlink_to(tmp_path/'elsewhere')
    if how == 'labels.json link':
        (tmp_path/'labels.json').write_text(json.dumps({'stages': {'production': '1.0.0'}}))
        (reg.root/'tiny'/'labels.json').symlink_to(tmp_path/'labels.json')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', RegistryWarning)
        with pytest.raises(RegistryError) as e:
            reg.load('tiny', 'production' if how == 'labels.json link' else '1.0.0')
    msg = str(e.value)
    assert ('outside the registry folder' in msg or 'weights.file' in msg), msg

EVIL = """
from pathlib import Path
Path(__file__).with_name('IMPORTED').write_text('the module ran')
import torch.nn as nn
class Net(nn.Module): pass
"""

@pytest.mark.parametrize('path,words', [
    ('core_models.factory:torch.nn.Identity', "is the module 'torch'"),
    ('core_models.factory:nn.Identity', "core_models.factory defines no class 'nn.Identity'"),
    ('core_models.versioning.registry:subprocess.Popen', "is the module 'subprocess'"),
    ('core_models.versioning.registry:importlib.import_module', "is the module 'importlib'"),
    ('core_models.versioning.registry:shutil.rmtree', "is the module 'shutil'"),
    ('core_models.versioning.registry:ModelRegistry.load', 'not an nn.Module subclass'),
    ('core_models.versioning.registry:nn.Module', "is the module 'torch.nn'"),
    ('core_models.architectures:CNNArchitecture', 'only imports it from core_models.architectures.cnn'),
    ('core_models.blocks.conv:torch', "is the module 'torch'"),
    ('core_models:__builtins__', "expected 'module:ClassName'"),
    ('core_models.blocks.conv:ConvBlock.__class__', "expected 'module:ClassName'"),
    ('evil_mod:Net', 'not on the allow-list'),
    ('os:system', 'not on the allow-list'),
    ('builtins.eval', 'not on the allow-list'),
])
def test_class_paths_that_walk_are_refused(tmp_path, monkeypatch, path, words):
    (tmp_path/'evil_mod.py').write_text(EVIL)
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = registry(tmp_path)
    edit_meta(reg, lambda r: r.update(model_class=path))
    with pytest.raises(RegistryError, match=None) as e: reg.load('tiny', '1.0.0')
    assert words in str(e.value), str(e.value)
    with pytest.raises(RegistryError): resolve_class(path)
    assert 'evil_mod' not in sys.modules and not (tmp_path/'IMPORTED').exists()

def _header(n:int, body:bytes=b'') -> bytes: return n.to_bytes(8, 'little') + body

ABSURD = {
    'header length 2**64-1': _header(2**64 - 1, b'{}'),
    'header length past the end': _header(10**9, b'{"a": 1}'),
    'header not JSON': _header(8, b'\xff\xfe\x00garb'),
    'header not an object': _header(2, b'[]'),
    'a tensor of 2**62 elements': (lambda h: _header(len(h), h))(json.dumps(
        {'conv.weight': {'dtype': 'F32', 'shape': [2**31, 2**31], 'data_offsets': [0, 2**63]}}).encode()),
    'offsets past the end': (lambda h: _header(len(h), h + b'\0' * 8))(json.dumps(
        {'conv.weight': {'dtype': 'F32', 'shape': [2], 'data_offsets': [0, 8_000_000]}}).encode()),
    'deeply nested header': (lambda h: _header(len(h), h))(b'{"a":' + b'[' * 100_000 + b']' * 100_000 + b'}'),
    'unknown dtype': (lambda h: _header(len(h), h + b'\0' * 8))(json.dumps(
        {'conv.weight': {'dtype': 'PICKLE', 'shape': [2], 'data_offsets': [0, 8]}}).encode()),
    'empty file': b'',
}

@pytest.mark.parametrize('what', list(ABSURD))
def test_absurd_safetensors_headers_are_refused_naming_the_file(tmp_path, what):
    reg = registry(tmp_path)
    put_weights(reg, ABSURD[what])
    with pytest.raises(RegistryError, match=r"model\.safetensors.*not a valid safetensors file"): reg.load('tiny', '1.0.0')


# -- kills inside git -------------------------------------------------------------------------------------------------

SERVER = r'''
import os, sys, warnings
os.environ['OMP_NUM_THREADS'] = '1'
import torch
torch.set_num_threads(1)
from core_models.blocks.conv import ConvBlock
from core_models.versioning.registry import ModelRegistry
import gto.api  # imported once here, not in every forked writer
for line in sys.stdin:
    root, version, seed = line.split()
    pid = os.fork()
    if pid == 0:  # the writer: its own process group, so a kill takes its git children with it
        os.setpgid(0, 0)
        os.dup2(2, 1)  # its prints must not mix with the protocol on stdout
        try:
            torch.manual_seed(int(seed))
            ModelRegistry(root).register('tiny', version, ConvBlock(in_channels=1, out_channels=2), metrics={'seed': int(seed)})
            code = 0
        except BaseException as e:
            print('writer failed:', type(e).__name__, e, file=sys.stderr, flush=True); code = 3
        os._exit(code)
    os.setpgid(pid, pid)
    print(pid, flush=True)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
'''

class Writers:
    "A process that forks one `register` per request; `start` returns the writer's pid, `wait` its exit code."
    def __init__(self, tmp:Path):
        (tmp/'server.py').write_text(SERVER)
        self.log = open(tmp/'writers.log', 'w')
        self.p = subprocess.Popen([sys.executable, str(tmp/'server.py')], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self.log, text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    def start(self, root, version, seed) -> int:
        self.p.stdin.write(f'{root} {version} {seed}\n'); self.p.stdin.flush()
        return int(self.p.stdout.readline())
    def wait(self) -> int: return int(self.p.stdout.readline())
    def close(self): self.p.stdin.close(); self.p.wait(timeout=60); self.log.close()

def git_locks(repo:Path) -> list[str]:
    return sorted(str(p.relative_to(repo)) for p in (repo/'.git').rglob('*.lock'))

def check_nothing_half_visible(root:Path, repo:Path, seeds:dict):
    "Every version `versions()` shows is tagged, its tag's commit holds its record, and it loads the weights registered."
    reg = ModelRegistry(root)
    tags = set(sh('git', 'tag', '--list', 'tiny@v*', cwd=repo).split())
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', RegistryWarning)
        shown = [mv.version for mv in reg.versions('tiny')]
        for v in shown:
            assert f'tiny@v{v}' in tags, f'{v} is listed but not tagged'
            sh('git', 'cat-file', '-e', f'tiny@v{v}:registry/tiny/{v}/meta.json', cwd=repo)
        if shown: assert same_weights(reg.load('tiny', shown[-1]), tiny(seeds[shown[-1]]))
    return shown

def test_register_killed_inside_git_at_random_points(tmp_path):
    rnd = random.Random(int(os.environ.get('KILL_SEED', '14')))
    w = Writers(tmp_path)
    log = lambda: (tmp_path/'writers.log').read_text()[-3000:]
    kills, states, batch, n = 0, {}, 0, 0
    try:
        while kills < 21:
            if n % 7 == 0:  # a fresh repo per batch: the writer's git work stays small
                batch += 1
                repo = git_repo(tmp_path/f'repo{batch}'); root = repo/'registry'; seeds = {}
                w.start(root, '0.0.1', 100)  # an uninterrupted one: how long its git commands take here
                t0 = time.perf_counter()
                while not (root/'.git-op').exists() and time.perf_counter() - t0 < 30: time.sleep(0.0005)
                t0 = time.perf_counter(); assert w.wait() == 0, log(); git_time = time.perf_counter() - t0
                seeds['0.0.1'] = 100
            n += 1
            v, seed = f'1.0.{n}', n
            seeds[v] = seed
            pid = w.start(root, v, seed)
            deadline = time.time() + 30
            while not (root/'.git-op').exists() and time.time() < deadline and w.p.poll() is None: time.sleep(0.0005)  # its first git command
            time.sleep(rnd.uniform(0, git_time))
            try: os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError: pass
            code = w.wait()
            state = None
            if code == -signal.SIGKILL:
                kills += 1
                left = git_locks(repo)
                pending = (root/'tiny'/v/'.registering').exists()
                state = ('tagged' if f'tiny@v{v}' in sh('git', 'tag', cwd=repo).split() else
                         'git lock left' if left else
                         'committed, not tagged' if pending and f'registry/tiny/{v}/meta.json' in sh('git', 'ls-tree', '-r', '--name-only', 'HEAD', cwd=repo) else
                         'files written, not committed' if pending else 'before its files')
                states[state] = states.get(state, 0) + 1
            else: assert code == 0, log()
            shown = check_nothing_half_visible(root, repo, seeds)
            assert set(shown) <= set(seeds)
            w.start(root, v, seed)  # register the killed version again: it must succeed
            assert w.wait() == 0, (state, git_locks(repo), log())
            assert v in check_nothing_half_visible(root, repo, seeds), (state, log())
            assert not git_locks(repo) and not (root/'.git-op').exists() and not (root/'tiny'/v/'.registering').exists(), \
                (git_locks(repo), code, state, log())
            assert sh('git', 'status', '--porcelain', '--', 'registry', cwd=repo) == '', (state, sh('git', 'status', '--porcelain', cwd=repo), log())
    finally: w.close()
    recovered = (tmp_path/'writers.log').read_text().count('killed inside git')
    print(f'kills survived: {kills}; where they landed: {states}; stale git locks removed by the next writer: {recovered}')
    assert kills >= 20


if __name__ == '__main__':  # the tally
    import tempfile
    counts = {'clear': 0, 'unclear': 0, 'silent': 0}
    for c in CASES:
        with tempfile.TemporaryDirectory() as d: verdict, why = outcome(c, Path(d))
        counts[verdict] += 1
        if verdict != 'clear' or '-v' in sys.argv: print(f'{verdict:8} {c.id}: {why}')
    print(f'tried {len(CASES)} / clear {counts["clear"]} / unclear {counts["unclear"]} / silent {counts["silent"]}')


FULL_DISK = r'''
import json, os, resource, signal, sys
import torch
from core_models.blocks.conv import ConvBlock
from core_models.versioning.registry import ModelRegistry
reg = ModelRegistry(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing the process
resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))  # room for a meta.json, not for these weights
try: reg.register('big', '1.0.0', ConvBlock(in_channels=64, out_channels=64))
except OSError as e: print(json.dumps({'type': type(e).__name__, 'errno': e.errno, 'msg': str(e)}))
'''

def test_a_write_that_fails_names_the_file_and_leaves_nothing(tmp_path):
    "A full disk (here: a file-size limit, the same error path without a mount) is one OSError naming version and file."
    reg = registry(tmp_path)
    (tmp_path/'full.py').write_text(FULL_DISK)
    r = subprocess.run([sys.executable, str(tmp_path/'full.py'), str(reg.root)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, 'OMP_NUM_THREADS': '1'})
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got['errno'] == 27 and 'could not register big 1.0.0' in got['msg'] and 'model.safetensors' in got['msg'], got
    assert 'nothing of it was kept' in got['msg']
    assert not (reg.root/'big').exists() or not any((reg.root/'big').iterdir())  # no version, no temporaries
    assert reg.list() == ['tiny'] and same_weights(reg.load('tiny'), tiny(0))
