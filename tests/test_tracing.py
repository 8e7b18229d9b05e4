"""The models are traceable and exportable, as timm's and torchvision's test batteries check theirs: torch.fx,
torchvision's create_feature_extractor (built on fx) and torch.export give the eager outputs (<= 1e-5), on one
variant of each backbone family (small inputs) and on the classification, segmentation and detection models.

Detection exports up to its raw head outputs (`head.forward_dense`): decoding (score threshold, NMS) keeps a
data-dependent number of boxes and stays the Python step (`head.predict(dense, sizes)`)."""
import pytest, torch, torch.nn as nn
from torchvision.models.feature_extraction import create_feature_extractor
from core_models import create_model
from core_models.backbones.base import create_backbone
from core_models.testing import max_abs_diff, randomize_norms_

FAMILIES = {'resnet18': {}, 'vit_tiny_16': dict(img_size=32, depth=4), 'efficientnet_b0': {}, 'simple_cnn': {}}


def backbone(name, **kw):
    torch.manual_seed(0)
    m = create_backbone(name, **{**FAMILIES[name], **kw})
    return randomize_norms_(m).eval()


def x32(): return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize('name', FAMILIES)
def test_fx_symbolic_trace_matches_eager(name):
    m, x = backbone(name, num_classes=5), x32()
    with torch.no_grad():
        assert max_abs_diff(torch.fx.symbolic_trace(m)(x), m(x)) <= 1e-5
        f = backbone(name, features_only=True, out_indices=(0, -1))
        assert max_abs_diff(torch.fx.symbolic_trace(f)(x), f(x)) <= 1e-5


@pytest.mark.parametrize('name', [n for n in FAMILIES if not n.startswith('vit')])  # a ViT's blocks give tokens: below
def test_create_feature_extractor_returns_the_feature_levels(name):
    "torchvision's FX feature extractor, asked for the modules `feature_info` names, gives `forward_stages`' maps."
    m, x = backbone(name), x32()
    nodes = {f['module']: str(i) for i, f in enumerate(m.all_feature_info)}
    fe = create_feature_extractor(m, return_nodes=nodes)
    with torch.no_grad():
        got, want = fe(x), m.forward_stages(x)
    assert max_abs_diff([got[str(i)] for i in range(len(want))], want) <= 1e-5


def test_create_feature_extractor_on_vit_blocks():
    m, x = backbone('vit_tiny_16'), x32()
    fe = create_feature_extractor(m, return_nodes={'blocks.3': 'last', 'norm': 'norm'})
    with torch.no_grad():
        out, maps = fe(x), m.forward_stages(x)
        assert max_abs_diff(out['norm'], m.forward_features(x)) <= 1e-5
        tokens = out['last'][:, 1:].transpose(1, 2).reshape(maps[-1].shape)  # the patch tokens of the last level, as a map
        assert max_abs_diff(tokens, maps[-1]) <= 1e-5


@pytest.mark.parametrize('name', FAMILIES)
def test_torch_export_matches_eager(name):
    m, x = backbone(name, num_classes=5), x32()
    with torch.no_grad():
        ep = torch.export.export(m, (x,))
        assert max_abs_diff(ep.module()(x), m(x)) <= 1e-5
        f = backbone(name, features_only=True)
        assert max_abs_diff(torch.export.export(f, (x,)).module()(x), f(x)) <= 1e-5


@pytest.mark.parametrize('arch,kw', [('cnn', dict(backbone='resnet18')),
                                     ('segmentation', dict(backbone='resnet18', head='segmenter')),
                                     ('transformer', dict(backbone='vit_tiny_16', img_size=32))])
def test_architectures_export(arch, kw):
    torch.manual_seed(0)
    m = randomize_norms_(create_model(architecture=arch, num_classes=3, **kw)).eval()
    x = torch.randn(1, 3, 32, 32) if arch == 'transformer' else torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_abs_diff(torch.export.export(m, (x,)).module()(x), m(x)) <= 1e-5


