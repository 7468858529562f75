from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmrec.data.dataset import ClickLogData, SplitConfig, Vocabularies, build_from_events
from cmrec.data.events import validate_events
from cmrec.data.schema import OOV_INDEX
from cmrec.errors import ConfigError, DataValidationError


def _log(lengths: list[int], n_items: int = 30, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [
        (u, int(rng.integers(1, n_items + 1)), t, int(rng.integers(0, 4)))
        for u, n in enumerate(lengths)
        for t in range(n)
    ]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "category_id"])
    return validate_events(frame)


def _targets(data: ClickLogData, split: str) -> tuple[np.ndarray, np.ndarray]:
    samples = data.split(split)
    return samples.sequence[0::2], samples.prefix_len[0::2]


def test_leave_last_out_positions() -> None:
    data = build_from_events(_log([10, 6, 2]), SplitConfig(train_targets_per_user=3, min_history=2))
    seq, t = _targets(data, "test")
    assert seq.tolist() == [0, 1] and t.tolist() == [9, 5]
    seq, t = _targets(data, "valid")
    assert seq.tolist() == [0, 1] and t.tolist() == [8, 4]
    seq, t = _targets(data, "train")
    assert seq.tolist() == [0, 0, 0, 1, 1] and t.tolist() == [5, 6, 7, 2, 3]
    assert data.stats["users_dropped"] == 1  # the 2-event user has no room for a target


def _assert_no_leakage(data: ClickLogData) -> None:
    test_seq, test_t = _targets(data, "test")
    test_position = dict(zip(test_seq.tolist(), test_t.tolist(), strict=True))
    for split in ("train", "valid"):
        seq, t = _targets(data, split)
        for s, prefix in zip(seq.tolist(), t.tolist(), strict=True):
            if s in test_position:
                # The history is events [:prefix] and the target is event prefix: both before the test event.
                assert prefix < test_position[s]
    train_seq, train_t = _targets(data, "train")
    valid_position = dict(zip(*_targets(data, "valid"), strict=True))
    for s, prefix in zip(train_seq.tolist(), train_t.tolist(), strict=True):
        if s in valid_position:
            assert prefix < valid_position[s]


@settings(max_examples=30, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 40), min_size=1, max_size=8),
    k=st.integers(1, 5),
    min_history=st.integers(0, 5),
    max_len=st.integers(1, 12),
)
def test_no_leakage_property(lengths: list[int], k: int, min_history: int, max_len: int) -> None:
    config = SplitConfig(train_targets_per_user=k, min_history=min_history, max_len=max_len)
    data = build_from_events(_log([30, *lengths]), config)
    _assert_no_leakage(data)
    for split in ("train", "valid", "test"):
        samples = data.split(split)
        assert np.all(samples.prefix_len >= min_history)
        assert np.all(samples.target_item[1::2] != samples.target_item[0::2])
        assert np.all(samples.target_item[1::2] >= 2)  # negatives are known items
        np.testing.assert_array_equal(samples.label, np.tile([1.0, 0.0], len(samples) // 2))


def test_vocab_is_fitted_on_the_training_region_only() -> None:
    frame = pd.DataFrame(
        {
            "user_id": [1] * 5,
            "item_id": [10, 11, 12, 13, 99],  # 13 is the validation target, 99 the test target
            "timestamp": range(5),
            "category_id": [1, 1, 2, 2, 3],
        }
    )
    data = build_from_events(validate_events(frame))
    assert set(data.vocabs.items.ids) == {"10", "11", "12"}
    assert data.test.target_item[0] == OOV_INDEX
    assert data.valid.target_item[0] == OOV_INDEX
    assert data.test.target_category[0] == OOV_INDEX


def test_negatives_are_deterministic_and_popularity_follows_counts() -> None:
    log = _log([200] * 20, n_items=50)
    a = build_from_events(log, SplitConfig(seed=3, train_targets_per_user=100))
    b = build_from_events(log, SplitConfig(seed=3, train_targets_per_user=100))
    c = build_from_events(log, SplitConfig(seed=4, train_targets_per_user=100))
    np.testing.assert_array_equal(a.train.target_item, b.train.target_item)
    assert not np.array_equal(a.train.target_item, c.train.target_item)

    skewed = validate_events(
        pd.DataFrame(
            {
                "user_id": np.repeat(np.arange(20), 100),
                "item_id": np.r_[[1] * 1800, np.arange(2, 202)],
                "timestamp": np.tile(np.arange(100), 20),
            }
        )
    )
    pop = build_from_events(skewed, SplitConfig(negatives="popularity", train_targets_per_user=90))
    uni = build_from_events(skewed, SplitConfig(negatives="uniform", train_targets_per_user=90))
    item_one = pop.vocabs.items.encode([1])[0]
    # Item 1 is 90% of the training clicks; a negative never equals its own positive.
    other = pop.train.target_item[0::2] != item_one
    pop_share = np.mean(pop.train.target_item[1::2][other] == item_one)
    uni_share = np.mean(uni.train.target_item[1::2][other] == item_one)
    assert pop_share > 0.8
    assert uni_share < 0.05


def test_negative_category_is_the_items_category() -> None:
    data = build_from_events(_log([30] * 5), SplitConfig(train_targets_per_user=10))
    negatives = data.train.target_item[1::2]
    np.testing.assert_array_equal(data.train.target_category[1::2], data.vocabs.item_category[negatives])


def test_time_split() -> None:
    log = _log([20] * 4)
    data = build_from_events(
        log, SplitConfig(strategy="time", valid_cut=10, test_cut=15, train_targets_per_user=3)
    )
    assert _targets(data, "test")[1].tolist() == [15] * 4
    assert _targets(data, "valid")[1].tolist() == [10] * 4
    assert _targets(data, "train")[1].tolist() == [7, 8, 9] * 4
    _assert_no_leakage(data)


def test_reusing_vocabularies_encodes_new_data_the_same_way(tmp_path: Path) -> None:
    data = build_from_events(_log([12] * 3))
    data.vocabs.save(tmp_path / "vocabs.json")
    loaded = Vocabularies.load(tmp_path / "vocabs.json")
    again = build_from_events(_log([12] * 3), vocabs=loaded)
    np.testing.assert_array_equal(again.histories.items, data.histories.items)
    np.testing.assert_array_equal(again.vocabs.item_category, data.vocabs.item_category)
    no_categories = _log([12] * 3).drop(columns="category_id")
    with pytest.raises(DataValidationError, match="trained with a 'category_id' column"):
        build_from_events(no_categories, vocabs=loaded)


def test_too_little_data_is_a_clear_error() -> None:
    with pytest.raises(DataValidationError, match="too little data: the training region"):
        build_from_events(_log([2, 2]))


def test_history_memory_is_eight_bytes_per_event() -> None:
    data = build_from_events(_log([100] * 10))
    assert data.histories.nbytes == 1000 * 8 + 11 * 8 + 10 * 8  # item + category int32, offsets, users


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_len": 0}, "max_len must be >= 1"),
        ({"train_targets_per_user": 0}, "train_targets_per_user"),
        ({"strategy": "time"}, "needs valid_cut and test_cut"),
        ({"strategy": "time", "valid_cut": 5, "test_cut": 5}, "must be before"),
        ({"strategy": "random"}, "strategy must be"),
        ({"negatives": "hard"}, "negatives must be"),
    ],
)
def test_bad_split_config(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SplitConfig(**kwargs)  # type: ignore[arg-type]
