"""Every registered ViT variant is torchvision's (parameters, keys through one map, init), and runs on any size the patches tile."""
import pytest, torch, torch.nn as nn, torchvision
import torchvision.models.vision_transformer as tv_vit
from core_models.checks import ShapeError
from core_models.backbones.base import create_backbone, list_backbones, get_backbone_entry, load_weights, WeightsError
from core_models.backbones.vit import VisionTransformer, VIT_VARIANTS, PYRAMID_STRIDES
from fidelity import assert_meta_twin

TWINS = [n for n in VIT_VARIANTS if get_backbone_entry(n).torchvision]


def test_registry_holds_every_variant():
    assert list_backbones('vit*') == sorted(VIT_VARIANTS)
    assert TWINS == ['vit_b_16', 'vit_b_32', 'vit_l_16', 'vit_l_32', 'vit_h_14']
    for name in TWINS: assert get_backbone_entry(name).torchvision == name
    for name in ('vit_tiny_16', 'vit_small_16'): assert get_backbone_entry(name).torchvision is None
    assert get_backbone_entry('vit').name == 'vit_b_16'


@pytest.mark.parametrize('name', TWINS)
def test_params_and_keys_match_torchvision(name):
    "Built on the meta device (no memory): equal param counts, and torchvision's state_dict strict-loads through the map."
    assert_meta_twin(name)


def test_vit_h_14_default_weights_made_for_518_px_load_into_224():
    "torchvision's default vit_h_14 weights are for 518 px (a 37x37 grid): the map resamples them to our 16x16."
    with torch.device('meta'):
        theirs = torchvision.models.vit_h_14(image_size=518)
        ours = create_backbone('vit_h_14', num_classes=1000)
    sd = ours.convert_state_dict(theirs.state_dict())
    assert sd['pos_embed.pos_embed'].shape == (1, 1 + 16 * 16, 1280)
    ours.load_state_dict(sd, strict=True, assign=True)


def test_resampled_weights_match_torchvision_interpolate_embeddings():
    "A small torchvision ViT made for 64 px, loaded into ours for 32x48: the positions are torchvision's, resampled."
    torch.manual_seed(0)
    theirs = tv_vit.VisionTransformer(64, 16, num_layers=2, num_heads=3, hidden_dim=48, mlp_dim=96, num_classes=5)
    nn.init.normal_(theirs.heads.head.weight, std=0.1)
    theirs.eval()
    ours = VisionTransformer(img_size=32, depth=2, embed_dim=48, num_heads=3, mlp_dim=96, num_classes=5)
    load_weights(ours, theirs.state_dict()).eval()
    tv32 = tv_vit.VisionTransformer(32, 16, num_layers=2, num_heads=3, hidden_dim=48, mlp_dim=96, num_classes=5).eval()
    tv32.load_state_dict(tv_vit.interpolate_embeddings(32, 16, theirs.state_dict()))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(): assert (ours(x) - tv32(x)).abs().max() <= 1e-5


def test_fresh_model_is_initialised_as_torchvision():
    torch.manual_seed(0)
    ours = create_backbone('vit_tiny_16', num_classes=10, img_size=32)
    assert (ours.head.weight == 0).all() and (ours.head.bias == 0).all() and (ours.cls_token == 0).all()
    assert abs(ours.pos_embed.pos_embed.std().item() - 0.02) < 0.003
    ours.reset_classifier(3)
    assert ours.head.weight.shape == (3, 192) and (ours.head.weight == 0).all()


def test_forward_backward_non_square():
    "vit_tiny_16 on two 32x48 images: logits, finite, and every parameter gets a gradient."
    torch.manual_seed(0)
    m = create_backbone('vit_tiny_16', num_classes=7, img_size=32)
    nn.init.normal_(m.head.weight, std=0.02)
    x = torch.randn(2, 3, 32, 48)
    assert m.forward_features(x).shape == (2, 1 + 2 * 3, 192)
    out = m(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.square().sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_wrong_sizes_are_refused():
    m = create_backbone('vit_tiny_16', img_size=32)
    with pytest.raises(ShapeError, match=r'multiples of patch_size=16, got \(2, 3, 30, 48\)'): m(torch.randn(2, 3, 30, 48))
    with pytest.raises(ShapeError, match=r'expected input of shape \(B, 3, H, W\), got \(2, 1, 32, 48\)'): m(torch.randn(2, 1, 32, 48))


@pytest.mark.parametrize('out_indices', [None, (0, 2), (-1,)])
@pytest.mark.parametrize('pyramid', [False, True])
def test_features_match_feature_info(out_indices, pyramid):
    m = create_backbone('vit_tiny_16', img_size=32, features_only=True, out_indices=out_indices, feature_pyramid=pyramid,
                        depth=4).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad(): maps = m(x)
    info = m.feature_info_selected()
    assert len(maps) == len(info) == len(m.out_indices)
    assert m.feature_info == info, "timm's contract: feature_info describes exactly the returned maps"
    for f, i in zip(maps, info):
        assert f.shape == (2, i['num_chs'], 64 // i['reduction'], 96 // i['reduction'])
    assert m.all_feature_info.reduction() == (list(PYRAMID_STRIDES) if pyramid else [16] * 4)


def test_feature_levels_come_from_evenly_spaced_blocks():
    for name, blocks in [('vit_b_16', [2, 5, 8, 11]), ('vit_l_16', [5, 11, 17, 23]), ('vit_h_14', [7, 15, 23, 31])]:
        with torch.device('meta'): m = create_backbone(name)
        assert m.feature_info.module_name() == [f'blocks.{b}' for b in blocks]


def test_weights_load_with_other_in_chans_and_classes():
    "load_weights adapts the patch conv to 1 channel and leaves a fresh head for a new number of classes."
    src = create_backbone('vit_tiny_16', num_classes=10, img_size=32, depth=2)
    grey = create_backbone('vit_tiny_16', num_classes=4, in_chans=1, img_size=32, depth=2, weights=src.state_dict())
    torch.testing.assert_close(grey.patch_embed.proj.weight, src.patch_embed.proj.weight.sum(1, keepdim=True))
    assert grey(torch.randn(2, 1, 32, 32)).shape == (2, 4)
    with pytest.raises(WeightsError, match='missing'):
        create_backbone('vit_tiny_16', img_size=32, depth=3, weights=src.state_dict())


def test_config_round_trip():
    m = create_backbone('vit_small_16', img_size=(32, 48), num_classes=3, global_pool='avg')
    again = VisionTransformer.from_config(m.to_config())
    assert again.to_config() == m.to_config() and again.grid_size == (2, 3)
    assert m.default_cfg['input_size'] == (3, 32, 48) and m.default_cfg['classifier'] == 'head'
