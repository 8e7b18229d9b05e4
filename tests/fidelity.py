"""Shared checks that a backbone is its torchvision twin (the fidelity recipe in /work/shared/notes/anchors.md).

Not a test module (pytest does not collect it); the test files import it as `from fidelity import ...`, which works
because pytest's default `prepend` import mode puts tests/ (a folder without `__init__.py`) on sys.path.
conftest.py registers it for pytest's assertion rewriting, so a failing check shows both sides."""
import torch, torch.nn as nn, torchvision
from core_models.backbones.base import create_backbone


def count_params(m: nn.Module) -> int:
    "Number of parameters (sum of numel), the figure torchvision's weights meta calls num_params."
    return sum(p.numel() for p in m.parameters())


def randomize_norms_(m: nn.Module) -> nn.Module:
    "Give every BatchNorm2d random running stats and affine parameters (fresh ones are the identity: they hide key mix-ups)."
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.normal_(0, 0.5); bn.running_var.uniform_(0.5, 2)
            nn.init.normal_(bn.weight, 1, 0.3); nn.init.normal_(bn.bias, 0, 0.3)
    return m


def assert_meta_twin(name: str):
    """Build our `name` (1000 classes) and torchvision's on the meta device (no memory) and check that they hold the
    same parameters: equal counts, torchvision's state_dict converts to our keys (same order, same shapes) and
    strict-loads with assign=True, and our own keys pass through the map unchanged. Returns (ours, theirs)."""
    with torch.device('meta'):
        theirs = torchvision.models.get_model(name)
        ours = create_backbone(name, num_classes=1000)
    assert count_params(ours) == count_params(theirs)
    sd = ours.convert_state_dict(theirs.state_dict())
    assert list(sd) == list(ours.state_dict()), 'same tensors in the same order'
    assert {k: v.shape for k, v in sd.items()} == {k: v.shape for k, v in ours.state_dict().items()}
    ours.load_state_dict(sd, strict=True, assign=True)
    assert list(ours.convert_state_dict(ours.state_dict())) == list(ours.state_dict()), 'our own keys pass through unchanged'
    return ours, theirs
