"""Backbones: the contract every family answers (`base`) and the families (ResNet, ViT, EfficientNet).

Hand-written re-exports; each submodule is generated from its notebook under `nbs/backbones/`.
Importing this package registers every family with `create_backbone`."""

from .base import *
from .resnet import *
from .vit import *
from .efficient import *
