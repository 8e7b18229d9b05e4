"""Backbones: the contract every family answers (`base`), the smallest family (`simple`), weight loading (`weights`),
names and variants (`registry`), the families (ResNet, ViT, EfficientNet), and timm's models by name (`timm`, timm
imported on first use).

Hand-written re-exports; each submodule is generated from its notebook under `nbs/backbones/`.
Importing this package registers every family with `create_backbone`."""

from .base import *
from .simple import *
from .weights import *
from .registry import *
from .resnet import *
from .vit import *
from .efficient import *
from .timm import *
