"""Training from a config: `load_config` reads the YAML tree, `train` runs it with Accelerate (see train.py)."""

from .checkpoints import latest_checkpoint
from .config import ConfigError, TrainConfig, load_config
from .trainer import TrainingDiverged, TrainingStopped, train

__all__ = ["ConfigError", "TrainConfig", "TrainingDiverged", "TrainingStopped", "latest_checkpoint", "load_config",
           "train"]
