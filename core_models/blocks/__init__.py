"""Building blocks: conv blocks (`conv`), residual blocks (`residual`) and attention blocks (`attention`).

Hand-written re-exports; each submodule is generated from its notebook under `nbs/blocks/`."""

from .conv import *
from .residual import *
from .attention import *
