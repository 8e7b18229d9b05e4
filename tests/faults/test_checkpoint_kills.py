"""Kill a CheckpointManager mid-save with SIGKILL, at the steps that leave something behind and at random moments: the
pointers always name complete checkpoints, and the next start (`resume`, which the Trainer calls) or save removes every
leftover (`.last.json.tmp-*`, `.best.json.tmp-*`, `.epoch_N.del-*`, `.epoch_N.tmp-*`). Writers are forked from this process
(no interpreter start-up), so each kill costs a fraction of a second."""
import json, multiprocessing, os, random, signal, sys, time
from pathlib import Path
import pytest, torch, torch.nn as nn
import core_models.versioning.checkpoint as ck
from core_models.versioning.checkpoint import CheckpointManager, load_checkpoint, verify_checkpoint

pytestmark = [pytest.mark.skipif(sys.platform != 'linux', reason='forked writers and SIGKILL (Linux)'),
              pytest.mark.usefixtures('one_thread')]  # tests/conftest.py: one torch thread per test, restored
fork = multiprocessing.get_context('fork')


def net(width=16) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(width, width), nn.Linear(width, 2))


def hidden(root:Path) -> list[str]: return sorted(p.name for p in root.iterdir() if p.name.startswith('.'))


def die(): os.kill(os.getpid(), signal.SIGKILL)


def writer(root:str, epoch:int, point:str):
    "Child: save `epoch` (the new best, so the older ones are deleted), SIGKILLing itself at `point`."
    replace, rename, remove = os.replace, os.rename, ck._remove_tree
    def replace_or_die(src, dst):  # a pointer file is written to a temporary, then replaces last.json / best.json
        if Path(src).name.startswith(point): die()
        replace(src, dst)
    def rename_or_die(src, dst):  # a checkpoint folder is written to a temporary, then renamed
        if Path(src).name.startswith(point): die()
        rename(src, dst)
    def remove_or_die(p):  # a checkpoint no longer kept is renamed to .epoch_N.del-*, then removed
        if p.name.startswith('.epoch_') and '.del-' in p.name:
            if point == 'half-deleted': next(p.iterdir()).unlink()
            die()
        remove(p)
    os.replace, os.rename, ck._remove_tree = replace_or_die, rename_or_die, remove_or_die
    CheckpointManager(root, keep_last=1, keep_best=1).save(net(), None, epoch, {'val_loss': 0.1})
    os._exit(0)  # the point was not reached


def check_pointers(mgr:CheckpointManager, width:int=16):
    "last.json and best.json name complete checkpoints that verify and load."
    for p in (mgr.last_path, mgr.best_path):
        assert p is not None and p.name.startswith('epoch_'), p
        verify_checkpoint(p)
        load_checkpoint(p, net(width))


@pytest.mark.parametrize('point,left', [('.epoch_0003.tmp-', '.epoch_0003.tmp-'), ('.last.json.tmp-', '.last.json.tmp-'),
                                        ('.best.json.tmp-', '.best.json.tmp-'), ('deleting', '.epoch_0001.del-'),
                                        ('half-deleted', '.epoch_0001.del-')])
def test_killed_at_a_step_that_leaves_a_leftover(tmp_path, point, left):
    root = tmp_path/'run'
    mgr = CheckpointManager(root, keep_last=1, keep_best=1)
    mgr.save(net(), None, 1, {'val_loss': 0.5})
    mgr.save(net(), None, 2, {'val_loss': 0.9})  # kept as last; epoch 1 kept as best
    child = fork.Process(target=writer, args=(str(root), 3, point))
    child.start(); child.join(30)
    assert child.exitcode == -signal.SIGKILL, f'the writer did not reach {point!r}'
    assert any(n.startswith(left) for n in hidden(root)), hidden(root)
    check_pointers(CheckpointManager(root))
    fresh = CheckpointManager(root, keep_last=1, keep_best=1)
    fresh.resume(net())  # the next start
    assert hidden(root) == []
    check_pointers(fresh)
    fresh.save(net(), None, 4, {'val_loss': 0.05})
    assert hidden(root) == [] and sorted(p.name for p in root.iterdir()) == ['best.json', 'epoch_0004', 'last.json']


def looping_writer(root:str, start:int, ready):
    "Child: save epochs start, start+1, ... with alternating metrics, until killed."
    model = net(256)  # ~260 kB a checkpoint: a save takes long enough for kills to land inside it
    mgr = CheckpointManager(root, keep_last=2, keep_best=1)
    ready.set()
    for epoch in range(start, start + 10_000):
        mgr.save(model, None, epoch, {'val_loss': 1.0 / epoch if epoch % 3 else 2.0})
    os._exit(0)


def test_killed_at_random_moments(tmp_path):
    root, rng, start = tmp_path/'run', random.Random(0), 1
    kills, mid = 6, 0
    for _ in range(kills):
        ready = fork.Event()
        child = fork.Process(target=looping_writer, args=(str(root), start, ready))
        child.start()
        assert ready.wait(30)
        time.sleep(rng.uniform(0.05, 0.4))
        os.kill(child.pid, signal.SIGKILL); child.join(30)
        assert child.exitcode == -signal.SIGKILL
        mid += bool(hidden(root))
        mgr = CheckpointManager(root, keep_last=2, keep_best=1)
        if mgr.last_path is not None:
            check_pointers(mgr, 256)
            start = json.loads((root/'last.json').read_text())['epoch'] + 1
    mgr = CheckpointManager(root, keep_last=2, keep_best=1)
    mgr.save(net(256), None, start, {'val_loss': 0.5})
    assert hidden(root) == []
    check_pointers(mgr, 256)
    assert start > 1, "no save completed between the kills"
    print(f"{mid} of {kills} kills left leftovers")


def test_trainer_start_cleans_what_a_killed_run_left(tmp_path):
    "The leftovers of a dead writer in a Trainer's checkpoint_dir are gone once the next run starts."
    from torch.utils.data import Subset
    from core_models import create_model
    from core_models.data import DigitsDataset
    from core_models.training import Trainer, TrainConfig
    root = tmp_path/'ck'
    root.mkdir()
    dead = '999999-0badc0de'  # no process has this pid (pid_max is lower on most systems; the kill tests above use real ones)
    (root/f'.last.json.tmp-{dead}').write_text('{"pa'); (root/f'.best.json.tmp-{dead}').write_text('{')
    (root/f'.epoch_0002.del-{dead}').mkdir(); (root/f'.epoch_0003.tmp-{dead}').mkdir()
    torch.manual_seed(0)
    model = create_model('cnn', backbone='simple_cnn', in_chans=1, num_classes=10)
    Trainer(model, Subset(DigitsDataset('train', size=8), range(32)), config=TrainConfig(epochs=1, batch_size=16, checkpoint_dir=root, progress=False)).fit()
    assert hidden(root) == [] and sorted(p.name for p in root.iterdir()) == ['best.json', 'epoch_0001', 'last.json']
