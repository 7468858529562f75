"""Training: the model-agnostic loop."""

from cmrec.train.loop import Predictions, predict, train_epoch

__all__ = ["Predictions", "predict", "train_epoch"]
