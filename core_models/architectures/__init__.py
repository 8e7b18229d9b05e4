"""Architectures: `BaseArchitecture` (`base`), `CNNArchitecture` (`cnn`), `TransformerArchitecture` (`transformer`),
`DetectionArchitecture` (`detection`), `SegmentationArchitecture` (`segmentation`) and `MultiLabelArchitecture` (`multilabel`).

Hand-written re-exports; each submodule is generated from its notebook under `nbs/architectures/`."""

from .base import *
from .cnn import *
from .transformer import *
from .detection import *
from .segmentation import *
from .multilabel import *
