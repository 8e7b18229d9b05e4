"""A full disk, for real: checkpoints are saved into a 1 MiB tmpfs. Every failure is one CheckpointWriteError (an OSError with
errno ENOSPC) naming the checkpoint and the file; what was there before still loads; nothing half-written stays behind, and the
space is given back. Skipped where tmpfs can't be mounted (not root, or a container without the capability)."""
import errno, json, os, shutil, subprocess, sys
from pathlib import Path
import pytest, torch, torch.nn as nn
from core_models.versioning.checkpoint import (CheckpointManager, CheckpointWriteError, save_checkpoint, load_checkpoint,
                                               verify_checkpoint)
pytestmark = pytest.mark.usefixtures('one_thread')  # tests/conftest.py: one torch thread per test, restored



@pytest.fixture
def full_disk(tmp_path):
    "A 1 MiB tmpfs, unmounted afterwards."
    mnt = tmp_path/'tmpfs'
    mnt.mkdir()
    if sys.platform != 'linux' or shutil.which('mount') is None: pytest.skip('tmpfs needs Linux and mount(8)')
    r = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', str(mnt)], capture_output=True, text=True)
    if r.returncode: pytest.skip(f'cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}')
    try: yield mnt
    finally: subprocess.run(['umount', str(mnt)], capture_output=True)


def net(width:int) -> nn.Module: return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 4))


def hidden(folder:Path) -> list[str]: return sorted(p.name for p in folder.rglob('.*'))


def free(folder:Path) -> int: return shutil.disk_usage(folder).free


def test_save_over_a_checkpoint_on_a_full_disk(full_disk):
    small, big = net(32), net(512)  # ~20 kB of weights, then ~1 MB, which can't fit
    target = full_disk/'ckpt'
    save_checkpoint(small, None, 1, {'val_loss': 0.5}, target)
    before = free(full_disk)
    with pytest.raises(CheckpointWriteError) as e:
        save_checkpoint(big, torch.optim.SGD(big.parameters(), lr=0.1, momentum=0.9), 2, {'val_loss': 0.4}, target)
    msg = str(e.value)
    assert e.value.errno == errno.ENOSPC and isinstance(e.value, OSError)
    assert f"could not write the checkpoint {str(target)!r}: No space left on device while writing" in msg, msg
    assert 'what was at that path before is unchanged' in msg and 'free some space' in msg, msg
    assert Path(e.value.filename).name in ('model.safetensors', 'training_state.pt', 'meta.json')
    assert verify_checkpoint(target)['epoch'] == 1 and load_checkpoint(target, net(32)).epoch == 1
    assert hidden(full_disk) == [] and free(full_disk) >= before  # the temporary folder is gone, its space given back


def test_training_state_that_does_not_fit(full_disk):
    "Weights that fit (410 kB) and an Adam state that doesn't (820 kB): torch.save's own 'unexpected pos' becomes the same one error."
    model = net(320)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 320)).sum().backward(); opt.step()
    with pytest.raises(CheckpointWriteError, match='No space left on device while writing training_state.pt') as e:
        save_checkpoint(model, opt, 1, {}, full_disk/'a')
    assert e.value.errno == errno.ENOSPC and 'unexpected pos' in str(e.value.__cause__)
    assert list(full_disk.iterdir()) == []


def test_first_save_on_a_full_disk_leaves_no_folders(full_disk):
    with pytest.raises(CheckpointWriteError, match='No space left on device'):
        save_checkpoint(net(512), None, 1, {}, full_disk/'runs'/'exp1'/'epoch_0001')
    assert list(full_disk.iterdir()) == []


def test_manager_on_a_full_disk_keeps_its_pointers(full_disk):
    mgr = CheckpointManager(full_disk/'run', keep_last=1, monitor='val_loss')
    mgr.save(net(32), None, 1, {'val_loss': 0.5})
    last = (full_disk/'run'/'last.json').read_text()
    with pytest.raises(CheckpointWriteError, match="could not write the checkpoint .*epoch_0002"):
        mgr.save(net(512), None, 2, {'val_loss': 0.1})
    assert (full_disk/'run'/'last.json').read_text() == last
    assert [c['epoch'] for c in mgr.checkpoints()] == [1] and mgr.best_path.name == 'epoch_0001'
    assert hidden(full_disk) == []
    mgr.save(net(32), None, 2, {'val_loss': 0.4})  # space for a small one: the run goes on
    assert mgr.last_path.name == 'epoch_0002'
