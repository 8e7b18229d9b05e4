"""The model registry under conditions a notebook can't show: several processes at once, files that name code,
and a real git + DVC repo where a version is read back from its tag while the work tree holds another."""
import json, os, subprocess, sys, time, textwrap
from pathlib import Path
import pytest, torch
from core_models.blocks.conv import ConvBlock
from core_models.architectures import CNNArchitecture
from core_models.versioning.registry import (ModelRegistry, ModelVersion, RegistryError, register_model, resolve_class,
                                             allow_module, weights_bytes, sha256_bytes)


def tiny(seed, out_channels=4):
    torch.manual_seed(seed)
    return ConvBlock(in_channels=1, out_channels=out_channels)


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- plain folder --------------------------------------------------------------------------------------------

def test_refused_overwrite_and_noop(tmp_path):
    reg = ModelRegistry(tmp_path/'registry')
    assert reg.repo is None
    v1 = reg.register('tiny', 'v1.0.0', tiny(0), tags=['a'])
    assert (v1.version, v1.tags, v1.model_class) == ('1.0.0', ('a',), 'core_models.blocks.conv:ConvBlock')
    again = reg.register('tiny', '1.0.0', tiny(0), tags=['b'])  # same content: nothing rewritten, new tag added
    assert again.digest == v1.digest and again.created == v1.created and again.tags == ('a', 'b')
    with pytest.raises(RegistryError, match=r'already registered with a different weights \(sha256'):
        reg.register('tiny', '1.0.0', tiny(1))
    with pytest.raises(RegistryError, match=r'config \(out_channels: 4 -> 8\)'):
        reg.register('tiny', '1.0.0', tiny(0, out_channels=8))
    with pytest.raises(RegistryError, match='expected a semantic version'):
        reg.register('tiny', '1.0', tiny(0))
    assert [mv.version for mv in reg.versions('tiny')] == ['1.0.0']
    assert same_weights(reg.load('tiny', '1.0.0'), tiny(0))


def test_load_by_version_latest_stage_and_tag(tmp_path):
    reg = ModelRegistry(tmp_path/'registry')
    for i, v in enumerate(['1.0.0', '1.10.0', '1.2.0', '2.0.0-rc.1']): reg.register('tiny', v, tiny(i))
    assert reg.get('tiny').version == '2.0.0-rc.1'
    reg.deprecate('tiny', '2.0.0-rc.1')
    assert reg.get('tiny', 'latest').version == '1.10.0'  # semver order, not string order
    assert same_weights(reg.load('tiny'), tiny(1))
    assert same_weights(reg.load('tiny', '2.0.0-rc.1'), tiny(3))  # deprecated, still loadable by number
    reg.promote('tiny', '1.0.0', 'production')
    assert same_weights(reg.load('tiny', 'production'), tiny(0))
    reg.promote('tiny', '1.2.0', 'production')  # a stage moves
    assert reg.get('tiny', '1.0.0').stages == () and reg.get('tiny', 'production').version == '1.2.0'
    reg.tag('tiny', '1.0.0', 'baseline')
    assert reg.get('tiny', 'baseline').version == '1.0.0'
    reg.untag('tiny', '1.0.0', 'baseline')
    with pytest.raises(RegistryError, match="no version, stage or tag 'baseline'"): reg.get('tiny', 'baseline')
    with pytest.raises(RegistryError, match='is deprecated'): reg.promote('tiny', '2.0.0-rc.1', 'production')
    labels = json.loads((reg.root/'tiny'/'labels.json').read_text())
    assert labels == {'deprecated': ['2.0.0-rc.1'], 'stages': {'production': '1.2.0'}, 'tags': {}}


