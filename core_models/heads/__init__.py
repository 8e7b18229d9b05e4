"""Task heads: the contract (`base`), classification (`classifier`), detection (`detector`) and segmentation (`segmenter`).

Hand-written re-exports; each submodule is generated from its notebook under `nbs/heads/`."""

from .base import *
from .classifier import *
from .detector import *
from .segmenter import *
