"""Model versions through git + DVC, end to end, in copies of the project README.md's round trip leaves (real git,
real DVC, real files).

The README's commands (tests/conftest.py's `readme_journey`, run once a session from the README's own text) repro ->
commit -> release 1.0.0, run an experiment with lr 0.01 -> commit -> release 1.1.0. From there: the tags and the
registry commits they point at; every way back to 1.0.0: `git checkout digits-cnn@v1.0.0 && dvc checkout`,
`ModelRegistry.load(name, "1.0.0")` from the newest commit, and a fresh clone + `dvc pull` at the old tag; a release
refused for weights not in the remote, a dirty tree or an existing version; and the README's `dvc exp run -S`, as DVC
recorded it. A test that changes the project works on a copy of it (`copy_project`: git, the DVC cache and the remote).
"""
import hashlib, json, os, shutil, subprocess, sys
from pathlib import Path
import pytest, yaml
from safetensors.torch import load_file
from conftest import ROOT, copy_project, cli_in_process

BIN = Path(sys.executable).parent
NAME, WEIGHTS = 'digits-cnn', 'models/digits-cnn/model.safetensors'
# what the root pipeline needs from the work tree besides core_models/ (tests/test_timm_backbones.py builds a repo from it)
FILES = ['.dvc/config', '.dvc/.gitignore', '.dvcignore', '.gitignore', 'dvc.yaml', 'params.yaml', 'settings.ini', 'data/.gitignore']
ENV = {**os.environ, 'PATH': f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
       'GIT_AUTHOR_NAME': 'test', 'GIT_AUTHOR_EMAIL': 'test@example.com',
       'GIT_COMMITTER_NAME': 'test', 'GIT_COMMITTER_EMAIL': 'test@example.com'}


def sh(*args, cwd, check=True):
    r = subprocess.run([str(a) for a in args], cwd=cwd, env=ENV, capture_output=True, text=True)
    if check and r.returncode: raise AssertionError(f"{' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return r


def dvc(*args, cwd, check=True): return sh(BIN/'dvc', *args, cwd=cwd, check=check)
def release(version, cwd, *extra, check=True): return sh(BIN/'core-models', 'release', NAME, version, *extra, cwd=cwd, check=check)


def digest(data:bytes) -> str: return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope='module')
def versions(readme_journey):
    "The journey's project (read only here) and the sha256 of the model each release holds, as the README's run left them."
    repo = readme_journey.repo
    v1 = readme_journey.after(r'^make release NAME=digits-cnn VERSION=1\.0\.0')['model']
    v2 = readme_journey.after(r'^make release NAME=digits-cnn VERSION=1\.1\.0')['model']
    assert v1 and v2
    return readme_journey, repo, v1, v2


def model_at(repo:Path, rev:str) -> bytes:
    "The weights file of `rev` as DVC serves it (from the cache, else the remote), without touching the work tree."
    from dvc import api as dvc_api
    return dvc_api.read(WEIGHTS, repo=str(repo), rev=rev, mode='rb')


def test_releases_tag_the_commit_that_holds_the_model(versions):
    journey, repo, v1, v2 = versions
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


def test_checkout_of_the_old_tag_restores_its_checkpoint_byte_for_byte(versions, tmp_path):
    journey, _, v1, v2 = versions
    repo = copy_project(journey, tmp_path, remote=False)
    sh('git', 'checkout', '-q', f'{NAME}@v1.0.0', cwd=repo)
    dvc('checkout', cwd=repo)
    assert digest((repo/WEIGHTS).read_bytes()) == v1
    assert yaml.safe_load((repo/'params.yaml').read_text())['train']['lr'] == 0.003
    sh('git', 'checkout', '-q', 'main', cwd=repo)
    dvc('checkout', cwd=repo)
    assert digest((repo/WEIGHTS).read_bytes()) == v2
    assert sh('git', 'status', '--porcelain', cwd=repo).stdout == ''


