"""Scoring a split: the metrics of record and the forgetting diagnostic, for train and evaluate."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cmrec.atomic import write_file
from cmrec.data.batch import make_loader
from cmrec.data.dataset import ClickLogData
from cmrec.eval.forgetting import bucket_aucs, evidence_buckets
from cmrec.eval.metrics import ctr_metrics
from cmrec.output import RecModel
from cmrec.train.loop import Predictions, predict
from cmrec.train.runner import history_negatives

PREDICTIONS = "test_predictions.parquet"  # RUN/test_predictions.parquet


@dataclass(frozen=True)
class SplitEvaluation:
    """A split's predictions (sample-row order), its metrics (AUC, GAUC, logloss; sklearn's AUC)
    and the AUC per evidence-age bucket (`cmrec.eval.forgetting`)."""

    predictions: Predictions
    metrics: dict[str, float]
    forgetting: dict[str, dict[str, float]]


def score_split(data: ClickLogData, split: str, predictions: Predictions) -> SplitEvaluation:
    """Metrics and forgetting buckets of predictions made for every sample of `split`."""
    metrics = ctr_metrics(predictions.labels, predictions.scores, predictions.users)
    buckets = evidence_buckets(data.histories, data.split(split), data.max_len)
    return SplitEvaluation(predictions, metrics, bucket_aucs(buckets, predictions.labels, predictions.scores))


def evaluate_split(
    model: RecModel, data: ClickLogData, split: str = "test", batch_size: int = 256, seed: int = 0
) -> SplitEvaluation:
    """Predict every sample of `split` with `model` (one process, evaluation mode) and score it.

    `seed` seeds the history negatives of models that need them (they do not change a score).
    """
    negatives = history_negatives(model.needs, data.vocabs, seed)
    loader = make_loader(data.histories, data.split(split), batch_size, data.max_len, negatives=negatives)
    return score_split(data, split, predict(model, loader, desc=split))


def write_predictions(path: Path, predictions: Predictions) -> None:
    """Predictions in sample-row order (label, probability, user index), for re-checking metrics."""
    frame = pd.DataFrame(
        {"label": predictions.labels, "probability": predictions.scores, "user": predictions.users}
    )
    write_file(path, lambda scratch: frame.to_parquet(scratch, index=False))
