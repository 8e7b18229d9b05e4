"""A run that goes nan stops with the step and the cause, and never lets best.json (or last.json) point at a nan model;
`skip_nonfinite=True` trains through bad batches. Real training on 64 digits at 8 px: well under a second a run."""
import json, math
import pytest, torch
from torch.utils.data import Subset
from core_models import create_model
from core_models.data import DigitsDataset
from core_models.training import Trainer, TrainConfig, Callback, NonFiniteError
from core_models.versioning.checkpoint import load_checkpoint, nonfinite_tensors
pytestmark = pytest.mark.usefixtures('one_thread')  # tests/conftest.py: one torch thread per test, restored



@pytest.fixture(scope='module')
def digits(): return Subset(DigitsDataset('train', size=8), range(64))


def model():
    torch.manual_seed(0)
    return create_model('cnn', backbone='simple_cnn', in_chans=1, num_classes=10)


class LrTypo(Callback):
    "After epoch `n`, the constant schedule's learning rate becomes 1e9."
    def __init__(self, n=1): self.n = n
    def on_epoch_end(self, trainer, epoch, metrics):
        if epoch == self.n: trainer.scheduler.base_lrs = [1e9] * len(trainer.scheduler.base_lrs)


def test_divergence_keeps_the_last_finite_checkpoint_as_best_and_last(digits, tmp_path):
    cfg = TrainConfig(epochs=4, batch_size=16, schedule='constant', checkpoint_dir=tmp_path/'ck', progress=False)
    t = Trainer(model(), digits, digits, config=cfg, callbacks=[LrTypo(2)])
    with pytest.raises(NonFiniteError, match=r'at epoch 3, step \d+ \(batch \d of 4\).*the best checkpoint is still') as e:
        t.fit()
    assert 'Likely cause: the learning rate' in str(e.value)
    assert [r['epoch'] for r in t.history] == [1, 2]
    for pointer in ('best.json', 'last.json'):
        name = json.loads((tmp_path/'ck'/pointer).read_text())['path']
        assert name in ('epoch_0001', 'epoch_0002'), (pointer, name)
        fresh = model()
        load_checkpoint(tmp_path/'ck'/name, fresh)
        assert nonfinite_tensors(fresh) == {}
    assert t.load_best() is not None and nonfinite_tensors(t.model) == {}


def test_skip_nonfinite_trains_through_nan_batches(digits):
    class WithNaNs(torch.utils.data.Dataset):
        def __len__(self): return len(digits)
        def __getitem__(self, i):
            x, y = digits[i]
            return (torch.full_like(x, math.nan) if i in (3, 40) else x), y
    t = Trainer(model(), WithNaNs(), digits, config=TrainConfig(epochs=2, batch_size=16, skip_nonfinite=True, progress=False))
    history = t.fit()
    assert [r['epoch'] for r in history] == [1, 2]
    assert all(1 <= r['skipped_steps'] <= 2 for r in history), history
    assert all(math.isfinite(r['train_loss']) and math.isfinite(r['val_loss']) for r in history)
    assert nonfinite_tensors(t.model) == {}  # BatchNorm's statistics too: put back after each skipped batch


def test_the_same_data_without_the_policy_stops_at_the_first_nan_batch(digits):
    class OneNaN(torch.utils.data.Dataset):
        def __len__(self): return len(digits)
        def __getitem__(self, i):
            x, y = digits[i]
            return (torch.full_like(x, math.inf) if i == 3 else x), y
    t = Trainer(model(), OneNaN(), config=TrainConfig(epochs=1, batch_size=16, progress=False))
    with pytest.raises(NonFiniteError, match=r"epoch 1, step \d \(batch \d of 4\); stopped before updating the weights\. "
                                             r"Likely cause: the data: this batch's images hold 64 nan/inf values"):
        t.fit()
    assert t.history == []
