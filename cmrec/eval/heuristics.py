"""Heuristic floors: history-frequency and popularity rules every model must beat.

The frequency score of a sample is the share of the last `window` events of its history (all of
it when `window` is None) whose category (or item) equals the candidate's. Comparing ``window=50``
with the whole 1,000-event history on the same samples shows how much long-range memory can add on
a data set. The popularity score is how often the candidate was clicked in the training region:
on real logs it is the floor that matters. `heuristic_floors` gives all three for a test split.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from sklearn.metrics import roc_auc_score

from cmrec.data.dataset import ClickLogData
from cmrec.data.samples import Histories, Samples, concat_ranges
from cmrec.errors import ConfigError

Key = Literal["category", "item"]
RECENT_WINDOW = 50  # events of the recent-window floor


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


def popularity_scores(histories: Histories, train: Samples, samples: Samples) -> np.ndarray:
    """(n,) float64 clicks of each candidate in the training region.

    The training region is every click the training samples show: per sequence, its events before
    the latest training target, and the training targets. Held-out targets are never counted.
    """
    longest = np.zeros(histories.num_sequences, dtype=np.int64)
    np.maximum.at(longest, train.sequence, train.prefix_len)
    history_events = histories.items[concat_ranges(histories.offsets[:-1], longest)]
    events = np.concatenate([history_events, train.target_item[train.label == 1]])
    counts = np.bincount(events, minlength=int(histories.items.max(initial=0)) + 1)
    targets = samples.target_item
    return np.where(targets < len(counts), counts[np.minimum(targets, len(counts) - 1)], 0).astype(np.float64)


def heuristic_floors(data: ClickLogData, split: str = "test") -> dict[str, float]:
    """AUC of the three floors on a split: category (item, without categories) frequency in the
    last `RECENT_WINDOW` events (``recent_auc``) and in the whole history (``whole_auc``), and
    the candidate's popularity in the training region (``popularity_auc``)."""
    samples = data.split(split)
    key: Key = "category" if data.histories.categories is not None else "item"
    return {
        "recent_auc": frequency_auc(data.histories, samples, data.max_len, RECENT_WINDOW, key),
        "whole_auc": frequency_auc(data.histories, samples, data.max_len, None, key),
        "popularity_auc": float(
            roc_auc_score(samples.label, popularity_scores(data.histories, data.train, samples))
        ),
    }
