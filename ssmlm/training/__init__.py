"""Training from a config: `load_config` reads the YAML tree, `train` runs it with Accelerate (see train.py)."""

from .config import ConfigError, TrainConfig, load_config
from .trainer import latest_checkpoint, train

__all__ = ["ConfigError", "TrainConfig", "latest_checkpoint", "load_config", "train"]
