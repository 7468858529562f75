"""Training as a library: `fit` one run, `evaluate_split` a saved model, the loop underneath.

from cmrec.train import TrainSettings, fit
result = fit("cm", data, Path("runs/cm"), TrainSettings(epochs=3, seed=0))
"""

from cmrec.train.checkpoint import load_checkpoint
from cmrec.train.evaluation import SplitEvaluation, evaluate_split, score_split
from cmrec.train.fit import TrainResult, TrainState, fit
from cmrec.train.loop import EpochResult, Predictions, predict, train_epoch
from cmrec.train.runner import Batches, LocalRunner, Runner, RunSpec
from cmrec.train.settings import SettingError, TrainSettings

__all__ = [
    "Batches",
    "EpochResult",
    "LocalRunner",
    "Predictions",
    "RunSpec",
    "Runner",
    "SettingError",
    "SplitEvaluation",
    "TrainResult",
    "TrainSettings",
    "TrainState",
    "evaluate_split",
    "fit",
    "load_checkpoint",
    "predict",
    "score_split",
    "train_epoch",
]
