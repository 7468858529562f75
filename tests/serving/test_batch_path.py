"""`score_histories` (the batch path, any model) against the store path and the evaluation path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cmrec.data import SplitConfig, build_from_events, validate_events
from cmrec.errors import CmrecError
from cmrec.jobs import refresh_store, score_histories, score_requests
from cmrec.train import evaluate_split
from cmrec.train.checkpoint import CHECKPOINT, load_checkpoint
from tests.serving.conftest import make_run


def requests_of(log: pd.DataFrame, per_user: int = 3, seed: int = 0) -> pd.DataFrame:
    """`per_user` random known items for every user of the log."""
    rng = np.random.default_rng(seed)
    users = log["user_id"].unique()
    items = log["item_id"].unique()
    return pd.DataFrame(
        {"user_id": np.repeat(users, per_user), "item_id": rng.choice(items, len(users) * per_user)}
    )


# `cm` before issue 29: no recurrent row, no count sketch (the pending clicks written or read).
WAVE4 = {"recurrent_state": False, "count_buckets": 0, "item_buckets": 0, "recurrent_readout": "own"}


@pytest.mark.parametrize(
    ("recent", "config"),
    [(False, WAVE4), (True, WAVE4), (False, None), (True, None)],
    ids=["wave4-pending-written", "wave4-pending-read", "cm-pending-written", "cm-pending-read"],
)
def test_store_scores_equal_the_batch_path_over_the_same_clicks(
    tmp_path: Path, run_dir: Path, log: pd.DataFrame, log_file: Path, recent: bool, config: dict | None
) -> None:
    """Pending clicks written as a masked segment at request time, or (``recent_clicks``) read by
    the head beside the memory of whole segments: either way the store path is the batch path,
    with the recurrent row and the count sketch of `cm` too (the pending clicks advance them)."""
    run = make_run(tmp_path / "run", log, recent_clicks=recent, **(config or {}))
    requests = requests_of(log)
    refresh_store(run, log_file, tmp_path / "store", progress=False)
    stored = score_requests(run, tmp_path / "store", requests).frame["score"].to_numpy()
    batch = score_histories(run, validate_events(log), requests)
    lengths = log.groupby("user_id").size()
    assert (lengths % 4 != 0).any()  # some users have pending clicks (N = 4 in the tiny config)
    np.testing.assert_allclose(stored, batch, rtol=0, atol=1e-5)
    assert batch.std() > 1e-3  # the scores depend on the user and item: not one constant
    ignored = score_requests(run, tmp_path / "store", requests, pending="ignore").frame["score"].to_numpy()
    with_pending = requests["user_id"].map(lengths % 4 != 0).to_numpy()
    assert np.abs(ignored - stored)[with_pending].min() > 1e-7  # the pending clicks count
    np.testing.assert_allclose(ignored[~with_pending], stored[~with_pending], rtol=0, atol=1e-6)


def test_batch_path_changes_with_the_history(run_dir: Path, log: pd.DataFrame) -> None:
    requests = requests_of(log)
    whole = score_histories(run_dir, validate_events(log), requests)
    first_half = log.groupby("user_id").cumcount() < log.groupby("user_id")["item_id"].transform("size") // 2
    half = score_histories(run_dir, validate_events(log[first_half]), requests)
    assert np.abs(whole - half).max() > 1e-4


@pytest.mark.parametrize("name", ["avg-pool", "dien"])
def test_batch_path_equals_the_evaluation_path(tmp_path: Path, log: pd.DataFrame, name: str) -> None:
    run = make_run(tmp_path / name, log, name=name)
    model, vocabs, _ = load_checkpoint(run / CHECKPOINT)
    data = build_from_events(validate_events(log), SplitConfig(max_len=10_000), vocabs)
    expected = evaluate_split(model, data, "test").predictions.scores
    # The same test samples as raw requests, each with the clicks before its target as history.
    test = data.test
    assert test.target_category is not None and vocabs.categories is not None
    events = validate_events(log)
    offsets = data.histories.offsets
    users = vocabs.users.decode(data.histories.users[test.sequence])
    scores = np.empty(len(test), dtype=np.float32)
    for row in range(len(test)):
        start = offsets[test.sequence[row]]
        history = events.iloc[start : start + test.prefix_len[row]]
        # Index 1 (OOV): a click on an item, or in a category, outside the training region.
        item, category = test.target_item[row], test.target_category[row]
        raw_item = "never-trained-on" if item == 1 else vocabs.items.decode([item])[0]
        raw_category = "never-trained-on" if category == 1 else vocabs.categories.decode([category])[0]
        request = pd.DataFrame(
            {"user_id": [users[row]], "item_id": [raw_item], "category_id": [raw_category]}
        )
        scores[row] = score_histories(run, history, request)[0]
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-6)


def test_requests_of_users_without_clicks_are_refused(run_dir: Path, log: pd.DataFrame) -> None:
    requests = pd.DataFrame({"user_id": ["nobody", log["user_id"].iloc[0]], "item_id": [1, 1]})
    with pytest.raises(CmrecError, match=r"day-2\.parquet: no clicks of 1 requested users \(nobody\)"):
        score_histories(run_dir, validate_events(log), requests, source="day-2.parquet")
