"""Serving Continual Memory: incremental refresh of stored memories, and scoring from them."""

from cmrec.serving.events import UserEvents
from cmrec.serving.model import ServedModel, model_fingerprint
from cmrec.serving.refresh import Refresher, RefreshStats
from cmrec.serving.scorer import Scorer, Scores

__all__ = ["RefreshStats", "Refresher", "Scorer", "Scores", "ServedModel", "UserEvents", "model_fingerprint"]
