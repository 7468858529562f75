from __future__ import annotations

import numpy as np

from cmrec.data.samples import Histories, Samples
from cmrec.eval.forgetting import bucket_aucs, evidence_buckets


def test_buckets_by_age_of_the_last_evidence() -> None:
    # One history of 8 events with categories 5 6 7 8 5 6 7 8 (oldest first).
    histories = Histories(
        items=np.arange(2, 10, dtype=np.int32),
        categories=np.array([5, 6, 7, 8, 5, 6, 7, 8], dtype=np.int32),
        offsets=np.array([0, 8]),
        users=np.array([0]),
    )
    # Pairs whose positives have categories 8 (last seen 1 event ago), 5 (4 ago), 6 (3 ago), 9 (never).
    samples = Samples(
        sequence=np.zeros(8, dtype=np.int64),
        prefix_len=np.full(8, 8),
        target_item=np.zeros(8, dtype=np.int64),
        target_category=np.array([8, 1, 5, 1, 6, 1, 9, 1]),
        label=np.tile([1.0, 0.0], 4).astype(np.float32),
    )
    names = evidence_buckets(histories, samples, max_len=8)
    assert names.tolist() == ["Q1", "Q1", "Q2", "Q2", "Q2", "Q2", "never", "never"]
    # With max_len 3 the window is 6 7 8: category 5 is then never seen.
    assert evidence_buckets(histories, samples, max_len=3).tolist()[2:4] == ["never", "never"]


def test_bucket_aucs_skip_buckets_without_both_labels() -> None:
    names = np.array(["Q1", "Q1", "Q4", "Q4", "never"], dtype=object)
    labels = np.array([1, 0, 1, 0, 1])
    scores = np.array([0.9, 0.1, 0.2, 0.8, 0.5])
    assert bucket_aucs(names, labels, scores) == {
        "Q1": {"auc": 1.0, "pairs": 1.0},
        "Q4": {"auc": 0.0, "pairs": 1.0},
    }
