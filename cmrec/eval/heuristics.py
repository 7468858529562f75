"""History-frequency heuristics: how much a whole-history look is worth over a recent one.

The score of a sample is the share of the last `window` events of its history (all of it when
`window` is None) whose category (or item) equals the candidate's. Comparing ``window=50`` with the
whole 1,000-event history on the same samples shows how much long-range memory can add on a data
set; models must beat both.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from sklearn.metrics import roc_auc_score

from cmrec.data.samples import Histories, Samples
from cmrec.errors import ConfigError

Key = Literal["category", "item"]


def frequency_scores(
    histories: Histories,
    samples: Samples,
    max_len: int,
    window: int | None = None,
    key: Key = "category",
    chunk: int = 4096,
) -> np.ndarray:
    """(n,) float64 share of the (last `window` of the) history matching the candidate's `key`."""
    if key == "category":
        if histories.categories is None or samples.target_category is None:
            raise ConfigError("category frequency needs data with a category column")
        events, targets = histories.categories, samples.target_category
    else:
        events, targets = histories.items, samples.target_item
    span = max_len if window is None else min(window, max_len)
    scores = np.zeros(len(samples), dtype=np.float64)
    for begin in range(0, len(samples), chunk):  # chunks bound the (rows, span) matrix
        rows = np.arange(begin, min(begin + chunk, len(samples)))
        hits, lengths = target_hits(histories, samples, rows, events, targets, span)
        scores[rows] = hits.sum(axis=1) / np.maximum(lengths, 1)
    return scores


def target_hits(
    histories: Histories,
    samples: Samples,
    rows: np.ndarray,
    events: np.ndarray,
    targets: np.ndarray,
    span: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Where the last `span` events of each row's history equal its target.

    Returns:
        hits: (rows, span) bool, oldest first (columns past a short history are False);
        lengths: (rows,) events in each window.
    """
    stop = histories.offsets[samples.sequence[rows]] + samples.prefix_len[rows]
    start = np.maximum(histories.offsets[samples.sequence[rows]], stop - span)
    lengths = stop - start
    columns = np.arange(span)[None, :]
    valid = columns < lengths[:, None]
    window = events[np.where(valid, start[:, None] + columns, 0)]  # (rows, span)
    return (window == targets[rows][:, None]) & valid, lengths


def frequency_auc(
    histories: Histories,
    samples: Samples,
    max_len: int,
    window: int | None = None,
    key: Key = "category",
) -> float:
    """AUC (scikit-learn's roc_auc_score) of `frequency_scores` against the labels."""
    scores = frequency_scores(histories, samples, max_len, window, key)
    return float(roc_auc_score(samples.label, scores))
