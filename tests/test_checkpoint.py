"""Checkpoints under faults (core_models.versioning.checkpoint): killed writers, damaged files, hostile pickles, exact resume.

The crash tests use real processes: a child saves checkpoints and is SIGKILLed, by the parent at random moments or by
itself at chosen steps of the atomic swap. After every kill the checkpoint must load, verify, and hold weights that
belong to the epoch its meta.json names."""
import io, json, multiprocessing, os, pickle, random, signal, subprocess, sys, time, warnings
from pathlib import Path
import numpy as np
import pytest, torch, torch.nn as nn, torch.nn.functional as F
from core_models.versioning.checkpoint import (CheckpointError, CheckpointManager, save_checkpoint, load_checkpoint,
                                               verify_checkpoint, sha256_file, config_hash, git_info)

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(sys.platform == 'win32', reason='SIGKILL and POSIX rename semantics')


def hidden_siblings(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f'.{target.name}.'))


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- a writer killed at random moments ------------------------------------------------------------------------------

# 12 x Linear(1024, 1024) + SGD momentum: ~50 MB of weights and ~50 MB of optimizer state, so a save takes a few
# tenths of a second here and random kills land in every phase (writing, fsync, renames, cleanup). The writers are
# forked from this process (as tests/faults/test_checkpoint_kills.py's): a real process, SIGKILLed, without the ~4 s
# of a new interpreter importing torch before every kill.
fork = multiprocessing.get_context('fork')


def big_model() -> tuple[nn.Module, torch.optim.Optimizer]:
    model = nn.Sequential(*[nn.Linear(1024, 1024) for _ in range(12)])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 1024)).sum().backward(); opt.step()  # the optimizer holds momentum buffers to save
    return model, opt


def writer(model, opt, target:str, i:int, saved):
    "Child: save epochs i, i+1, ... (every tensor of epoch i holds the value i) until killed; `saved` is the last done."
    while True:
        with torch.no_grad():
            for p in model.parameters(): p.fill_(i)
        save_checkpoint(model, opt, i, {'i': i}, target)
        saved.value = i
        i += 1


def check_consistent(target: Path, model: nn.Module, opt) -> int:
    "Load (verifying every digest) and check that the weights are those of the epoch meta.json names."
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # a recovery from the .old sibling warns
        ck = load_checkpoint(target, model, opt)
    assert all(torch.all(p == ck.epoch) for p in model.parameters()), f'weights do not belong to epoch {ck.epoch}'
    assert ck.metrics == {'i': ck.epoch}
    return ck.epoch


def test_atomic_save_under_killed_writer(tmp_path, one_thread):
    target = tmp_path/'ckpt'/'v1.0.0'
    model, opt = big_model()
    with torch.no_grad():
        for p in model.parameters(): p.fill_(0)
    t0 = time.perf_counter()
    save_checkpoint(model, opt, 0, {'i': 0}, target)
    save_s = time.perf_counter() - t0  # kills land anywhere in the child's first two or three saves, however busy the machine
    rng, last, kills, mid_save = random.Random(0), 0, 8, 0
    for k in range(kills):
        saved = fork.Value('i', last)  # shared memory: what the child finished is readable after the kill
        child = fork.Process(target=writer, args=(model, opt, str(target), last + 1, saved))
        child.start()
        time.sleep(rng.uniform(0.0, 2.5 * save_s))
        os.kill(child.pid, signal.SIGKILL); child.join(30)
        assert child.exitcode == -signal.SIGKILL, child.exitcode
        completed = saved.value  # the last save the child reported finished
        mid_save += bool(hidden_siblings(target))
        epoch = check_consistent(target, model, opt)
        assert completed <= epoch <= completed + 1, (completed, epoch)  # a finished save is never lost
        last = epoch
    print(f'\n{kills} kills, {mid_save} left an unfinished save behind; last epoch {last}')
    # the next save by a live process completes and removes what the killed writers left
    with torch.no_grad():
        for p in model.parameters(): p.fill_(last + 1)
    save_checkpoint(model, opt, last + 1, {'i': last + 1}, target)
    assert hidden_siblings(target) == []
    assert check_consistent(target, model, opt) == last + 1


# -- a writer killed at each step of the swap -----------------------------------------------------------------------

