"""The step loop, checkpoints and the run driver."""

from clipctl.trainer.loop import TIMING_COLUMNS, StepOutput, Trainer
from clipctl.trainer.run import TrainResult, train

__all__ = ["TIMING_COLUMNS", "StepOutput", "Trainer", "TrainResult", "train"]