def test_registry_loads_the_old_version_from_the_newest_commit(versions, tmp_path):
    from core_models.versioning import ModelRegistry
    journey, repo, v1, v2 = versions
    reg = ModelRegistry(repo/'registry')
    assert [mv.version for mv in reg.versions(NAME)] == ['1.0.0', '1.1.0']
    for version, sha in (('1.0.0', v1), ('1.1.0', v2)):
        data = model_at(repo, f'{NAME}@v{version}')
        assert digest(data) == sha, version  # the bytes the README's run trained for this version
        (tmp_path/'w.safetensors').write_bytes(data)
        want = load_file(tmp_path/'w.safetensors')
        got = reg.load(NAME, version).state_dict()
        assert set(want) <= set(got) and all((got[k] == want[k]).all() for k in want), version


def test_fresh_clone_pulls_the_old_version(versions, tmp_path):
    journey, _, v1, v2 = versions
    repo = copy_project(journey, tmp_path)
    clone = tmp_path/'clone'  # a sibling of repo: the same relative default remote, no set-up
    sh('git', 'clone', '-q', repo, clone, cwd=tmp_path)
    sh('git', 'checkout', '-q', f'{NAME}@v1.0.0', cwd=clone)
    dvc('pull', 'train', cwd=clone)
    assert digest((clone/WEIGHTS).read_bytes()) == v1
    from dvc import api as dvc_api
    art = dvc_api.artifacts_show(NAME, version='v1.0.0', repo=str(clone))
    assert art['path'] == 'models/digits-cnn'
    with dvc_api.open(f"{art['path']}/model.safetensors", repo=str(clone), rev=art['rev'], mode='rb') as f: assert digest(f.read()) == v1


def test_release_refuses_weights_not_in_the_remote_a_dirty_tree_and_an_existing_version(versions, tmp_path):
    journey, _, v1, v2 = versions
    repo = copy_project(journey, tmp_path/'no-remote', remote=False)  # the remote folder (../core-models-dvc-storage) is empty
    (tmp_path/'no-remote'/'core-models-dvc-storage').mkdir()
    r = cli_in_process('release', NAME, '1.2.0', cwd=repo)
    assert r.returncode == 2 and 'not in the DVC remote' in r.stderr, r.stderr
    repo = copy_project(journey, tmp_path/'pushed')
    (repo/'notes.txt').write_text('work in progress\n')
    r = cli_in_process('release', NAME, '1.2.0', cwd=repo)
    assert r.returncode == 2 and 'uncommitted changes' in r.stderr and 'notes.txt' in r.stderr
    (repo/'notes.txt').unlink()
    r = release('1.0.0', repo, check=False)  # HEAD holds the 1.1.0 weights (a real process: one line, no traceback)
    assert r.returncode == 2 and 'already registered with a different' in r.stderr and 'Traceback' not in r.stderr
    assert sh('git', 'tag', '--list', cwd=repo).stdout.split() == [f'{NAME}@v1.0.0', f'{NAME}@v1.1.0']  # nothing released


def test_the_readmes_experiment_is_recorded_beside_its_baseline(versions, tmp_path):
    "The README's `dvc exp run -S train.lr=0.01`: DVC records it under the commit it ran from (the 1.0.0 release) and leaves it applied."
    journey, _, v1, v2 = versions
    released, ran = journey.after(r'^make release NAME=digits-cnn VERSION=1\.0\.0'), journey.after(r'^dvc exp run -S train\.lr=0\.01')
    # DVC leaves the experiment applied in the work tree: its params and dvc.lock changed, nothing else; HEAD stays
    assert (ran['head'], ran['lr'], ran['changed'], ran['model']) == (released['head'], '0.01', 'dvc.lock,params.yaml', v2)
    repo = copy_project(journey, tmp_path, remote=False)  # `dvc exp show` takes locks in .dvc/tmp: not in the journey's own
    shown = json.loads(dvc('exp', 'show', '--json', '--all-commits', cwd=repo).stdout)
    lrs = {c['rev']: [r['data']['params']['params.yaml']['data']['train']['lr'] for e in (c.get('experiments') or []) for r in e['revs']]
           for c in shown}
    assert lrs[released['head']] == [0.01] and sum(map(len, lrs.values())) == 1, lrs