SELF_KILLER = '''
import os, signal, sys, torch, torch.nn as nn
from core_models.versioning import checkpoint
target, point = sys.argv[1], sys.argv[2]
model = nn.Linear(4, 4)
with torch.no_grad(): model.weight.fill_(2); model.bias.fill_(2)
real_rename, calls = os.rename, []
def rename(src, dst):
    calls.append(src)
    if point == 'before_aside' and len(calls) == 1: os.kill(os.getpid(), signal.SIGKILL)
    real_rename(src, dst)
    if point == 'after_aside' and len(calls) == 1: os.kill(os.getpid(), signal.SIGKILL)
    if point == 'after_swap' and len(calls) == 2: os.kill(os.getpid(), signal.SIGKILL)
checkpoint.os.rename = rename
checkpoint.save_checkpoint(model, None, 2, {}, target)
'''


@pytest.mark.parametrize('point,expected_epoch,leftovers', [('before_aside', 1, ['tmp']), ('after_aside', 1, ['old', 'tmp']),
                                                           ('after_swap', 2, ['old'])])
def test_killed_at_each_step_of_the_swap(tmp_path, point, expected_epoch, leftovers):
    target = tmp_path/'v1'
    model = nn.Linear(4, 4)
    with torch.no_grad(): model.weight.fill_(1); model.bias.fill_(1)
    save_checkpoint(model, None, 1, {}, target)
    r = subprocess.run([sys.executable, '-c', SELF_KILLER, str(target), point], capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL, r.stderr
    left = hidden_siblings(target)
    assert [n.split('.')[2].split('-')[0] for n in left] == leftovers, left
    assert target.exists() == (point != 'after_aside')
    fresh = nn.Linear(4, 4)
    if point == 'after_aside':
        with pytest.warns(UserWarning, match='interrupted between its renames'): ck = load_checkpoint(target, fresh)
        assert ck.recovered_from is not None and ck.recovered_from.name == left[0]  # the previous one, not the .tmp
    else: ck = load_checkpoint(target, fresh)
    assert ck.epoch == expected_epoch and torch.all(fresh.weight == expected_epoch)
    save_checkpoint(model, None, 3, {}, target)  # the next save cleans up after the dead writer
    assert hidden_siblings(target) == [] and load_checkpoint(target).epoch == 3


def test_other_writers_live_temporaries_are_kept(tmp_path):
    "Only leftovers of dead processes are deleted: a concurrent writer's temporary folder is left alone."
    target = tmp_path/'v1'
    live = tmp_path/f'.v1.tmp-{os.getppid()}-abcd1234'
    live.mkdir()
    save_checkpoint(nn.Linear(2, 2), None, 1, {}, target)
    assert live.is_dir()


def test_refuses_to_replace_a_folder_that_is_not_a_checkpoint(tmp_path):
    target = tmp_path/'data'
    target.mkdir(); (target/'precious.csv').write_text('a,b\n')
    with pytest.raises(CheckpointError, match='not a checkpoint folder'): save_checkpoint(nn.Linear(2, 2), None, 1, {}, target)
    assert (target/'precious.csv').read_text() == 'a,b\n' and hidden_siblings(target) == []


# -- damaged files --------------------------------------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 8)).sum().backward(); opt.step()
    return save_checkpoint(model, opt, 5, {'val_loss': 0.5}, tmp_path/'ck'), model, opt


@pytest.mark.parametrize('name', ['model.safetensors', 'training_state.pt'])
@pytest.mark.parametrize('damage', ['flip', 'truncate', 'append'])
def test_damaged_file_is_refused_naming_it(saved, name, damage):
    path, model, opt = saved
    f = path/name
    expected = json.loads((path/'meta.json').read_text())['files'][name]['sha256']
    data = bytearray(f.read_bytes())
    if damage == 'flip': data[len(data)//2] ^= 0x01
    elif damage == 'truncate': data = data[:len(data)//3]
    else: data += b'\0'
    f.write_bytes(bytes(data))
    actual = sha256_file(f)[0]
    for load in (lambda: load_checkpoint(path, model, opt), lambda: load_checkpoint(path), lambda: verify_checkpoint(path)):
        with pytest.raises(CheckpointError) as e: load()
        assert name in str(e.value) and expected in str(e.value) and actual in str(e.value)
    assert isinstance(e.value, ValueError)


def test_missing_file_and_bad_meta(saved):
    path, model, _ = saved
    meta = json.loads((path/'meta.json').read_text())
    (path/'training_state.pt').unlink()
    with pytest.raises(CheckpointError, match="training_state.pt' is missing"): load_checkpoint(path, model)
    meta['files']['../outside'] = meta['files'].pop('training_state.pt')  # only the known files, inside the folder
    (path/'meta.json').write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match='expected digests of'): load_checkpoint(path, model)
    (path/'meta.json').write_text('{"format": "core_models.checkpoint", ')
    with pytest.raises(CheckpointError, match='not valid JSON'): load_checkpoint(path, model)
    (path/'meta.json').unlink()
    with pytest.raises(CheckpointError, match='has no meta.json'): load_checkpoint(path, model)
    with pytest.raises(CheckpointError, match='no checkpoint at'): load_checkpoint(path.parent/'nowhere')


def test_weights_that_do_not_fit_the_model(saved):
    path, *_ = saved
    with pytest.raises(CheckpointError, match=r"missing \['3.weight'"):
        load_checkpoint(path, nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2), nn.Linear(2, 2)))
    with pytest.raises(CheckpointError, match='shapes differ'):
        load_checkpoint(path, nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)))
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2), nn.Linear(2, 2))
    load_checkpoint(path, m, strict=False)  # non-strict: what matches loads
    assert torch.equal(m[0].weight, load_checkpoint(path).state_dict['0.weight'])


