"EfficientNet family vs torchvision, for every registered variant (meta device except the small models)."
import pytest, torch, torch.nn as nn, torchvision
from torchvision.ops import StochasticDepth
from core_models.backbones.base import create_backbone, list_backbones, get_backbone_entry
from core_models.backbones.efficient import EfficientNet, EFFICIENTNET_VARIANTS
from core_models.testing import count_params, randomize_norms_
from fidelity import assert_meta_twin

VARIANTS = list_backbones('efficientnet*')


def test_every_variant_registered():
    assert set(VARIANTS) == set(EFFICIENTNET_VARIANTS) and len(VARIANTS) == 11
    assert all(get_backbone_entry(n).torchvision == n for n in VARIANTS)
    assert get_backbone_entry('efficient_net').name == get_backbone_entry('efficientnet').name == 'efficientnet_b0'


@pytest.mark.parametrize('name', VARIANTS)
def test_params_and_keys_match_torchvision(name):
    "Built on the meta device (no memory): equal param counts (torchvision's weights meta too), and torchvision's state_dict strict-loads through the map."
    ours, _ = assert_meta_twin(name)
    assert count_params(ours) == torchvision.models.get_model_weights(name).DEFAULT.meta['num_params']


@pytest.mark.parametrize('name', VARIANTS)
def test_hyperparameters_module_by_module(name):
    with torch.device('meta'): ours, tv = create_backbone(name, num_classes=1000), torchvision.models.get_model(name)
    bn = lambda m: [(b.eps, b.momentum, b.num_features) for b in m.modules() if isinstance(b, nn.BatchNorm2d)]
    sd = lambda m: [(s.p, s.mode) for s in m.modules() if isinstance(s, StochasticDepth)]
    drop = lambda m: [d.p for d in m.modules() if isinstance(d, nn.Dropout)]
    acts = lambda m: [type(a) for a in m.modules() if isinstance(a, (nn.SiLU, nn.ReLU, nn.Sigmoid))]
    assert bn(ours) == bn(tv)
    assert sd(ours) == sd(tv)
    assert drop(ours) == drop(tv) and len(drop(ours)) == 1
    assert acts(ours) == acts(tv)
    assert ours.default_cfg['classifier'] == 'classifier.1' and ours.get_classifier().out_features == 1000


def test_v2_s_logits_match_torchvision():
    torch.manual_seed(0)
    tv = randomize_norms_(torchvision.models.efficientnet_v2_s()).eval()
    ours = create_backbone('efficientnet_v2_s', num_classes=1000, weights=tv.state_dict()).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(): diff = (ours(x) - tv(x)).abs().max().item()
    assert diff <= 1e-5, diff


@pytest.mark.parametrize('name,channels', [('efficientnet_b0', [16, 24, 40, 112, 320]),
                                           ('efficientnet_v2_s', [24, 48, 64, 160, 256])])
def test_features_only_agrees_with_feature_info(name, channels):
    m = create_backbone(name, features_only=True).eval()
    assert m.feature_info.channels() == channels and m.feature_info.reduction() == [2, 4, 8, 16, 32]
    with torch.no_grad(): maps = m(torch.randn(1, 3, 64, 64))
    assert [(f.shape[1], 64 // f.shape[-1]) for f in maps] == [(i['num_chs'], i['reduction']) for i in m.feature_info]
    sel = create_backbone(name, features_only=True, out_indices=(-2, -1)).eval()
    with torch.no_grad(): assert [f.shape[1] for f in sel(torch.randn(1, 3, 64, 64))] == channels[-2:]


def test_forward_features_is_head_conv():
    m = create_backbone('efficientnet_b0').eval()
    with torch.no_grad():
        assert m.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 1280, 2, 2)
        assert m(torch.randn(1, 3, 64, 64)).shape == (1, 1280)


def test_reset_classifier_and_config_round_trip():
    m = create_backbone('efficientnet_b0', num_classes=10)
    m.reset_classifier(3)
    assert isinstance(m.classifier[0], nn.Dropout) and m.classifier[1].out_features == 3
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    cfg = m.to_config()
    assert EfficientNet(cfg).to_config() == cfg
