__version__ = "0.1.0"

from .backbones import create_backbone, list_backbones, register_backbone
from .summary import summary
from .factory import create_model, list_models
from .training import Trainer, TrainConfig, Callback, EarlyStopping, evaluate
