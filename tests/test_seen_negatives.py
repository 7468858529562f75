"""bench/seen_negatives.py: the AUC without the negatives a user had already clicked."""

from __future__ import annotations

import numpy as np

from cmrec.data.samples import Histories, Samples
from tests.bench_scripts import bench_script


def test_seen_negatives_are_found_in_the_window_and_left_out_of_the_second_auc() -> None:
    script = bench_script("seen_negatives")
    histories = Histories(
        items=np.array([5, 6, 7, 8, 9, 5], dtype=np.int32),
        categories=None,
        offsets=np.array([0, 4, 6]),
        users=np.array([0, 1]),
    )
    samples = Samples(
        sequence=np.array([0, 0, 0, 0, 1, 1]),
        prefix_len=np.array([4, 4, 4, 4, 2, 2]),
        target_item=np.array([9, 5, 3, 6, 4, 5]),
        target_category=None,
        label=np.array([1, 0, 1, 0, 1, 0], dtype=np.float32),
    )
    # max_len 3: user 0 reads 6, 7, 8 (5 is out of the window); user 1 reads 9, 5.
    seen = script.seen_in_history(histories, samples, max_len=3)
    assert seen.tolist() == [False, False, False, True, False, True]
    scores = np.array([0.2, 0.1, 0.3, 0.9, 0.4, 0.8])
    report = script.seen_report(samples.label, scores, seen)
    assert abs(report["auc"] - 3 / 9) < 1e-12  # of 9 pairs, each positive is above the negative 0.1 only
    assert report["auc_unseen_negatives"] == 1.0  # the one unseen negative is below every positive
    assert report["negatives_seen"] == 2 / 3 and report["positives_seen"] == 0.0
