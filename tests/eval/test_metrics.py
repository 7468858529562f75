from __future__ import annotations

import numpy as np
import pytest
import torch
from torchrec.metrics.auc import compute_auc

from cmrec.errors import DataValidationError
from cmrec.eval.metrics import auc, auc_sensitivity, ctr_metrics, gauc, logloss


def test_auc_by_hand_and_against_torchrec() -> None:
    labels = np.array([1, 0, 1, 0, 1, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
    # Pairs (positive above negative): 0.9 > all 3; 0.7 > 0.3, 0.1; 0.2 > 0.1 -> 6 of 9.
    assert auc(labels, scores) == pytest.approx(6 / 9)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = rng.random(500) + 0.3 * labels  # no ties
    theirs = compute_auc(
        1,
        [torch.tensor(scores)[None]],
        [torch.tensor(labels, dtype=torch.double)[None]],
        [torch.ones(1, 500)],
    )
    assert float(theirs[0]) == pytest.approx(auc(labels, scores), abs=1e-6)
    # With ties the two differ: torchrec orders tied scores arbitrarily, sklearn counts a tie as 1/2.
    tied = np.array([0.5, 0.5, 0.5, 0.5])
    assert auc(np.array([1, 0, 1, 0]), tied) == 0.5


def test_gauc_weights_users_by_impressions_and_skips_one_label_users() -> None:
    labels = np.array([1, 0, 1, 0, 0, 1, 1])
    scores = np.array([0.9, 0.1, 0.2, 0.8, 0.5, 0.5, 0.5])
    users = np.array([1, 1, 2, 2, 2, 3, 3])
    # user 1: AUC 1 (2 impressions); user 2: positive 0.2 vs 0.8 and 0.5 -> 0 (3 impressions);
    # user 3 has only positives and is skipped.
    assert gauc(labels, scores, users) == pytest.approx((1.0 * 2 + 0.0 * 3) / 5)


def test_logloss_and_bundle() -> None:
    labels = np.array([1, 0])
    scores = np.array([0.8, 0.4])
    assert logloss(labels, scores) == pytest.approx(-(np.log(0.8) + np.log(0.6)) / 2)
    assert logloss(np.array([1]), np.array([1.0])) < 1e-6  # clipped, finite
    metrics = ctr_metrics(labels, scores, np.array([7, 7]))
    assert metrics == {"auc": 1.0, "gauc": 1.0, "logloss": pytest.approx(logloss(labels, scores))}


def test_one_label_is_an_error() -> None:
    with pytest.raises(DataValidationError, match="at least one positive and one negative"):
        auc(np.array([1, 1]), np.array([0.2, 0.3]))
    with pytest.raises(DataValidationError, match="GAUC needs a user"):
        gauc(np.array([1, 0]), np.array([0.2, 0.3]), np.array([1, 2]))


def test_auc_sensitivity_bounds_every_perturbation_and_is_tight() -> None:
    labels = np.array([1, 0, 1, 0])
    scores = np.array([0.50, 0.51, 0.90, 0.10])
    # Within 2 * 0.01 of each other: (0.50, 0.51) only -> 1 of 4 pairs.
    assert auc_sensitivity(labels, scores, 0.01) == 0.25
    assert auc_sensitivity(labels, scores, 0.0) == 0.0
    assert auc_sensitivity(labels, scores, 1.0) == 1.0
    moved = scores + np.array([0.01, -0.01, 0, 0])  # the close pair swaps: the bound is reached
    assert abs(auc(labels, moved) - auc(labels, scores)) == 0.25
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 400)
    scores = rng.random(400)
    bound = auc_sensitivity(labels, scores, 1e-3)
    assert 0 < bound < 0.02
    for _ in range(20):
        noisy = scores + rng.uniform(-1e-3, 1e-3, 400)
        assert abs(auc(labels, noisy) - auc(labels, scores)) <= bound
    with pytest.raises(DataValidationError, match="delta must be"):
        auc_sensitivity(labels, scores, -1.0)
