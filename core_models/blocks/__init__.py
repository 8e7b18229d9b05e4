"""Building blocks: conv blocks (`conv`), residual blocks (`residual`) and attention blocks (`attention`).

Hand-written re-exports; each submodule is generated from its notebook under `nbs/blocks/`."""

from .conv import *
from .residual import *
from .attention import *


def __getattr__(name):
    # The seed imports `create_backbone` from here (`from core_models.blocks import create_backbone`). Backbones are
    # built from blocks, so the name is looked up lazily to keep the import order one way.
    if name == 'create_backbone':
        from core_models.backbones import create_backbone
        return create_backbone
    raise AttributeError(f"module 'core_models.blocks' has no attribute {name!r}")
