"""Backbones: the contract every family answers (`base`), the smallest family (`simple`), weight loading (`weights`),
names and variants (`registry`), and the families (ResNet, ViT, EfficientNet).

Hand-written re-exports; each submodule is generated from its notebook under `nbs/backbones/`.
Importing this package registers every family with `create_backbone`."""

from .base import *
from .simple import *
from .weights import *
from .registry import *
from .resnet import *
from .vit import *
from .efficient import *
