"""Shared checks that a backbone is its torchvision twin (the fidelity recipe in /work/shared/notes/anchors.md).

Not a test module (pytest does not collect it); the test files import it as `from fidelity import ...`, which works
because pytest's default `prepend` import mode puts tests/ (a folder without `__init__.py`) on sys.path.
conftest.py registers it for pytest's assertion rewriting, so a failing check shows both sides.
The tools themselves (`count_params`, `randomize_norms_`, `assert_same_outputs`) are `core_models.testing`'s,
shared with the notebooks."""
import torch, torchvision
from core_models.backbones.base import create_backbone, get_backbone_entry
from core_models.testing import count_params, randomize_norms_  # noqa: F401 (re-exported for the test files)


def assert_meta_twin(name: str):
    """Build our `name` (1000 classes) and torchvision's on the meta device (no memory) and check that they hold the
    same parameters: equal counts (and the variant table's count), torchvision's state_dict converts to our keys
    (same order, same shapes) and strict-loads with assign=True, and our own keys pass through the map unchanged.
    Returns (ours, theirs)."""
    with torch.device('meta'):
        theirs = torchvision.models.get_model(name)
        ours = create_backbone(name, num_classes=1000)
    assert count_params(ours) == count_params(theirs)
    assert get_backbone_entry(name).variant.num_params == count_params(ours), 'the variant table holds the count'
    sd = ours.convert_state_dict(theirs.state_dict())
    assert list(sd) == list(ours.state_dict()), 'same tensors in the same order'
    assert {k: v.shape for k, v in sd.items()} == {k: v.shape for k, v in ours.state_dict().items()}
    ours.load_state_dict(sd, strict=True, assign=True)
    assert list(ours.convert_state_dict(ours.state_dict())) == list(ours.state_dict()), 'our own keys pass through unchanged'
    return ours, theirs
