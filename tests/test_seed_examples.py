"""The user's own document (the seed README) shows these examples; they run as written, with `core.models`
spelled `core_models`. Each block runs in a fresh interpreter in an empty folder (no settings.ini, no git), with
only the names the document leaves undefined (imports of torch, a config, an optimizer) given in a preamble."""
import textwrap
import pytest

PREAMBLE = '''
import torch, torch.nn as nn
config = model_config = dict(in_channels=3, out_channels=32, num_heads=4, num_classes=10)
'''

CUSTOM_MODEL = '''
from core_models.architectures import BaseArchitecture
from core_models.blocks import ConvBlock, AttentionBlock
from core_models.heads import ClassificationHead

class CustomModel(BaseArchitecture):
    def __init__(self, config):
        super().__init__()
        self.backbone = self.build_backbone(config)
        self.head = ClassificationHead(config)

    def build_backbone(self, config):
        return nn.Sequential(
            ConvBlock(config),
            AttentionBlock(config)
        )

    def forward(self, x):
        features = self.backbone(x)
        return self.head(features)
'''

REGISTRY = '''
from core_models.versioning import ModelRegistry
from core_models.versioning.checkpoint import save_checkpoint

# Register model version
registry = ModelRegistry()
registry.register(
    name="custom_model",
    version="1.0.0",
    model=CustomModel,
    config=model_config
)

# Save checkpoint with versioning
save_checkpoint(
    model,
    optimizer,
    epoch,
    metrics,
    path="checkpoints/v1.0.0/"
)

# Load specific version
model = registry.load("custom_model", version="1.0.0")
'''

CREATE_MODEL = '''
from core_models import create_model
from core_models.blocks import create_backbone
from core_models.versioning import register_model

# Create new model
model = create_model(
    architecture="custom",
    backbone="resnet50",
    head="classifier",
    config=config
)

# Register model version
register_model(
    model,
    name="custom_model",
    version="1.0.0",
    tags=["production", "classifier"]
)
'''

CLASSIFICATION = '''
from core_models.architectures import CNNArchitecture
from core_models.heads import ClassificationHead

model = CNNArchitecture(
    backbone="resnet50",
    head=ClassificationHead(num_classes=10)
)
'''

DETECTION = '''
from core_models.architectures import DetectionArchitecture
from core_models.heads import DetectionHead

model = DetectionArchitecture(
    backbone="efficient_net",
    head=DetectionHead(num_classes=20)
)
'''


def run(run_python, *blocks, after='', result=False):
    r = run_python(textwrap.dedent(PREAMBLE) + '\n'.join(blocks) + textwrap.dedent(after), env={'CORE_MODELS_SETTINGS': ''})
    assert r.returncode == 0, r.stderr[-3000:]
    return r if result else r.stdout


def test_custom_model_forward_backward(run_python):
    out = run(run_python, CUSTOM_MODEL, after='''
        model = CustomModel(config)
        logits = model(torch.randn(2, 3, 16, 16))
        logits.sum().backward()
        assert logits.shape == (2, 10) and all(p.grad is not None for p in model.parameters())
        print('ok')''')
    assert out.strip() == 'ok'


def test_registry_and_checkpoint(run_python, tmp_path):
    out = run(run_python, CUSTOM_MODEL, '''
model = CustomModel(model_config)
model(torch.randn(2, 3, 16, 16))  # the head learns its width from the first batch
optimizer = torch.optim.AdamW(model.parameters())
epoch, metrics = 3, {"val_accuracy": 0.9}
''', REGISTRY, after='''
        import os
        assert isinstance(model, CustomModel) and os.path.isfile("checkpoints/v1.0.0/model.safetensors")
        assert registry.get("custom_model", "1.0.0").version == "1.0.0"
        print('ok')''')
    assert out.strip() == 'ok'


def test_create_model_right_after_custom_model(run_python):
    """The document's two blocks in order: `class CustomModel(BaseArchitecture)` registers itself as "custom", so
    `create_model(architecture="custom", ...)` builds it; `register_model(model, ...)` records it with no config=, and
    `load` gives back an equal model (its head, lazy until a first batch, lazy again), then, once trained a step,
    the same outputs."""
    r = run(run_python, CUSTOM_MODEL, CREATE_MODEL, result=True, after='''
        from core_models.versioning import ModelRegistry
        from torch.nn.parameter import is_lazy
        registry = ModelRegistry()
        v = registry.get("custom_model", "production")
        assert type(model) is CustomModel and v.version == "1.0.0" and "classifier" in v.tags
        assert v.model_class == "custom" and v.config["backbone"] == "resnet50"
        loaded = registry.load("custom_model", version="1.0.0")
        sd, ld = model.state_dict(), loaded.state_dict()
        assert type(loaded) is CustomModel and sd.keys() == ld.keys()
        assert all(is_lazy(ld[k]) if is_lazy(sd[k]) else torch.equal(sd[k], ld[k]) for k in sd)

        x = torch.randn(2, 3, 16, 16)
        model(x).sum().backward()  # a training step sizes the head
        register_model(model, name="custom_model", version="1.1.0")
        loaded = registry.load("custom_model", version="1.1.0")
        with torch.no_grad(): assert torch.equal(loaded(x), model.eval()(x))
        print('ok')''')
    assert r.stdout.strip() == 'ok'
    assert "backbone='resnet50' reached it as config['backbone']" in r.stderr  # and CustomModel built its own body


def test_create_model_with_a_composing_architecture(run_python):
    "A class that takes `backbone` and `head` uses the names the document's call gives."
    out = run(run_python, '''
from core_models.architectures import BaseArchitecture, register_architecture

@register_architecture(name="custom")
class Custom(BaseArchitecture):
    default_head = "classifier"
''', CREATE_MODEL, after='''
        from core_models.versioning import ModelRegistry
        loaded = ModelRegistry().load("custom_model", "1.0.0")
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad(): assert torch.equal(loaded(x), model.eval()(x))
        logits = model.train()(torch.randn(2, 3, 64, 64))
        logits.sum().backward()
        v = ModelRegistry().get("custom_model", "production")
        assert logits.shape == (2, 10) and v.version == "1.0.0" and "classifier" in v.tags
        assert model.backbone.registered_name == "resnet50"
        print('ok')''')
    assert out.strip() == 'ok'


def test_classification_and_detection_examples(run_python):
    out = run(run_python, CLASSIFICATION, '''
logits = model(torch.randn(2, 3, 64, 64)); logits.sum().backward()
assert logits.shape == (2, 10)
''', DETECTION, after='''
        images = torch.rand(2, 3, 128, 128)
        targets = [{"boxes": torch.tensor([[10., 20., 60., 90.]]), "labels": torch.tensor([3])},
                   {"boxes": torch.tensor([[30., 30., 100., 70.], [5., 5., 40., 40.]]), "labels": torch.tensor([0, 19])}]
        losses = model(images, targets)
        sum(losses.values()).backward()
        model.eval()
        with torch.no_grad(): preds = model(images)
        assert set(losses) == {"loss_cls", "loss_box", "loss_ctr"} and len(preds) == 2
        assert set(preds[0]) == {"boxes", "scores", "labels"}
        print('ok')''')
    assert out.strip() == 'ok'
