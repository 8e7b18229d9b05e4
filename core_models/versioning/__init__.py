"""Versioning: safe checkpoints (`checkpoint`) and the git-native model registry (`registry`).

Hand-written re-exports; each submodule is generated from its notebook under `nbs/versioning/`."""

from .checkpoint import (save_checkpoint, load_checkpoint, verify_checkpoint, Checkpoint, CheckpointError, CheckpointWriteError,
                         CheckpointManager, config_hash)
from .registry import ModelRegistry, ModelVersion, RegistryError, register_model, allow_module
