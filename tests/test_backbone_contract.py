"""timm's model contract on every backbone family, and the family convention (variants as data): what code written
for timm or torchvision relies on, checked on one small variant of each family."""
import warnings
import pytest, torch, torchvision
from core_models.backbones import (create_backbone, get_backbone_entry, list_backbones, register_backbone,
                                   RESNET_VARIANTS, VIT_VARIANTS, EFFICIENTNET_VARIANTS)
from core_models.testing import max_abs_diff

SMALL = {'resnet18': {}, 'vit_tiny_16': dict(img_size=32, depth=4), 'efficientnet_b0': {}, 'simple_cnn': {}}
x32 = lambda: torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def build(name, **kw):
    torch.manual_seed(0)
    return create_backbone(name, **{**SMALL[name], **kw}).eval()


@pytest.mark.parametrize('name', SMALL)
def test_feature_info_describes_exactly_the_returned_maps(name):
    full = build(name).all_feature_info
    idx = (1, len(full) - 1)
    m = build(name, features_only=True, out_indices=idx)
    with torch.no_grad(): maps = m(x32())
    assert m.feature_info.channels() == [full[i]['num_chs'] for i in idx] == [f.shape[1] for f in maps]
    assert m.feature_info.reduction() == [full[i]['reduction'] for i in idx]


@pytest.mark.parametrize('name', SMALL)
def test_reset_classifier_takes_global_pool(name):
    m = build(name, num_classes=3)
    m.reset_classifier(5, 'avg')
    with torch.no_grad(): assert m(x32()).shape == (2, 5)
    with pytest.raises(ValueError, match="global_pool to be one of"): m.reset_classifier(5, 'nope')
    m.reset_classifier(0)
    with torch.no_grad(): assert m(x32()).shape == (2, m.num_features)


def test_vit_global_pool_switches_the_pooling():
    m = build('vit_tiny_16', num_classes=0)
    x = x32()
    with torch.no_grad():
        tokens = m.forward_features(x)
        m.reset_classifier(0, 'avg')
        assert max_abs_diff(m(x), tokens[:, 1:].mean(1)) <= 1e-6


@pytest.mark.parametrize('name', SMALL)
def test_forward_intermediates(name):
    m = build(name, num_classes=4)
    x = x32()
    with torch.no_grad():
        final, inter = m.forward_intermediates(x, indices=2)
        stages = m.forward_stages(x)
        assert max_abs_diff(inter, stages[-2:]) == 0 and max_abs_diff(final, m.forward_features(x)) <= 1e-6
        assert len(m.forward_intermediates(x, indices=[0, -1], intermediates_only=True)) == 2
    with pytest.raises(ValueError, match='expected indices'): m.forward_intermediates(x, indices=[99])


@pytest.mark.parametrize('name', SMALL)
def test_parameter_groups(name):
    "layer_ids numbers every parameter: stem 0, blocks in order, the head last; group_matcher is timm's shape."
    m = build(name, num_classes=3)
    ids = m.layer_ids()
    assert set(ids) == {n for n, _ in m.named_parameters()}
    assert min(ids.values()) == 0 and ids[next(n for n in ids if n.startswith(m.pretrained_cfg['classifier']))] == max(ids.values())
    assert set(m.group_matcher()) == {'stem', 'blocks'}
    assert max(m.layer_ids(coarse=True).values()) <= max(ids.values())  # one group per stage (equal when a stage is one block)
    assert m.no_weight_decay() <= set(ids)


def test_vit_no_weight_decay_names_its_embeddings():
    assert build('vit_tiny_16').no_weight_decay() == {'cls_token', 'pos_embed.pos_embed'}


@pytest.mark.parametrize('name', ['resnet50', 'vit_b_16', 'efficientnet_b3', 'efficientnet_v2_l'])
def test_pretrained_cfg_is_torchvisions_transform(name):
    "input size, mean/std, interpolation and crop of the variant are those of torchvision's default weights."
    cfg, t = get_backbone_entry(name).pretrained_cfg, torchvision.models.get_model_weights(name).DEFAULT.transforms()
    assert cfg['input_size'][1:] == (t.crop_size[0],) * 2 and cfg['interpolation'] == t.interpolation.value
    assert tuple(cfg['mean']) == tuple(t.mean) and tuple(cfg['std']) == tuple(t.std)
    assert cfg['crop_pct'] == pytest.approx(t.crop_size[0] / t.resize_size[0])
    assert cfg['torchvision'] == name and cfg['num_params'] == torchvision.models.get_model_weights(name).DEFAULT.meta['num_params']


def test_every_variant_is_a_row_of_its_family_table():
    tables = {'resnet': RESNET_VARIANTS, 'vit': VIT_VARIANTS, 'efficient': EFFICIENTNET_VARIANTS}
    for fam, table in tables.items():
        for n, v in table.items():
            e = get_backbone_entry(n)
            assert (e.family, e.variant) == (fam, v) and e.cls is not None
            assert e.config()['num_classes'] == 0  # the family's full config, without building a model


def test_vit_set_input_size_from_a_non_square_grid():
    torch.manual_seed(0)
    m = create_backbone('vit_tiny_16', img_size=(32, 48), depth=2, num_classes=3).eval()
    fresh = create_backbone('vit_tiny_16', img_size=(64, 96), depth=2, num_classes=3, weights=m.state_dict()).eval()
    m.set_input_size((64, 96))
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad(): assert max_abs_diff(m(x), fresh(x)) <= 1e-5
    assert m.pretrained_cfg['input_size'] == (3, 64, 96) and m.grid_size == (4, 6)


def test_registering_an_identical_builder_again_is_silent():
    e = get_backbone_entry('resnet18')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        register_backbone(name='resnet18', family=e.family, cls=e.cls, variant=e.variant)(e.builder)
    assert get_backbone_entry('resnet18').builder is e.builder and 'resnet18' in list_backbones()
