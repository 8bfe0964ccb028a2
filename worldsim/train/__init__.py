"""The shared training driver: `train(task, TrainConfig(...))` for every worldsim model."""

from worldsim.train.config import TrainConfig
from worldsim.train.driver import (
    LossOutput,
    ResumableBatches,
    TrainingDiverged,
    TrainResult,
    TrainTask,
    lr_lambda,
    train,
)

__all__ = [
    "LossOutput",
    "ResumableBatches",
    "TrainConfig",
    "TrainResult",
    "TrainTask",
    "TrainingDiverged",
    "lr_lambda",
    "train",
]