# -- a pickle that would run code -----------------------------------------------------------------------------------

class Payload:
    "Unpickling this creates the marker file: what a hostile checkpoint would do."
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (open, (self.marker, 'w'))


@pytest.mark.parametrize('writer', ['pickle', 'torch.save'])
def test_pickle_payload_is_refused_and_not_run(saved, tmp_path, writer):
    path, model, opt = saved
    marker = tmp_path/'pwned'
    # the payload is live: plain unpickling runs it
    pickle.loads(pickle.dumps(Payload(marker))).close()
    assert marker.exists(); marker.unlink()
    buf = io.BytesIO()
    if writer == 'pickle': pickle.dump({'optimizer': Payload(marker)}, buf, protocol=2)
    else: torch.save({'optimizer': Payload(marker), 'rng': None}, buf)
    (path/'training_state.pt').write_bytes(buf.getvalue())
    meta = json.loads((path/'meta.json').read_text())
    digest, size = sha256_file(path/'training_state.pt')
    meta['files']['training_state.pt'] = {'sha256': digest, 'size': size}  # digests match: only the format can stop it
    (path/'meta.json').write_text(json.dumps(meta))
    verify_checkpoint(path)
    with pytest.raises(CheckpointError, match='nothing was executed') as e: load_checkpoint(path, model, opt)
    assert isinstance(e.value.__cause__, pickle.UnpicklingError)
    with pytest.raises(CheckpointError): load_checkpoint(path, model, restore_rng=True)
    assert not marker.exists()
    load_checkpoint(path, model)  # the weights alone never touch the pickle


# -- exact resume ---------------------------------------------------------------------------------------------------

def make_run(total_steps):
    torch.manual_seed(1234)  # the same initial weights for every run; the training RNG is seeded separately
    net = nn.Sequential(nn.Linear(6, 32), nn.BatchNorm1d(32), nn.GELU(), nn.Dropout(0.25), nn.Linear(32, 32),
                        nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 3))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=total_steps)
    scaler = torch.amp.GradScaler('cpu')
    return net, opt, sched, scaler


def train(net, opt, sched, scaler, steps):
    "Batches use all three generators: torch for inputs, numpy for a scale, python for a label shift."
    net.train()
    for _ in range(steps):
        x = torch.randn(16, 6) * float(np.random.uniform(0.5, 1.5))
        y = (x.sum(1) > random.uniform(-0.5, 0.5)).long() + (x[:, 0] > 1).long()
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        scaler.scale(loss).backward(); scaler.step(opt); scaler.update(); sched.step()
    return net


def seed(s):
    random.seed(s); np.random.seed(s); torch.manual_seed(s)


@pytest.mark.parametrize('n,m', [(5, 7), (1, 11)])
def test_resume_is_bit_exact(tmp_path, n, m):
    run = make_run(n + m)
    seed(0); straight = train(*run, n + m)
    run = make_run(n + m)
    seed(0); train(*run, n)
    save_checkpoint(run[0], run[1], n, {}, tmp_path/'ck', scheduler=run[2], scaler=run[3])
    seed(99); torch.rand(1000); np.random.rand(10); random.random()  # whatever happens after the save must not matter
    net, opt, sched, scaler = make_run(n + m)
    ck = load_checkpoint(tmp_path/'ck', net, opt, sched, scaler, restore_rng=True)
    resumed = train(net, opt, sched, scaler, m)
    assert ck.epoch == n and sched.last_epoch == n + m
    assert same_weights(resumed.state_dict(), straight.state_dict())  # parameters and BatchNorm buffers
    assert all(torch.equal(a, b) for a, b in zip(resumed.parameters(), straight.parameters()))


