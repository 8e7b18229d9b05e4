"""Model versions through git + DVC, end to end, in a temporary copy of the repo (real git, real DVC, real files).

repro -> commit -> release 1.0.0; change a parameter -> repro -> commit -> release 1.1.0; then every way back to
1.0.0: `git checkout digits-cnn@v1.0.0 && dvc checkout`, `ModelRegistry.load(name, "1.0.0")` from the newest
commit, and a fresh clone + `dvc pull` at the old tag. Tiny params (one epoch on 256 images) keep it short.
"""
import json, os, shutil, subprocess, sys
from pathlib import Path
import pytest, yaml
from safetensors.torch import load_file
from conftest import ROOT

BIN = Path(sys.executable).parent
NAME, WEIGHTS = 'digits-cnn', 'models/digits-cnn/model.safetensors'
ENV = {**os.environ, 'PATH': f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
       'GIT_AUTHOR_NAME': 'test', 'GIT_AUTHOR_EMAIL': 'test@example.com',
       'GIT_COMMITTER_NAME': 'test', 'GIT_COMMITTER_EMAIL': 'test@example.com'}
# what the pipeline needs from the work tree (committed or not): its definition, settings and the package sources
FILES = ['.dvc/config', '.dvc/.gitignore', '.dvcignore', '.gitignore', 'dvc.yaml', 'params.yaml', 'settings.ini', 'data/.gitignore']


