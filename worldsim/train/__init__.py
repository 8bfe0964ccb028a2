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
from worldsim.train.monitor import to_uint8_clips, write_grid_png, write_side_by_side_mp4

__all__ = [
    "LossOutput",
    "ResumableBatches",
    "TrainConfig",
    "TrainResult",
    "TrainTask",
    "TrainingDiverged",
    "lr_lambda",
    "to_uint8_clips",
    "train",
    "write_grid_png",
    "write_side_by_side_mp4",
]
