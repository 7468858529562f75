"""The forgetting diagnostic: AUC by how far back the target's evidence last appeared.

The recommendation counterpart of the paper's Early/Later split: for each target pair, find the
last event of its history with the positive's category (or item, for data without categories) and
bucket the pair by the age of that event, as a share of the history: Q1 = the most recent quarter
... Q4 = the oldest quarter, or "never". A model that forgets early behaviour loses AUC in Q4.
"""

from __future__ import annotations

import numpy as np

from cmrec.data.samples import Histories, Samples
from cmrec.eval.heuristics import target_hits
from cmrec.eval.metrics import auc

BUCKETS = ("Q1", "Q2", "Q3", "Q4", "never")


def evidence_buckets(histories: Histories, samples: Samples, max_len: int, chunk: int = 4096) -> np.ndarray:
    """(n,) bucket name of each sample (both rows of a pair get the positive's bucket)."""
    use_categories = histories.categories is not None and samples.target_category is not None
    events = histories.categories if use_categories else histories.items
    targets = samples.target_category if use_categories else samples.target_item
    assert events is not None and targets is not None
    positives = np.repeat(np.arange(0, len(samples), 2), 2)  # the positive row of each sample's pair
    names = np.empty(len(samples), dtype=object)
    for begin in range(0, len(samples), chunk):
        rows = positives[begin : begin + chunk]
        hits, lengths = target_hits(histories, samples, rows, events, targets, max_len)
        span = hits.shape[1]
        found = hits.any(axis=1)
        last = span - 1 - np.argmax(hits[:, ::-1], axis=1)  # index of the last hit
        age = (lengths - last) / np.maximum(lengths, 1)  # in (0, 1]: 1/L = the newest event
        quartile = np.clip(np.ceil(age * 4).astype(int) - 1, 0, 3)  # (0, 1/4] -> Q1 ... (3/4, 1] -> Q4
        chunk_names = np.asarray(BUCKETS[:4], dtype=object)[quartile]
        chunk_names[~found] = "never"
        names[begin : begin + chunk] = chunk_names
    return names


def bucket_aucs(names: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> dict[str, dict[str, float]]:
    """AUC and pair count per bucket (buckets without both labels are left out)."""
    out: dict[str, dict[str, float]] = {}
    for bucket in BUCKETS:
        chosen = names == bucket
        if chosen.sum() >= 2 and 0 < labels[chosen].sum() < chosen.sum():
            out[bucket] = {"auc": auc(labels[chosen], scores[chosen]), "pairs": float(chosen.sum() // 2)}
    return out
