"""Training: one config dataclass → data → model → `fit` with checkpoints, resumable after a kill.

- `loop`: `train(config)`, the strategy, optimizer and model a config asks for;
- `outputs`: the output folder's policy (refusing another run's folder, resuming, disk use);
- `callbacks`: epoch checkpoints, the best model, the one-class warning.
"""

from keras_fcn.config import TrainConfig
from keras_fcn.training.callbacks import BestModelCheckpoint, KeepLastCheckpoints, SingleClassWarning, WarnOnSingleClass
from keras_fcn.training.loop import (
    TrainResult,
    build_model,
    describe_backbone,
    make_optimizer,
    make_strategy,
    train,
)
from keras_fcn.training.outputs import disk_use

__all__ = [
    "BestModelCheckpoint",
    "KeepLastCheckpoints",
    "SingleClassWarning",
    "TrainConfig",
    "TrainResult",
    "WarnOnSingleClass",
    "build_model",
    "describe_backbone",
    "disk_use",
    "make_optimizer",
    "make_strategy",
    "train",
]