def sh(*args, cwd, check=True):
    r = subprocess.run([str(a) for a in args], cwd=cwd, env=ENV, capture_output=True, text=True)
    if check and r.returncode: raise AssertionError(f"{' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return r


def dvc(*args, cwd, check=True): return sh(BIN/'dvc', *args, cwd=cwd, check=check)
def release(version, cwd, *extra, check=True): return sh(BIN/'core-models', 'release', NAME, version, *extra, cwd=cwd, check=check)


def set_params(repo:Path, **train):
    p = yaml.safe_load((repo/'params.yaml').read_text())
    p['train'].update(epochs=1, **train)
    p['data'].update(train_subset=256)
    (repo/'params.yaml').write_text(yaml.safe_dump(p, sort_keys=False))


def repro_and_commit(repo:Path, message:str):
    dvc('repro', cwd=repo)
    sh('git', 'add', '-A', cwd=repo)
    sh('git', 'commit', '-q', '-m', message, cwd=repo)
    return (repo/WEIGHTS).read_bytes()


@pytest.fixture(scope='module')
def versions(tmp_path_factory):
    "A fresh repo holding the pipeline, with releases 1.0.0 and 1.1.0 made from two committed runs."
    base = tmp_path_factory.mktemp('pipeline')
    repo = base/'repo'  # the default remote, ../core-models-dvc-storage, is then base/core-models-dvc-storage
    for f in FILES + [p.relative_to(ROOT).as_posix() for p in (ROOT/'core_models').rglob('*.py')]:
        (repo/f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT/f, repo/f)
    sh('git', 'init', '-q', '-b', 'main', cwd=repo)
    set_params(repo)
    sh('git', 'add', '-A', cwd=repo)
    sh('git', 'commit', '-q', '-m', 'The pipeline', cwd=repo)
    v1 = repro_and_commit(repo, 'Train digits-cnn')
    r = release('1.0.0', repo, check=False)
    assert r.returncode == 2 and 'not in the DVC remote' in r.stderr, r.stderr
    release('1.0.0', repo, '--push')
    set_params(repo, lr=0.01)
    v2 = repro_and_commit(repo, 'Train digits-cnn with lr 0.01')
    release('1.1.0', repo, '--push')
    return base, repo, v1, v2


def test_releases_tag_the_commit_that_holds_the_model(versions):
    base, repo, v1, v2 = versions
    assert v1 != v2
    assert sh('git', 'status', '--porcelain', cwd=repo).stdout == '', 'the pipeline or the release left files git sees'
    tags = sh('git', 'tag', '--list', cwd=repo).stdout.split()
    assert tags == [f'{NAME}@v1.0.0', f'{NAME}@v1.1.0']
    for tag in tags:
        # the tagged commit is the registry commit, whose parent holds the model: same dvc.lock, and only registry/ changed
        assert sh('git', 'show', f'{tag}:dvc.lock', cwd=repo).stdout == sh('git', 'show', f'{tag}~1:dvc.lock', cwd=repo).stdout
        changed = sh('git', 'diff', '--name-only', f'{tag}~1', tag, cwd=repo).stdout.split()
        assert changed and all(p.startswith('registry/') for p in changed), changed
        meta = json.loads(sh('git', 'show', f'{tag}:registry/{NAME}/{tag.split("@v")[1]}/meta.json', cwd=repo).stdout)
        assert meta['git_rev'] == sh('git', 'rev-parse', f'{tag}~1', cwd=repo).stdout.strip()
        assert 'test_accuracy' in meta['metrics']


def test_checkout_of_the_old_tag_restores_its_checkpoint_byte_for_byte(versions):
    base, repo, v1, v2 = versions
    try:
        sh('git', 'checkout', '-q', f'{NAME}@v1.0.0', cwd=repo)
        dvc('checkout', cwd=repo)
        assert (repo/WEIGHTS).read_bytes() == v1
        assert yaml.safe_load((repo/'params.yaml').read_text())['train']['lr'] == 0.003
    finally:
        sh('git', 'checkout', '-q', 'main', cwd=repo)
        dvc('checkout', cwd=repo)
    assert (repo/WEIGHTS).read_bytes() == v2


def test_registry_loads_the_old_version_from_the_newest_commit(versions):
    from core_models.versioning import ModelRegistry
    base, repo, v1, v2 = versions
    reg = ModelRegistry(repo/'registry')
    assert [mv.version for mv in reg.versions(NAME)] == ['1.0.0', '1.1.0']
    for version, data in (('1.0.0', v1), ('1.1.0', v2)):
        (base/'w.safetensors').write_bytes(data)
        want = load_file(base/'w.safetensors')
        got = reg.load(NAME, version).state_dict()
        assert set(want) <= set(got) and all((got[k] == want[k]).all() for k in want), version


def test_fresh_clone_pulls_the_old_version(versions):
    base, repo, v1, v2 = versions
    clone = base/'clone'  # a sibling of repo: the same relative default remote, no set-up
    sh('git', 'clone', '-q', repo, clone, cwd=base)
    sh('git', 'checkout', '-q', f'{NAME}@v1.0.0', cwd=clone)
    dvc('pull', 'train', cwd=clone)
    assert (clone/WEIGHTS).read_bytes() == v1
    from dvc import api as dvc_api
    art = dvc_api.artifacts_show(NAME, version='v1.0.0', repo=str(clone))
    assert art['path'] == 'models/digits-cnn'
    with dvc_api.open(f"{art['path']}/model.safetensors", repo=str(clone), rev=art['rev'], mode='rb') as f: assert f.read() == v1


def test_release_refuses_a_dirty_tree_and_an_existing_version_with_other_weights(versions):
    base, repo, v1, v2 = versions
    (repo/'notes.txt').write_text('work in progress\n')
    try:
        r = release('1.2.0', repo, check=False)
        assert r.returncode == 2 and 'uncommitted changes' in r.stderr and 'notes.txt' in r.stderr
    finally: (repo/'notes.txt').unlink()
    r = release('1.0.0', repo, check=False)  # HEAD holds the 1.1.0 weights
    assert r.returncode == 2 and 'already registered with a different' in r.stderr and 'Traceback' not in r.stderr


def test_dvc_exp_run_with_a_changed_parameter(versions):
    base, repo, v1, v2 = versions
    dvc('exp', 'run', '-S', 'train.lr=0.02', cwd=repo)
    shown = json.loads(dvc('exp', 'show', '--json', cwd=repo).stdout)
    lrs = [e['data']['params']['params.yaml']['data']['train']['lr'] for c in shown for e in (c.get('experiments') or []) for e in e['revs']]
    assert 0.02 in lrs
    # DVC leaves the last experiment applied in the work tree: its params and dvc.lock, nothing else
    assert sorted(sh('git', 'status', '--porcelain', cwd=repo).stdout.split()) == ['M', 'M', 'dvc.lock', 'params.yaml']
