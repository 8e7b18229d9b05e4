"""A model remembers how it was built (issue 12, item 6), for every kit architecture and for a user's subclasses:
`type(m)(m.to_config())` rebuilds the whole model (same state_dict names and shapes), the config is plain JSON, and
a registry round trip of the instance, with no `config=`, gives back a model with the same outputs."""
import json
import pytest, torch, torch.nn as nn
from core_models import create_model
from core_models.architectures import (BaseArchitecture, CNNArchitecture, TransformerArchitecture, DetectionArchitecture,
                                       SegmentationArchitecture, get_architecture_class)
from core_models.backbones import create_backbone
from core_models.blocks import ConvBlock, AttentionBlock
from core_models.heads import ClassificationHead, DetectionHead, SegmentationHead
from core_models.versioning.registry import ModelRegistry


class CustomModel(BaseArchitecture):  # the seed's, as written: hand-built body, lazy head
    def __init__(self, config):
        super().__init__()
        self.backbone = self.build_backbone(config)
        self.head = ClassificationHead(config)

    def build_backbone(self, config):
        return nn.Sequential(ConvBlock(config), AttentionBlock(config))

    def forward(self, x):
        return self.head(self.backbone(x))


class AttentionOnTop(BaseArchitecture):  # a user's composing subclass with a neck of its own
    default_head = 'classifier'
    def __init__(self, config=None, *, backbone='simple_cnn', head=None, **overrides):
        super().__init__(config, backbone=backbone, head=head, **overrides)
        self.neck = AttentionBlock(dim=self.backbone.num_features, num_heads=2)


class Widened(BaseArchitecture):  # a parameter of its own beside the config
    def __init__(self, config, width:int=8):
        super().__init__(config)
        self.body = nn.Conv2d(self.config.in_chans, width, 3, padding=1)
    def forward(self, x): return self.body(self.check_input(x))


SEED = dict(in_channels=3, out_channels=8, num_heads=2, num_classes=5)
X = torch.rand(2, 3, 32, 32)

MODELS = {  # name: (builder, input)
    'cnn': (lambda: create_model('cnn', backbone='simple_cnn', num_classes=3), X),
    'cnn_head_instance': (lambda: CNNArchitecture(backbone='resnet18', head=ClassificationHead(num_classes=10)), X),
    'cnn_backbone_instance': (lambda: CNNArchitecture({'num_classes': 4}, backbone=create_backbone('resnet18', drop_rate=0.1)), X),
    'transformer_vit': (lambda: TransformerArchitecture({'num_classes': 3}, backbone='vit_tiny_16', img_size=32), X),
    'transformer_hybrid': (lambda: create_model('transformer', backbone='simple_cnn', num_classes=3, encoder_depth=1,
                                                embed_dim=32, num_heads=2), X),
    'detection': (lambda: DetectionArchitecture(backbone='simple_cnn', head=DetectionHead(num_classes=3, fpn_channels=16,
                                                                                           num_convs=1, in_strides=(4, 8))), X),
    'segmentation': (lambda: SegmentationArchitecture({'num_classes': 3, 'channels': 16}, backbone='simple_cnn'), X),
    'user_hand_written': (lambda: CustomModel(SEED), X),
    'user_composed': (lambda: AttentionOnTop({'num_classes': 2}), X),
    'user_own_parameter': (lambda: Widened({'in_chans': 3}, width=4), X),
}


def build(name):
    torch.manual_seed(0)
    make, x = MODELS[name]
    m = make().eval()
    with torch.no_grad(): m(x)  # size lazy layers (the seed's head) as a first batch does
    return m, x


def shapes(m): return {k: tuple(v.shape) for k, v in m.state_dict().items()}


def outputs(m, x):
    with torch.no_grad(): out = m.eval()(x)
    if isinstance(out, dict): return out
    if isinstance(out, list): return {f'{i}.{k}': v for i, d in enumerate(out) for k, v in d.items()}
    return {'out': out}


@pytest.mark.parametrize('name', list(MODELS))
def test_to_config_rebuilds_the_whole_model(name):
    m, x = build(name)
    cfg = m.to_config()
    assert json.loads(json.dumps(cfg)) == cfg  # plain JSON: what meta.json stores
    again = BaseArchitecture.from_config(json.loads(json.dumps(cfg)))
    assert type(again) is type(m) and get_architecture_class(cfg['architecture']) is type(m)
    with torch.no_grad(): again.eval()(x)
    assert shapes(again) == shapes(m) and again.to_config() == cfg
    if name != 'user_own_parameter':  # a constructor that takes the config first reads everything from it
        same = type(m)(cfg)
        with torch.no_grad(): same.eval()(x)
        assert shapes(same) == shapes(m)
    again.load_state_dict(m.state_dict())
    a, b = outputs(again, x), outputs(m, x)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize('name', list(MODELS))
def test_registry_round_trip_without_config(tmp_path, name):
    m, x = build(name)
    reg = ModelRegistry(tmp_path/'registry')
    mv = reg.register('model', '1.0.0', m)  # no config=: the model's own record
    assert mv.config == m.to_config() and mv.model_class == type(m).registered_name
    loaded = reg.load('model', '1.0.0')
    assert type(loaded) is type(m)
    a, b = outputs(loaded, x), outputs(m, x)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_hparams_are_the_call():
    m = CNNArchitecture({'num_classes': 3}, backbone='simple_cnn', in_chans=1)
    assert m.hparams == {'config': {'num_classes': 3}, 'backbone': 'simple_cnn', 'neck': None, 'head': None, 'in_chans': 1}
    cfg = dict(SEED)
    c = CustomModel(cfg)
    cfg['num_classes'] = 99  # changed afterwards: the record is a copy
    assert c.hparams == {'config': SEED} and c.to_config() == {'architecture': 'custom', **SEED}


def test_a_reset_classifier_is_what_gets_recorded():
    "A composed model describes its parts as they are now, not as they were passed."
    m = CNNArchitecture({'num_classes': 3}, backbone='simple_cnn')
    m.head = ClassificationHead(num_classes=7, in_features=m.backbone.num_features)
    assert m.to_config()['head']['num_classes'] == 7
    assert type(m)(m.to_config()).head.fc.out_features == 7


def test_parts_that_cannot_be_recorded_say_so(tmp_path):
    m = CNNArchitecture({'num_classes': 2}, backbone=nn.Sequential(nn.Conv2d(3, 8, 3)))
    with pytest.raises(TypeError, match='`backbone` is a Sequential, not a registered backbone'): m.to_config()
    with pytest.raises(ValueError, match=r"CNNArchitecture rebuilt from no config does not fit .*its to_config\(\) failed: .*Sequential"):
        m(X); ModelRegistry(tmp_path/'r').register('m', '1.0.0', m)
