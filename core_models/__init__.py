"""core_models: build, inspect, train and version computer-vision models in PyTorch.

Hand-written (nbdev generates every submodule from its notebook). The top-level names load on first use (PEP 562),
so `import core_models` costs next to nothing on top of `import torch`, and torchvision, DVC, matplotlib or
ipywidgets load only with the part of the kit that needs them. `from core_models import create_model` works as
always; so does `core_models.widgets`, `core_models.cli` or any other submodule as an attribute."""
__version__ = "0.1.0"

import importlib

_EXPORTS = {  # name: the submodule it comes from
    'create_backbone': 'backbones', 'list_backbones': 'backbones', 'register_backbone': 'backbones',
    'create_model': 'factory', 'list_models': 'factory',
    'Trainer': 'training', 'TrainConfig': 'training', 'Callback': 'training', 'EarlyStopping': 'training', 'evaluate': 'training',
}
__all__ = [*_EXPORTS, 'summary']

from .summary import summary  # eager (it is light): the function must win over its module, which shares its name

def __getattr__(name:str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f'.{_EXPORTS[name]}', __name__), name)
        globals()[name] = value
        return value
    try: return importlib.import_module(f'.{name}', __name__)
    except ModuleNotFoundError as e:
        if e.name != f'{__name__}.{name}': raise
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')

def __dir__(): return sorted(set(globals()) | set(_EXPORTS))
