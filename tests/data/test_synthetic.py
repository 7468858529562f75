from __future__ import annotations

import numpy as np
import pytest

from cmrec.data.dataset import SplitConfig, build_from_events
from cmrec.data.events import validate_events
from cmrec.data.synthetic import SyntheticConfig, generate, later_clicks
from cmrec.errors import ConfigError
from cmrec.eval.heuristics import frequency_auc, frequency_scores

SMALL = SyntheticConfig(users=400, length=300, items=3000, categories=60, seed=11)


def test_same_seed_same_log_other_seed_other_log() -> None:
    a, b = generate(SMALL), generate(SMALL)
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_array_equal(a.timestamps, b.timestamps)
    c = generate(SyntheticConfig(**{**SMALL.to_dict(), "seed": 12}))
    assert not np.array_equal(a.items, c.items)


def test_documented_structure() -> None:
    log = generate(SMALL)
    steps = SMALL.length + 2
    assert log.items.shape == (SMALL.users, steps)
    assert log.items.min() >= 1 and log.items.max() <= SMALL.items
    assert np.all(np.diff(log.timestamps, axis=1) > 0)
    # Returns: at most one per user, only among the last target_events clicks.
    assert log.is_return[:, : steps - SMALL.target_events].sum() == 0
    assert log.is_return.sum(axis=1).max() == 1
    assert abs(log.is_return.any(axis=1).mean() - SMALL.p_return) < 0.05
    dormant = log.categories == log.dormant[:, None]
    early = int(SMALL.early_fraction * SMALL.length)
    # The dormant interest fills about p_early of the early clicks, is absent later except at returns.
    assert 0.4 < dormant[:, :early].mean() < 0.7
    np.testing.assert_array_equal(dormant[:, early:], log.is_return[:, early:])
    # Skewed category popularity: the 10% most clicked categories take a large share of clicks.
    counts = np.sort(np.bincount(log.categories.ravel()))[::-1]
    assert counts[: SMALL.categories // 10].sum() / counts.sum() > 0.3
    # Sessions: consecutive clicks mostly share a category (mean session length 20, 10% noise).
    same = (log.categories[:, 1:] == log.categories[:, :-1]).mean()
    assert 0.7 < same < 0.95


def test_later_clicks_continue_each_user_without_touching_the_log() -> None:
    log = generate(SMALL)
    day2 = later_clicks(log, 50)
    assert len(day2) == SMALL.users * 50 and list(day2.columns) == list(log.events().columns)
    users = day2["user_id"].to_numpy().reshape(SMALL.users, 50)
    np.testing.assert_array_equal(users[:, 0], np.arange(1, SMALL.users + 1))
    times = day2["timestamp"].to_numpy().reshape(SMALL.users, 50)
    assert (times[:, 0] > log.timestamps[:, -1]).all() and (np.diff(times, axis=1) > 0).all()
    cats = day2["category_id"].to_numpy().reshape(SMALL.users, 50)
    assert not (cats == log.dormant[:, None]).any()  # the dormant interest stays quiet
    # The same users: about p_long_term of the sessions (plus drift) on their long-term interests.
    interests = (cats[:, :, None] == log.long_term[:, None, :] + 1).any(axis=2)
    assert 0.35 < interests.mean() < 0.75
    other = generate(SyntheticConfig(**{**SMALL.to_dict(), "seed": 12}))
    assert (cats[:, :, None] == other.long_term[:, None, :] + 1).any(axis=2).mean() < 0.25
    # Items follow the catalogue: each item id lies inside its category's id range.
    start = log.first_item[cats - 1] + 1
    assert (
        (day2["item_id"].to_numpy().reshape(SMALL.users, 50) - start) < log.category_sizes[cats - 1]
    ).all()
    assert day2.equals(later_clicks(log, 50)) and not day2.equals(later_clicks(log, 50, seed=2))
    np.testing.assert_array_equal(generate(SMALL).items, log.items)
    with pytest.raises(ConfigError, match="clicks must be >= 1"):
        later_clicks(log, 0)


def test_long_range_memory_is_worth_something() -> None:
    log = generate(SMALL)
    data = build_from_events(validate_events(log.events()), SplitConfig(max_len=SMALL.length))
    recent = frequency_auc(data.histories, data.test, SMALL.length, window=50)
    whole = frequency_auc(data.histories, data.test, SMALL.length, window=None)
    assert whole > recent + 0.05
    assert recent > 0.6


def test_frequency_scores_by_hand() -> None:
    log = generate(SyntheticConfig(users=3, length=10, items=50, categories=5, seed=1))
    data = build_from_events(validate_events(log.events()), SplitConfig(max_len=4))
    scores = frequency_scores(data.histories, data.test, max_len=4, window=None)
    for row in range(len(data.test)):
        stop = data.histories.offsets[data.test.sequence[row]] + data.test.prefix_len[row]
        window = data.histories.categories[stop - 4 : stop]
        assert scores[row] == pytest.approx(np.mean(window == data.test.target_category[row]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"users": 0}, "users must be >= 1"),
        ({"p_return": 1.5}, r"p_return must be in \[0, 1\]"),
        ({"p_long_term": 0.8, "p_drift": 0.3}, "p_long_term \\+ p_drift"),
        ({"categories": 3}, "categories must exceed"),
        ({"items": 10, "categories": 20}, "items .* must be >= categories"),
    ],
)
def test_bad_config(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SyntheticConfig(**kwargs)  # type: ignore[arg-type]
