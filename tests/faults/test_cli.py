"""The `core-models` console script on a user's mistakes: one message on stderr, exit code 2, no traceback
(unless --debug). Each case runs the real entry point in a fresh process, in a folder holding prepared digits."""
import os, shutil, subprocess, sys
from pathlib import Path
import pytest, yaml

ROOT = Path(__file__).resolve().parents[2]
CLI = Path(sys.executable).parent/'core-models'
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'CORE_MODELS_DEVICE': 'cpu'}


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp('cli')
    shutil.copy(ROOT/'settings.ini', d)
    p = yaml.safe_load((ROOT/'params.yaml').read_text())
    p['train'].update(epochs=1); p['data'].update(train_subset=32)
    (d/'params.yaml').write_text(yaml.safe_dump(p))
    r = subprocess.run([CLI, 'prepare', '--only', 'digits'], cwd=d, env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return d


def run(workdir, *args, params=None):
    if params is not None: (workdir/'bad.yaml').write_text(params if isinstance(params, str) else yaml.safe_dump(params))
    return subprocess.run([CLI, *args] + (['--params', 'bad.yaml'] if params is not None else []), cwd=workdir, env=ENV,
                          capture_output=True, text=True, timeout=300)


def changed(workdir, key, value) -> dict:
    p = yaml.safe_load((workdir/'params.yaml').read_text())
    section, _, field = key.partition('.')
    p[section][field] = value
    return p


CASES = [  # (what the user wrote, how to make it, words the one line must hold)
    ('params.yaml that is not YAML', lambda w: 'train:\n  lr: 0.01\n epochs: 3\n', ['bad.yaml', 'line 3', 'not valid YAML']),
    ('train.epochs: five', lambda w: changed(w, 'train.epochs', 'five'), ['`epochs`', 'expected an int', "'five'"]),
    ('data.train_subset: abc', lambda w: changed(w, 'data.train_subset', 'abc'), ['data.train_subset', "'abc'"]),
    ('model.backbone: resnet5', lambda w: changed(w, 'model.backbone', 'resnet5'), ["'resnet5'", 'resnet50']),
    ('data.name: mnist (never prepared)', lambda w: changed(w, 'data.name', 'mnist'), ['mnist', 'prepare']),
]


@pytest.mark.parametrize('what,make,words', CASES, ids=[c[0] for c in CASES])
def test_a_mistake_is_one_line_and_exit_2(workdir, what, make, words):
    r = run(workdir, 'train', '--out', 'm', '--live', 'l', params=make(workdir))
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('core-models train: '), r.stderr
    assert all(w in lines[0] for w in words), (words, lines[0])
    assert not (workdir/'m').exists()


def test_debug_shows_the_traceback(workdir):
    r = run(workdir, 'train', '--debug', '--out', 'm', '--live', 'l', params=changed(workdir, 'train.epochs', 'five'))
    assert r.returncode == 1 and 'Traceback' in r.stderr and 'ConfigError' in r.stderr


def test_metrics_before_any_run(workdir):
    r = run(workdir, 'metrics', '--eval', 'nowhere', '--live', 'nowhere')
    assert r.returncode == 2 and r.stderr.strip() == "core-models metrics: no metrics in 'nowhere' or 'nowhere': run `dvc repro` first"