def test_architecture_name_and_composed_model(tmp_path):
    reg = ModelRegistry(tmp_path/'registry')
    cfg = {'num_classes': 3, 'in_chans': 1, 'backbone': 'simple_cnn', 'head': 'classifier'}
    arch = reg.register('cnn_arch', '0.1.0', 'cnn', config=cfg)
    assert arch.weights is None and arch.model_class == 'cnn'
    a, b = reg.load('cnn_arch'), reg.load('cnn_arch')
    assert isinstance(a, CNNArchitecture) and same_weights(a, b)  # seeded: the same fresh model each time
    torch.manual_seed(0)
    m = CNNArchitecture({'num_classes': 3}, backbone='simple_cnn', in_chans=1)
    mv = reg.register('cnn_model', '1.0.0', m)
    assert mv.config == json.loads(json.dumps(m.to_config()))
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad(): assert torch.equal(reg.load('cnn_model')(x), m.eval()(x))
    m4 = CNNArchitecture({'num_classes': 4}, backbone='simple_cnn', in_chans=1)
    with pytest.raises(RegistryError, match='does not fit the weights'):  # the config given is not the one it was built from
        reg.register('bad', '1.0.0', m4, config=cfg)
    assert 'bad' not in reg.list()


def test_damaged_weights(tmp_path):
    reg = ModelRegistry(tmp_path/'registry')
    reg.register('tiny', '1.0.0', tiny(0))
    f = reg.root/'tiny'/'1.0.0'/'model.safetensors'
    data = bytearray(f.read_bytes()); data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(RegistryError, match='does not match the recorded'): reg.load('tiny', '1.0.0')
    f.unlink()
    with pytest.raises(RegistryError, match='weights file .* is missing'): reg.load('tiny', '1.0.0')


EVIL = """
from pathlib import Path
Path(__file__).with_name('IMPORTED').write_text('the module ran')
import torch.nn as nn
class Net(nn.Module): pass
"""

@pytest.mark.parametrize('path', ['os:system', 'subprocess.Popen', 'evil_mod:Net', 'builtins:eval', 'NotRegistered'])
def test_refuses_classes_outside_the_allow_list(tmp_path, monkeypatch, path):
    (tmp_path/'evil_mod.py').write_text(EVIL)
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = ModelRegistry(tmp_path/'registry')
    reg.register('tiny', '1.0.0', tiny(0))
    meta = reg.root/'tiny'/'1.0.0'/'meta.json'
    rec = json.loads(meta.read_text())
    meta.write_text(json.dumps({**rec, 'model_class': path}))
    with pytest.raises(RegistryError, match='allow-list|not a registered architecture'): reg.load('tiny', '1.0.0')
    assert 'evil_mod' not in sys.modules and not (tmp_path/'IMPORTED').exists()
    with pytest.raises(RegistryError, match='allow-list|not a registered architecture'): resolve_class(path)


