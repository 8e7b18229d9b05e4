"""The fast inference path end to end: `evaluate` in bf16 (explicitly, so it runs on any CPU) against fp32 on a
trained-enough model, the auto choice, and the model left as it was found (fp32 weights, NCHW layout)."""
import pytest, torch, torch.nn as nn
from torch.utils.data import Subset
from core_models import create_model
from core_models.data import DigitsDataset
from core_models.precision import bf16_native, inference_context, inference_precision, inference_layout
from core_models.settings import seed_everything
from core_models.training import Trainer, TrainConfig, evaluate


@pytest.fixture(scope='module')
def digits_model():
    seed_everything(0)
    m = create_model('cnn', num_classes=10, in_chans=1, backbone={'name': 'simple_cnn', 'widths': [8, 16, 32]})
    train = Subset(DigitsDataset('train', size=16), range(512))
    Trainer(m, train, config=TrainConfig(epochs=3, batch_size=32, lr=3e-3, progress=False, device='cpu')).fit()
    return m, Subset(DigitsDataset('val', size=16), range(128))


def _conv_weight(m): return next(x.weight for x in m.modules() if isinstance(x, nn.Conv2d) and x.weight.shape[-1] > 1)


def test_evaluate_in_bf16_agrees_with_fp32_and_leaves_the_model_as_it_was(digits_model):
    m, val = digits_model
    ref = evaluate(m, val, batch_size=64, precision='fp32')
    fast = evaluate(m, val, batch_size=64, precision='bf16')
    assert ref['accuracy'] > 0.5, ref  # learnt something, so the agreement means something
    assert abs(fast['accuracy'] - ref['accuracy']) <= 2 / len(val), (ref, fast)
    assert abs(fast['loss'] - ref['loss']) < 0.05 * max(ref['loss'], 1e-3), (ref, fast)
    w = _conv_weight(m)
    assert w.dtype == torch.float32 and w.is_contiguous()  # channels-last only inside evaluate


def test_auto_follows_the_cpu(digits_model):
    m, val = digits_model
    want = 'bf16' if bf16_native() else 'fp32'
    assert inference_precision('cpu') == want
    auto = evaluate(m, val, batch_size=64)
    same = evaluate(m, val, batch_size=64, precision=want)
    assert auto['accuracy'] == same['accuracy'] and torch.equal(auto.metric.matrix, same.metric.matrix)


def test_inference_context_runs_matmuls_in_bf16_and_disables_autograd():
    lin = nn.Linear(8, 4)
    x = torch.randn(2, 8, requires_grad=True)
    with inference_context('cpu', 'bf16') as p: y = lin(x)
    assert p == 'bf16' and y.dtype == torch.bfloat16 and not y.requires_grad and torch.is_inference(y)
    with inference_context('cpu', 'fp32'): z = lin(x)
    assert z.dtype == torch.float32 and torch.equal(z, lin(x).detach())


def test_a_model_already_channels_last_stays_so():
    m = create_model('cnn', num_classes=3, backbone='resnet18').to(memory_format=torch.channels_last)
    with inference_layout(m, 'bf16') as cl: assert cl
    assert _conv_weight(m).is_contiguous(memory_format=torch.channels_last)