def test_resume_without_rng_differs(tmp_path):
    run = make_run(8)
    seed(0); straight = train(*run, 8)
    run = make_run(8)
    seed(0); train(*run, 4)
    save_checkpoint(run[0], run[1], 4, {}, tmp_path/'ck', scheduler=run[2], scaler=run[3])
    net, opt, sched, scaler = make_run(8)
    load_checkpoint(tmp_path/'ck', net, opt, sched, scaler)
    assert not same_weights(train(net, opt, sched, scaler, 4).state_dict(), straight.state_dict())


def test_resume_in_a_new_process(tmp_path):
    "Save in one interpreter, resume in another: the same result as training straight through."
    code = f'''
import sys, torch
torch.set_num_threads({torch.get_num_threads()})  # the same reductions as the straight run below, in this process
sys.path.insert(0, {str(ROOT/'tests')!r})
from test_checkpoint import make_run, train, seed, save_checkpoint, load_checkpoint
from safetensors.torch import save_file
run = make_run(10)
if sys.argv[1] == 'first':
    seed(0); train(*run, 4)
    save_checkpoint(run[0], run[1], 4, {{}}, 'ck', scheduler=run[2], scaler=run[3])
else:
    load_checkpoint('ck', *run, restore_rng=True)
    save_file(train(*run, 6).state_dict(), 'resumed.safetensors')
'''
    for stage in ('first', 'second'):
        r = subprocess.run([sys.executable, '-c', code, stage], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
    from safetensors.torch import load_file
    run = make_run(10)
    seed(0); straight = train(*run, 10)
    assert same_weights(load_file(tmp_path/'resumed.safetensors'), straight.state_dict())


def test_tied_weights_round_trip(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4); self.out = nn.Linear(4, 10, bias=False)
            self.out.weight = self.emb.weight
    m = Tied()
    p = save_checkpoint(m, None, 0, {}, tmp_path/'tied')
    meta = json.loads((p/'meta.json').read_text())
    assert meta['model']['tied'] and meta['model']['num_tensors'] == 1
    fresh = Tied()
    load_checkpoint(p, fresh)  # strict: the removed alias counts as present through the tie
    assert torch.equal(fresh.out.weight, m.emb.weight) and fresh.out.weight is fresh.emb.weight
    assert list(load_checkpoint(p).state_dict) == ['emb.weight']


def test_state_dict_comes_back_in_the_models_order(tmp_path):
    "safetensors' loader returns names in hash-map order; load_checkpoint restores the saved state_dict() order."
    m = nn.Sequential(*[nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)) for _ in range(12)])
    order = list(m.state_dict())
    loads = [list(load_checkpoint(save_checkpoint(m, path=tmp_path/f'ck{i}')).state_dict) for i in range(3)]
    assert loads == [order] * 3
    # a weights file without the recorded order (written by other tools) comes back sorted by name
    from safetensors.torch import save_file
    from core_models.versioning.checkpoint import WEIGHTS_NAME
    p = tmp_path/'ck0'
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, p/WEIGHTS_NAME, metadata={'format': 'pt'})
    meta = json.loads((p/'meta.json').read_text())
    digest, size = sha256_file(p/WEIGHTS_NAME)
    meta['files'][WEIGHTS_NAME] = {'sha256': digest, 'size': size}
    (p/'meta.json').write_text(json.dumps(meta))
    assert list(load_checkpoint(p).state_dict) == sorted(order)


# -- meta.json --------------------------------------------------------------------------------------------------------

def test_meta_is_readable_and_complete(saved):
    path, model, _ = saved
    text = (path/'meta.json').read_text()
    meta = json.loads(text)
    assert text == json.dumps(meta, indent=2, sort_keys=True) + '\n'
    assert {'format', 'format_version', 'created', 'epoch', 'metrics', 'config', 'config_hash', 'files', 'versions',
            'git', 'model', 'training_state', 'extra'} <= set(meta)
    assert meta['versions']['torch'] == torch.__version__ and meta['versions']['torchvision'] and meta['versions']['core_models']
    assert meta['training_state'] == {'optimizer': 'AdamW', 'scheduler': None, 'scaler': None}
    for name, entry in meta['files'].items(): assert (entry['sha256'], entry['size']) == sha256_file(path/name)