class DenseDetection(nn.Module):
    "A detection model up to its raw head outputs: the exportable part."
    def __init__(self, model): super().__init__(); self.model = model
    def forward(self, x):
        d = self.model.head.forward_dense(self.model.forward_features(x))
        return {k: v for k, v in d.items() if isinstance(v, torch.Tensor)}


def test_detection_exports_to_raw_head_outputs_and_decodes_in_python():
    torch.manual_seed(0)
    m = randomize_norms_(create_model(architecture='detection', backbone='resnet18', head='detector', num_classes=3)).eval()
    x = torch.randn(1, 3, 64, 64)
    dense = DenseDetection(m)
    with torch.no_grad():
        ep = torch.export.export(dense, (x,))
        got, want = ep.module()(x), dense(x)
        assert max_abs_diff(got, want) <= 1e-5
        full = m.head.forward_dense(m.forward_features(x))
        decoded = m.head.predict({**full, **got}, [(64, 64)])  # decode (threshold + NMS) stays the Python step
        assert max_abs_diff(decoded, m(x)) <= 1e-5


def _blocks():
    from core_models.blocks.conv import ConvBlock, MBConv, FusedMBConv, DepthwiseSeparableConv
    from core_models.blocks.residual import BasicBlock, Bottleneck, DropPath
    from core_models.blocks.attention import AttentionBlock
    return [ConvBlock(in_channels=16, out_channels=8), MBConv(in_channels=16, out_channels=16, expand_ratio=4, drop_path=0.1),
            FusedMBConv(in_channels=16, out_channels=24, expand_ratio=4, stride=2), DepthwiseSeparableConv(in_channels=16, out_channels=32),
            BasicBlock(in_channels=16, out_channels=32, stride=2), Bottleneck(in_channels=16, out_channels=64, drop_path=0.1), DropPath(p=0.2),
            AttentionBlock(dim=16, num_heads=2, drop_path=0.1)]  # on a feature map: its H*W positions are the tokens


@pytest.mark.filterwarnings('ignore::FutureWarning')  # torch 2.14 deprecates torch.jit.script (for torch.export/compile)
@pytest.mark.parametrize('i', range(8))
def test_conv_blocks_script(i):
    "The blocks the backbone families are made of compile with torch.jit.script and match eager."
    torch.manual_seed(0)
    m = randomize_norms_(_blocks()[i]).eval()
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad(): assert max_abs_diff(torch.jit.script(m)(x), m(x)) <= 1e-5


SCRIPTED = {'simple_cnn': {}, 'resnet18': {}, 'resnet50': {}, 'efficientnet_b0': {}, 'vit_tiny_16': dict(img_size=32, depth=4),
            'vit_tiny_16_pyramid': dict(img_size=32, depth=4, feature_pyramid=True)}


@pytest.mark.filterwarnings('ignore::FutureWarning')
@pytest.mark.parametrize('name', SCRIPTED)
def test_backbones_script(name):
    "`torch.jit.script(create_backbone(name).eval())` compiles; logits and `features_only` maps equal eager."
    x = x32()
    with torch.no_grad():
        for kw in (dict(num_classes=5), dict(features_only=True), dict(features_only=True, out_indices=(1, -1))):
            torch.manual_seed(0)
            m = randomize_norms_(create_backbone(name.removesuffix('_pyramid'), **SCRIPTED[name], **kw)).eval()
            assert max_abs_diff(torch.jit.script(m)(x), m(x)) <= 1e-5


@pytest.mark.filterwarnings('ignore::FutureWarning')
def test_scripted_vit_runs_at_its_grid():
    "A scripted ViT keeps its position embedding's grid: resampling for another size is the eager model's."
    torch.manual_seed(0)
    m = create_backbone('vit_tiny_16', img_size=32, depth=2).eval()
    s = torch.jit.script(m)
    with torch.no_grad():
        assert max_abs_diff(s.forward_head(s.forward_features(x32()), pre_logits=True), m.forward_head(m.forward_features(x32()), pre_logits=True)) <= 1e-5
        with pytest.raises(torch.jit.Error, match='built for'): s(torch.randn(1, 3, 48, 48))
