"""The step loop, its parts (comm, update engine), checkpoints and the run driver."""

from clipctl.trainer.loop import TIMING_COLUMNS, StepOutput, Trainer
from clipctl.trainer.run import TrainResult, build_trainer, train

__all__ = ["TIMING_COLUMNS", "StepOutput", "Trainer", "TrainResult", "build_trainer", "train"]