def test_allow_module_and_local_classes(tmp_path, monkeypatch):
    (tmp_path/'my_models.py').write_text('import torch.nn as nn\nclass Net(nn.Linear):\n    def __init__(self, config): super().__init__(config["n"], 2)\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_models
    reg = ModelRegistry(tmp_path/'registry')
    with pytest.raises(RegistryError, match=r"allow_module\('my_models'\)"): reg.register('net', '1.0.0', my_models.Net({'n': 3}), config={'n': 3})
    allow_module('my_models')
    assert reg.register('net', '1.0.0', my_models.Net({'n': 3}), config={'n': 3}).model_class == 'my_models:Net'
    assert isinstance(reg.load('net'), my_models.Net)

    class Local(torch.nn.Module):  # defined in a function: registered as an architecture by its name
        def __init__(self, config=None): super().__init__(); self.fc = torch.nn.Linear(2, 2)
    assert reg.register('local', '1.0.0', Local()).model_class == 'Local'
    assert isinstance(reg.load('local'), Local)


def test_register_model_uses_the_default_registry(tmp_path, monkeypatch):
    from core_models.settings import get_settings
    monkeypatch.setenv('CORE_MODELS_REGISTRY_PATH', str(tmp_path/'default_registry'))
    get_settings(reload=True)
    try:
        mv = register_model(tiny(0), name='custom_model', version='1.0.0', tags=['production', 'classifier'])
        assert mv.tags == ('classifier', 'production')
        assert ModelRegistry().root == (tmp_path/'default_registry').resolve()
        assert ModelRegistry().get('custom_model', 'production').version == '1.0.0'
    finally:
        monkeypatch.delenv('CORE_MODELS_REGISTRY_PATH'); get_settings(reload=True)


def test_seed_import_path():
    "The seed's `from core.models.versioning import ModelRegistry, register_model`, with core_models."
    from core_models.versioning import ModelRegistry as R, register_model as r
    assert R is ModelRegistry and r is register_model


# -- several processes at once ------------------------------------------------------------------------------

WORKER = """
import sys, time, torch
from pathlib import Path
from core_models.blocks.conv import ConvBlock
from core_models.versioning.registry import ModelRegistry, RegistryError
root, version, seed, i = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
torch.manual_seed(seed)
model = ConvBlock(in_channels=1, out_channels=4)
reg = ModelRegistry(root)
Path(root).parent.joinpath(f'ready{i}').touch()
while not Path(root).parent.joinpath('go').exists(): time.sleep(0.01)
try: reg.register('tiny', version, model, tags=[f'w{i}'], metrics={'worker': int(i)})
except RegistryError as e: print(e); sys.exit(3)
"""

def test_eight_processes_register_at_once(tmp_path):
    script = tmp_path/'worker.py'
    script.write_text(WORKER)
    root = tmp_path/'registry'
    jobs = [('1.0.0', 0), ('1.0.1', 1), ('1.0.2', 2), ('1.0.3', 3), ('1.0.4', 4),
            ('1.0.1', 99),  # same version, other weights: exactly one of the two 1.0.1 writers wins
            ('1.0.0', 0), ('1.0.0', 0)]  # same version, same weights: no-ops that add their tags
    procs = [subprocess.Popen([sys.executable, str(script), str(root), v, str(s), str(i)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i, (v, s) in enumerate(jobs)]
    deadline = time.time() + 240
    while not all((tmp_path/f'ready{i}').exists() for i in range(len(jobs))):
        assert time.time() < deadline and all(p.poll() is None for p in procs), [p.communicate() for p in procs if p.poll() is not None]
        time.sleep(0.05)
    (tmp_path/'go').touch()
    codes = [p.wait(timeout=240) for p in procs]
    outs = [p.communicate() for p in procs]
    assert sorted([codes[1], codes[5]]) == [0, 3], outs
    assert all(c == 0 for i, c in enumerate(codes) if i not in (1, 5)), outs
    loser = 1 if codes[1] else 5
    assert 'already registered with a different weights' in outs[loser][0]

    reg = ModelRegistry(root)
    mvs = {mv.version: mv for mv in reg.versions('tiny')}
    assert sorted(mvs) == ['1.0.0', '1.0.1', '1.0.2', '1.0.3', '1.0.4']
    winner_seed = 1 if loser == 5 else 99
    for v, seed in [('1.0.0', 0), ('1.0.1', winner_seed), ('1.0.2', 2), ('1.0.3', 3), ('1.0.4', 4)]:
        assert same_weights(reg.load('tiny', v), tiny(seed)), v  # digest verified inside load
    assert set(mvs['1.0.0'].tags) == {'w0', 'w6', 'w7'}  # no lost update of labels.json
    assert mvs['1.0.1'].tags == (f'w{1 if loser == 5 else 5}',)
    assert not [p for p in (root/'tiny').iterdir() if p.name.startswith('.')]  # no temporary leftovers


# -- a git + DVC repo ---------------------------------------------------------------------------------------

def sh(*args, cwd):
    r = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, f'{args}: {r.stderr}'
    return r.stdout

def dvc(*args, cwd): return sh(sys.executable, '-m', 'dvc', *args, cwd=cwd)

def test_git_dvc_repo_versions_from_tags(tmp_path):
    repo, remote = tmp_path/'repo', tmp_path/'dvc_remote'
    repo.mkdir()
    sh('git', 'init', '-q', '-b', 'main', cwd=repo)
    sh('git', 'config', 'user.email', 'test@example.com', cwd=repo); sh('git', 'config', 'user.name', 'Test', cwd=repo)
    dvc('init', '-q', cwd=repo)
    dvc('remote', 'add', '-d', 'local', str(remote), cwd=repo)
    sh('git', 'add', '-A', cwd=repo); sh('git', 'commit', '-qm', 'init', cwd=repo)

    reg = ModelRegistry(repo/'registry')
    assert reg.repo == repo.resolve() and reg.dvc
    m1, m2 = tiny(1), tiny(2)
    reg.register('tiny', '1.0.0', m1, metrics={'acc': 0.5})
    vdir = repo/'registry'/'tiny'/'1.0.0'
    assert (vdir/'model.safetensors.dvc').is_file() and '/model.safetensors' in (vdir/'.gitignore').read_text()
    assert sh('git', 'status', '--porcelain', cwd=repo) == ''  # committed: the meta, the .dvc file, the ignores
    assert 'registry/tiny/1.0.0/model.safetensors' not in sh('git', 'ls-files', cwd=repo).splitlines()  # the weights are DVC's
    reg.register('tiny', 'v2.0.0', m2, metrics={'acc': 0.9})
    reg.promote('tiny', '2.0.0', 'production')
    tags = sh('git', 'tag', cwd=repo).split()
    assert {'tiny@v1.0.0', 'tiny@v2.0.0', 'tiny#production#1'} <= set(tags), tags
    assert sh('git', 'rev-list', '-n1', 'tiny@v1.0.0', cwd=repo) != sh('git', 'rev-list', '-n1', 'tiny@v2.0.0', cwd=repo)
    with pytest.raises(RegistryError, match='already registered'): reg.register('tiny', '1.0.0', m2)

    # the work tree now holds only v2: v1 lives on in its tag and in the DVC remote
    sh('git', 'rm', '-rq', 'registry/tiny/1.0.0', cwd=repo); sh('git', 'commit', '-qm', 'prune v1', cwd=repo)
    sh('rm', '-rf', str(repo/'registry'/'tiny'/'1.0.0'), str(repo/'.dvc'/'cache'), cwd=repo)  # the ignored weights too
    assert not (repo/'registry'/'tiny'/'1.0.0').exists()
    reg = ModelRegistry(repo/'registry')
    assert [mv.version for mv in reg.versions('tiny')] == ['1.0.0', '2.0.0']
    v1 = reg.get('tiny', '1.0.0')
    assert v1.source == 'tiny@v1.0.0' and v1.metrics == {'acc': 0.5}
    assert same_weights(reg.load('tiny', '1.0.0'), m1)
    assert same_weights(reg.load('tiny', 'production'), m2)
    assert same_weights(reg.load('tiny'), m2)

    # GTO sees the same registry
    import gto.api
    shown = gto.api.show(str(repo), 'tiny')
    assert {r['version'] for r in shown} == {'v1.0.0', 'v2.0.0'}, shown
    assert 'v2.0.0' in str(gto.api.find_versions_in_stage(str(repo), 'tiny', 'production'))
    out = sh(str(Path(sys.executable).parent/'gto'), 'show', 'tiny', cwd=repo)
    assert 'v1.0.0' in out and 'v2.0.0' in out, out

    reg.deprecate('tiny', '1.0.0')  # GTO: a deregistration tag; ours: out of `latest`, still loadable by number
    assert any(t.startswith('tiny@v1.0.0!') for t in sh('git', 'tag', cwd=repo).split())
    assert reg.get('tiny', '1.0.0').deprecated and same_weights(reg.load('tiny', '1.0.0'), m1)
    assert sh('git', 'status', '--porcelain', cwd=repo) == ''

    # a fresh clone, nothing pulled: the weights come from the DVC remote
    clone = tmp_path/'clone'
    sh('git', 'clone', '-q', str(repo), str(clone), cwd=tmp_path)
    sh('git', 'fetch', '-q', '--tags', cwd=clone)
    creg = ModelRegistry(clone/'registry')
    assert not (clone/'registry'/'tiny'/'2.0.0'/'model.safetensors').exists()
    assert same_weights(creg.load('tiny', '2.0.0'), m2)
    assert same_weights(creg.load('tiny', '1.0.0'), m1)


def test_hand_written_instance_records_its_config(tmp_path):
    "A hand-written model (the seed's shape: `__init__(self, config)`) remembers its config: no `config=` needed."
    from core_models.architectures import BaseArchitecture
    from core_models.blocks import ConvBlock as CB

    class Hand(BaseArchitecture):
        def __init__(self, config):
            super().__init__(); self.body = CB(config)
    reg = ModelRegistry(tmp_path/'registry')
    m = Hand({'in_channels': 1, 'out_channels': 2})
    mv = reg.register('hand', '1.0.0', m)
    assert (mv.model_class, mv.config) == ('hand', {'architecture': 'hand', 'in_channels': 1, 'out_channels': 2})
    assert same_weights(reg.load('hand'), m)

    class NoRecord(BaseArchitecture):  # built from something that isn't a config: refused at register, with the reason
        def __init__(self, body):
            super().__init__(); self.body = body
    with pytest.raises(RegistryError, match=r"can't rebuild NoRecord from no config .*its to_config\(\) failed: .*Conv2d"):
        reg.register('norecord', '1.0.0', NoRecord(torch.nn.Conv2d(1, 2, 3)))


def test_lazy_layers_not_sized_yet(tmp_path):
    "A lazy layer that has seen no batch has no values: recorded as lazy, and lazy again once loaded."
    from core_models.architectures import BaseArchitecture
    from core_models.heads import ClassificationHead

    class LazyHead(BaseArchitecture):
        def __init__(self, config):
            super().__init__(); self.body = ConvBlock(config); self.head = ClassificationHead(config)
        def forward(self, x): return self.head(self.body(x))
    reg = ModelRegistry(tmp_path/'registry')
    m = LazyHead({'in_channels': 1, 'out_channels': 4, 'num_classes': 3})
    mv = reg.register('lazy', '1.0.0', m)
    assert mv.weights['lazy'] == ['head.fc.weight', 'head.fc.bias']
    loaded = reg.load('lazy', '1.0.0')
    assert torch.nn.parameter.is_lazy(loaded.head.fc.weight) and torch.equal(loaded.body.conv.weight, m.body.conv.weight)
    x = torch.randn(2, 1, 8, 8)
    m(x)  # sized now: a new version holds every tensor, and loads back to the same outputs
    mv2 = reg.register('lazy', '1.1.0', m)
    assert 'lazy' not in mv2.weights
    with torch.no_grad(): assert torch.equal(reg.load('lazy', '1.1.0')(x), m.eval()(x))


# -- side effects in git: only the registry's own files, printed ----------------------------------------------

def test_register_in_git_commits_only_its_files_and_says_so(tmp_path, capsys):
    repo = tmp_path/'repo'
    repo.mkdir()
    sh('git', 'init', '-q', '-b', 'main', cwd=repo)
    sh('git', 'config', 'user.email', 'test@example.com', cwd=repo); sh('git', 'config', 'user.name', 'Test', cwd=repo)
    (repo/'README.md').write_text('# project\n'); sh('git', 'add', 'README.md', cwd=repo); sh('git', 'commit', '-qm', 'init', cwd=repo)
    (repo/'notes.txt').write_text('work in progress\n'); sh('git', 'add', 'notes.txt', cwd=repo)  # the user's staged work
    (repo/'README.md').write_text('# project, edited\n')  # and an unstaged edit

    reg = ModelRegistry(repo/'registry')
    capsys.readouterr()
    reg.register('tiny', '1.0.0', tiny(0), tags=['baseline'])
    out = capsys.readouterr().out
    head = sh('git', 'rev-parse', '--short', 'HEAD', cwd=repo).strip()
    assert f'registry: git commit {head} ' in out and f'registry: git tag tiny@v1.0.0 -> {head}' in out, out
    committed = sh('git', 'show', '--name-only', '--format=', 'HEAD', cwd=repo).split()
    assert 'notes.txt' not in committed and 'README.md' not in committed
    assert all(f.startswith('registry/') for f in committed), committed
    assert sh('git', 'diff', '--cached', '--name-only', cwd=repo).split() == ['notes.txt']  # still staged, not committed
    assert sh('git', 'diff', '--name-only', cwd=repo).split() == ['README.md']  # still an unstaged edit
    assert sh('git', 'tag', '--points-at', 'HEAD', cwd=repo).split() == ['tiny@v1.0.0']

    reg.promote('tiny', '1.0.0', 'production')
    out = capsys.readouterr().out
    assert "registry: git commit" in out and 'Promote tiny v1.0.0 to production' in out and 'registry: git tag tiny#production#1 -> ' in out, out
    assert sh('git', 'diff', '--cached', '--name-only', cwd=repo).split() == ['notes.txt']

    plain = ModelRegistry(repo/'registry', git=False)  # the documented way to register without committing
    plain.register('tiny', '1.1.0', tiny(1))
    assert capsys.readouterr().out == '' and plain.repo is None
    assert sh('git', 'rev-parse', '--short', 'HEAD', cwd=repo).strip() != head  # (the promote commit)
    assert 'registry/tiny/1.1.0/' in sh('git', 'status', '--porcelain', '--untracked-files=all', cwd=repo)  # written, not committed
    assert 'tiny@v1.1.0' not in sh('git', 'tag', cwd=repo).split()


def test_a_refused_commit_leaves_nothing_visible_and_registering_again_finishes(tmp_path):
    "A pre-commit hook that says no: the version's files are written, but until its commit and tag it is not listed."
    repo = tmp_path/'repo'
    repo.mkdir()
    sh('git', 'init', '-q', '-b', 'main', cwd=repo)
    sh('git', 'config', 'user.email', 'test@example.com', cwd=repo); sh('git', 'config', 'user.name', 'Test', cwd=repo)
    (repo/'README.md').write_text('# project\n'); sh('git', 'add', 'README.md', cwd=repo); sh('git', 'commit', '-qm', 'init', cwd=repo)
    reg = ModelRegistry(repo/'registry')
    reg.register('tiny', '1.0.0', tiny(0))
    hook = repo/'.git'/'hooks'/'pre-commit'
    hook.write_text('#!/bin/sh\necho "no commits today" >&2\nexit 1\n'); hook.chmod(0o755)
    with pytest.raises(RegistryError, match='no commits today'): reg.register('tiny', '1.1.0', tiny(1))
    assert (reg.root/'tiny'/'1.1.0'/'meta.json').is_file() and (reg.root/'tiny'/'1.1.0'/'.registering').is_file()
    with pytest.warns(Warning, match='interrupted registration'):
        assert [mv.version for mv in reg.versions('tiny')] == ['1.0.0'] and reg.get('tiny').version == '1.0.0'
    assert [(e.version, e.pending) for e in reg.damaged('tiny')] == [('1.1.0', True)]
    with pytest.raises(RegistryError, match="tiny 1.1.0 can't be read: .*register the same version again"):
        reg.load('tiny', '1.1.0')
    hook.unlink()
    mv = reg.register('tiny', '1.1.0', tiny(1))  # the same registration again: committed, tagged, visible
    assert mv.version == '1.1.0' and reg.get('tiny').version == '1.1.0' and reg.damaged() == []
    assert 'tiny@v1.1.0' in sh('git', 'tag', cwd=repo).split() and not (reg.root/'tiny'/'1.1.0'/'.registering').exists()
    assert same_weights(reg.load('tiny'), tiny(1))
    assert not (reg.root/'.git-op').exists() and sh('git', 'status', '--porcelain', '--', 'registry', cwd=repo) == ''