def test_git_revision_and_dirty_flag(tmp_path, monkeypatch):
    git = lambda *a: subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', *a], cwd=tmp_path, check=True, capture_output=True)
    monkeypatch.chdir(tmp_path)
    assert save_checkpoint(nn.Linear(2, 2), None, 0, {}, 'a') and json.loads(Path('a/meta.json').read_text())['git'] is None
    git('init', '-q'); (tmp_path/'f.txt').write_text('1'); git('add', 'f.txt'); git('commit', '-qm', 'x')
    rev = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert git_info() == {'revision': rev, 'dirty': False}
    (tmp_path/'f.txt').write_text('2')
    save_checkpoint(nn.Linear(2, 2), None, 0, {}, 'b', config={'lr': 0.1}, extra={'note': 'dirty tree'})
    meta = json.loads(Path('b/meta.json').read_text())
    assert meta['git'] == {'revision': rev, 'dirty': True}
    assert meta['config_hash'] == config_hash({'lr': 0.1}) and meta['extra'] == {'note': 'dirty tree'}


# -- CheckpointManager ------------------------------------------------------------------------------------------------

def test_manager_keeps_last_and_best(tmp_path):
    net = nn.Linear(3, 3)
    mgr = CheckpointManager(tmp_path/'run', keep_last=2, keep_best=2, monitor='acc', mode='max')
    accs = [0.5, 0.9, 0.6, 0.8, 0.7, 0.65]
    for ep, acc in enumerate(accs): mgr.save(net, None, ep, {'acc': acc})
    assert [c['epoch'] for c in mgr.checkpoints()] == [1, 3, 4, 5]
    assert mgr.best_path.name == 'epoch_0001' and mgr.last_path.name == 'epoch_0005'
    assert json.loads((mgr.root/'best.json').read_text())['value'] == 0.9
    mgr.save(net, None, 5, {'acc': 0.95})  # the same epoch again replaces it atomically and becomes the best
    assert mgr.best_path.name == 'epoch_0005' and [c['epoch'] for c in mgr.checkpoints()] == [1, 4, 5]  # best two: 5, 1
    assert not [p for p in mgr.root.iterdir() if p.name.startswith('.')]


def test_manager_without_monitor_and_bad_arguments(tmp_path):
    mgr = CheckpointManager(tmp_path/'run', keep_last=1, monitor=None)
    for ep in range(3): mgr.save(nn.Linear(2, 2), None, ep, {'loss': 1.0})
    assert [c['epoch'] for c in mgr.checkpoints()] == [2] and mgr.best_path is None
    (mgr.root/'last.json').unlink()
    assert mgr.last_path.name == 'epoch_0002'  # falls back to the highest epoch on disk
    with pytest.raises(ValueError, match='`mode`'): CheckpointManager(tmp_path, mode='lowest')
    with pytest.raises(ValueError, match='`keep_last`'): CheckpointManager(tmp_path, keep_last=0)


def test_manager_resume_checks_the_config(tmp_path):
    net = nn.Linear(3, 3)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    mgr = CheckpointManager(tmp_path/'run')
    assert mgr.resume(net, opt) is None
    mgr.save(net, opt, 1, {'val_loss': 1.0}, config={'lr': 0.1})
    assert mgr.resume(nn.Linear(3, 3), config={'lr': 0.1}).epoch == 1
    with pytest.raises(CheckpointError, match='was trained with config'): mgr.resume(nn.Linear(3, 3), config={'lr': 0.2})


def test_load_into_a_model_with_lazy_layers(tmp_path):
    "The seed's CustomModel has a head that learns its width from the first batch: a fresh one loads a checkpoint."
    from core_models.versioning.checkpoint import save_checkpoint, load_checkpoint
    from core_models.heads import ClassificationHead
    make = lambda: nn.Sequential(nn.Conv2d(3, 8, 3), ClassificationHead(num_classes=4))
    trained = make()
    x = torch.randn(2, 3, 8, 8)
    trained(x)  # materialise the lazy classifier
    save_checkpoint(trained, None, 1, {}, tmp_path/'ckpt')
    fresh = make()
    load_checkpoint(tmp_path/'ckpt', fresh)
    assert torch.equal(fresh(x), trained(x))
