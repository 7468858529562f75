"""CTR metrics of record: AUC (scikit-learn's roc_auc_score), GAUC and logloss.

torchrec's AUCMetric treats tied scores differently and only covers its window, so the AUC we
report is scikit-learn's over all predictions (a test cross-checks the two on tie-free scores).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import log_loss, roc_auc_score

from cmrec.errors import DataValidationError

EPSILON = 1e-7


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; needs both labels."""
    labels = np.asarray(labels)
    if labels.size == 0 or labels.min() == labels.max():
        raise DataValidationError("AUC needs at least one positive and one negative sample")
    return float(roc_auc_score(labels, scores))


def auc_sensitivity(labels: np.ndarray, scores: np.ndarray, delta: float) -> float:
    """The most the AUC of `scores` can move when every score moves by at most `delta`.

    Only a (positive, negative) pair whose scores are within 2 * delta of each other can change
    order, and each such pair moves the AUC by at most 1 / (positives * negatives). This is how two
    paths that agree to float rounding (the store and the batch path, or one computation on two
    CPUs) are compared: their AUCs may differ by this much and no more.
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if delta < 0 or not np.isfinite(delta):
        raise DataValidationError(f"delta must be a finite number >= 0, got {delta}")
    positives, negatives = scores[labels == 1], np.sort(scores[labels != 1])
    if delta == 0 or positives.size == 0 or negatives.size == 0:
        return 0.0
    close = np.searchsorted(negatives, positives + 2 * delta, side="right") - np.searchsorted(
        negatives, positives - 2 * delta, side="left"
    )
    return float(close.sum() / (positives.size * negatives.size))


def gauc(labels: np.ndarray, scores: np.ndarray, users: np.ndarray) -> float:
    """Impression-weighted mean of per-user AUC, over users that have both labels."""
    frame = pd.DataFrame({"label": labels, "score": scores, "user": users})
    total, weight = 0.0, 0
    for _, group in frame.groupby("user", sort=False):
        if group["label"].nunique() < 2:
            continue
        total += roc_auc_score(group["label"], group["score"]) * len(group)
        weight += len(group)
    if weight == 0:
        raise DataValidationError("GAUC needs a user with both a positive and a negative sample")
    return total / weight


def logloss(labels: np.ndarray, scores: np.ndarray) -> float:
    """Binary cross-entropy of click probabilities (clipped away from 0 and 1)."""
    return float(log_loss(labels, np.clip(scores, EPSILON, 1 - EPSILON), labels=[0, 1]))


def ctr_metrics(labels: np.ndarray, scores: np.ndarray, users: np.ndarray) -> dict[str, float]:
    """AUC, GAUC and logloss of one set of predictions."""
    return {
        "auc": auc(labels, scores),
        "gauc": gauc(labels, scores, users),
        "logloss": logloss(labels, scores),
    }
