"""Every registered ResNet variant is torchvision's: same parameters, same keys (through one map), same outputs, same init."""
import pytest, torch, torchvision
from core_models.backbones.base import create_backbone, list_backbones, get_backbone_entry
from core_models.backbones.resnet import ResNet, torchvision_resnet_keys
from core_models.testing import randomize_norms_
from fidelity import assert_meta_twin

VARIANTS = ['resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152', 'resnext50_32x4d', 'resnext101_32x8d',
            'resnext101_64x4d', 'wide_resnet50_2', 'wide_resnet101_2']


def torchvision_stages(m, x):
    x, out = m.maxpool(m.relu(m.bn1(m.conv1(x)))), []
    for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
        x = layer(x); out.append(x)
    return out


def test_registry_holds_every_variant_with_its_torchvision_twin():
    assert sorted(VARIANTS) == [n for n in list_backbones() if get_backbone_entry(n).family == 'resnet']
    for name in VARIANTS: assert get_backbone_entry(name).torchvision == name
    assert get_backbone_entry('resnet').name == 'resnet50'


@pytest.mark.parametrize('name', VARIANTS)
def test_params_and_keys_match_torchvision(name):
    "Built on the meta device (no memory): equal param counts, and torchvision's state_dict strict-loads through the map."
    assert_meta_twin(name)


@pytest.mark.parametrize('name', ['resnext50_32x4d', 'wide_resnet50_2'])
def test_outputs_match_torchvision(name):
    torch.manual_seed(0)
    theirs = randomize_norms_(torchvision.models.get_model(name)).eval()
    ours = create_backbone(name, num_classes=1000, weights=theirs.state_dict()).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max() <= 1e-5
        for a, b in zip(ours.forward_stages(x), torchvision_stages(theirs, x)):
            assert (a - b).abs().max() <= 1e-5


def test_dilated_resnet50_matches_torchvision():
    "torchvision's segmentation backbone: stages 3 and 4 dilated instead of strided (output stride 8)."
    torch.manual_seed(0)
    theirs = randomize_norms_(torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True])).eval()
    ours = create_backbone('resnet50', num_classes=1000, replace_stride_with_dilation=(False, True, True),
                           weights=theirs.state_dict()).eval()
    assert ours.feature_info.reduction() == [4, 8, 8, 8]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max() <= 1e-5
        for a, b in zip(ours.forward_stages(x), torchvision_stages(theirs, x)):
            assert a.shape == b.shape and (a - b).abs().max() <= 1e-5


@pytest.mark.parametrize('name,kw', [('resnext50_32x4d', {}), ('resnet50', {'zero_init_residual': True}),
                                     ('resnet34', {'zero_init_residual': True})])
def test_init_is_torchvisions_bit_for_bit(name, kw):
    torch.manual_seed(0); ours = create_backbone(name, num_classes=1000, **kw)
    torch.manual_seed(0); theirs = ours.convert_state_dict(torchvision.models.get_model(name, **kw).state_dict())
    for k, v in ours.state_dict().items(): assert torch.equal(v, theirs[k]), k


def test_resnet50_features():
    x = torch.randn(1, 3, 64, 64)
    m = create_backbone('resnet50', features_only=True)
    maps = m(x)
    assert [f.shape[1] for f in maps] == m.feature_info.channels() == [256, 512, 1024, 2048]
    assert [64 // f.shape[-1] for f in maps] == m.feature_info.reduction() == [4, 8, 16, 32]
    m = create_backbone('resnet50', features_only=True, out_indices=(1, 3))
    maps = m(x)
    assert [tuple(f.shape) for f in maps] == [(1, 512, 8, 8), (1, 2048, 2, 2)]
    assert m.feature_info_selected().channels() == [512, 2048] and m.feature_info_selected().reduction() == [8, 32]


def test_drop_path_grows_linearly_to_the_rate():
    m = create_backbone('resnet18', drop_path_rate=0.1)
    ps = [b.drop_path.config.p for s in m.stages for b in s]
    assert ps[0] == 0.0 and ps[-1] == pytest.approx(0.1)
    assert ps == pytest.approx([0.1 * i / 7 for i in range(8)])


def test_backward_reaches_every_parameter():
    m = create_backbone('resnet18', num_classes=5, stem_width=16, widths=(16, 32, 64, 128), layers=(1, 1, 1, 1))
    m(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_our_checkpoint_round_trips(tmp_path):
    src = create_backbone('resnet18', num_classes=10).eval()
    torch.save(src.state_dict(), tmp_path/'ours.pth')
    dst = create_backbone('resnet18', num_classes=10, weights=tmp_path/'ours.pth').eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad(): assert torch.equal(src(x), dst(x))


def test_key_map_examples():
    assert torchvision_resnet_keys('conv1.weight') == 'stem.conv.weight'
    assert torchvision_resnet_keys('bn1.num_batches_tracked') == 'stem.norm.num_batches_tracked'
    assert torchvision_resnet_keys('layer1.0.conv1.weight') == 'layer1.0.conv1.conv.weight'
    assert torchvision_resnet_keys('layer3.0.downsample.1.bias') == 'layer3.0.shortcut.norm.bias'
    assert torchvision_resnet_keys('fc.weight') == 'fc.weight'
