"""An XLong-style synthetic click-log generator where early behaviour matters.

Shape letters: U users, T = L + 2 events per user (a history of L, then the two targets of the
XLong train and test lines), C categories, S sessions of one user.

The structure, each part a knob of `SyntheticConfig`:

* **Catalogue**: C categories whose popularity follows a Zipf law (``category_skew``); popular
  categories hold more items; inside a category, item popularity is skewed by ``item_skew``.
* **Sessions**: a user's clicks come in sessions (mean length ``mean_session_length``). Each session
  picks one category: one of the user's ``long_term_interests`` (probability ``p_long_term``), a
  neighbour of the previous session's category (``p_drift``: drifting short-term interest), or a
  random category by popularity (the rest). Each click is a random popular item with probability
  ``noise``.
* **Dormant interest**: every user has one more category, the dormant interest, that fills a share
  ``p_early`` of the sessions in the first ``early_fraction`` of the history, then never appears in
  the history again.
* **Returns**: with probability ``p_return`` a user's dormant interest comes back once, at one of
  the last ``target_events`` events (the targets: train, validation and test for event logs; the
  XLong lines' targets), chosen uniformly; the other events follow the session process. Each
  target is thus a return with probability ``p_return / target_events``.

So a model that forgets the first tenth of a 1,000-click history misses about
``p_return / target_events`` of the targets; `cmrec.eval.heuristics` measures how much a
whole-history look is worth over a recent one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from cmrec.data.schema import CATEGORY, ITEM, TIMESTAMP, USER
from cmrec.errors import ConfigError

TARGETS_PER_LINE_FILE = 2  # positions L (XLong train target) and L + 1 (XLong test target)
BASE_TIME = 1_600_000_000  # epoch seconds of the earliest possible first click


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the generator (see the module docstring); defaults make a 2,000 x 1,000 demo set."""

    users: int = field(default=2000, metadata={"help": "number of users"})
    length: int = field(
        default=1000, metadata={"help": "history length L of every user (the XLong lines' histories)"}
    )
    items: int = field(default=20000, metadata={"help": "catalogue size"})
    categories: int = field(default=200, metadata={"help": "number of categories"})
    category_skew: float = field(default=1.0, metadata={"help": "Zipf exponent of category popularity"})
    item_skew: float = field(
        default=2.0, metadata={"help": "skew of item popularity inside a category (1 = uniform)"}
    )
    long_term_interests: int = field(default=3, metadata={"help": "long-term interest categories per user"})
    mean_session_length: float = field(default=20.0, metadata={"help": "mean clicks per session"})
    p_long_term: float = field(
        default=0.45, metadata={"help": "chance that a session is on a long-term interest"}
    )
    p_drift: float = field(
        default=0.3,
        metadata={"help": "chance that a session drifts to a neighbour of the previous one's category"},
    )
    noise: float = field(default=0.1, metadata={"help": "chance that a click is a random popular item"})
    early_fraction: float = field(
        default=0.1, metadata={"help": "share of the history in which the dormant interest is active"}
    )
    p_early: float = field(default=0.6, metadata={"help": "share of early sessions on the dormant interest"})
    p_return: float = field(
        default=0.9, metadata={"help": "chance that a user's dormant interest returns at one of the targets"}
    )
    target_events: int = field(
        default=3, metadata={"help": "trailing events that may be the return (train, validation, test)"}
    )
    seed: int = field(default=0, metadata={"help": "random seed; the same seed gives the same data"})

    def __post_init__(self) -> None:
        positive = ("users", "length", "items", "categories", "long_term_interests", "target_events")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.categories < self.long_term_interests + 2:
            raise ConfigError("categories must exceed long_term_interests + 1 (the dormant interest)")
        if self.items < self.categories:
            raise ConfigError(f"items ({self.items}) must be >= categories ({self.categories})")
        if self.mean_session_length < 1:
            raise ConfigError(f"mean_session_length must be >= 1, got {self.mean_session_length}")
        for name in ("p_long_term", "p_drift", "noise", "early_fraction", "p_early", "p_return"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {value}")
        if self.p_long_term + self.p_drift > 1.0:
            raise ConfigError("p_long_term + p_drift must be <= 1")
        if self.target_events > self.length + TARGETS_PER_LINE_FILE - 1:
            raise ConfigError("target_events must leave at least one history event")

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class SyntheticLog:
    """The generated clicks as (U, T) matrices, 1-based ids, plus each user's dormant category.

    The catalogue (``category_sizes`` items per category, ids from ``first_item + 1``) and each
    user's 0-based ``long_term`` categories are kept for `later_clicks`.
    """

    config: SyntheticConfig
    items: np.ndarray
    categories: np.ndarray
    timestamps: np.ndarray
    dormant: np.ndarray
    is_return: np.ndarray
    long_term: np.ndarray  # (U, I) 0-based categories
    category_sizes: np.ndarray  # (C,)
    first_item: np.ndarray  # (C,) 0-based offset of each category's first item

    def events(self) -> pd.DataFrame:
        """The event log (U * T rows, sorted by user and time)."""
        users, steps = self.items.shape
        return pd.DataFrame(
            {
                USER: np.repeat(np.arange(1, users + 1, dtype=np.int64), steps),
                ITEM: self.items.reshape(-1),
                TIMESTAMP: self.timestamps.reshape(-1),
                CATEGORY: self.categories.reshape(-1),
            }
        )


def generate(config: SyntheticConfig) -> SyntheticLog:
    """Generate a click log; the same config (seed included) gives the same log.

    One function on purpose: every draw comes from one RNG stream in a fixed order, and that order
    is what makes a seed's log reproducible across versions; split it and a reordered draw would
    silently change every published figure.
    """
    rng = np.random.default_rng(config.seed)
    users, steps, n_cat = config.users, config.length + TARGETS_PER_LINE_FILE, config.categories

    cat_pop = 1.0 / np.arange(1, n_cat + 1) ** config.category_skew
    cat_pop /= cat_pop.sum()
    share = np.sqrt(cat_pop) / np.sqrt(cat_pop).sum()  # popular categories hold more items
    sizes = 1 + rng.multinomial(config.items - n_cat, share)
    first_item = np.concatenate([[0], np.cumsum(sizes)[:-1]])

    long_term = rng.choice(n_cat, size=(users, config.long_term_interests), p=cat_pop)  # (U, I)
    dormant = _distinct_from(rng.choice(n_cat, size=users, p=cat_pop), long_term, n_cat, rng)  # (U,)

    # Sessions: a new session starts at each step with probability 1 / mean length.
    starts = rng.random((users, steps)) < 1.0 / config.mean_session_length
    starts[:, 0] = True
    session = np.cumsum(starts, axis=1) - 1  # (U, T) session index of every click
    n_sessions = int(session.max()) + 1
    kind = rng.random((users, n_sessions))
    long_pick = np.take_along_axis(long_term, rng.integers(0, long_term.shape[1], (users, n_sessions)), 1)
    random_pick = rng.choice(n_cat, size=(users, n_sessions), p=cat_pop)
    step = rng.choice(np.array([-1, 1]), size=(users, n_sessions))
    session_cat = _session_categories(config, kind, long_pick, random_pick, step, long_pick[:, 0])  # (U, S)
    early_session = rng.random((users, n_sessions)) < config.p_early

    cats = np.take_along_axis(session_cat, session, 1)  # (U, T)
    noisy = rng.random((users, steps)) < config.noise
    cats = np.where(noisy, rng.choice(n_cat, size=(users, steps), p=cat_pop), cats)
    position = np.arange(steps)[None, :]
    early = (position < config.early_fraction * config.length) & np.take_along_axis(early_session, session, 1)
    cats = np.where(early, dormant[:, None], cats)
    # The dormant interest goes quiet after the early part: move any later click to a neighbour.
    quiet = (position >= config.early_fraction * config.length) & (cats == dormant[:, None])
    cats = np.where(quiet, (cats + 1) % n_cat, cats)
    # At most one return per user, at a uniformly chosen target position, so that no earlier
    # target gives the dormant interest away to a short-range look.
    return_at = steps - config.target_events + rng.integers(0, config.target_events, users)
    returns = rng.random(users) < config.p_return
    is_return = (position == return_at[:, None]) & returns[:, None]
    cats = np.where(is_return, dormant[:, None], cats)

    rank = np.floor(sizes[cats] * rng.random((users, steps)) ** config.item_skew).astype(np.int64)
    items = first_item[cats] + np.minimum(rank, sizes[cats] - 1) + 1  # 1-based item ids

    gaps = np.where(starts, rng.exponential(86_400.0, (users, steps)), rng.exponential(120.0, (users, steps)))
    gaps = np.maximum(gaps.astype(np.int64), 1)
    gaps[:, 0] = BASE_TIME + rng.integers(0, 30 * 86_400, users)
    timestamps = np.cumsum(gaps, axis=1)
    return SyntheticLog(
        config=config,
        items=items,
        categories=cats + 1,
        timestamps=timestamps,
        dormant=dormant + 1,
        is_return=is_return,
        long_term=long_term,
        category_sizes=sizes,
        first_item=first_item,
    )


def later_clicks(log: SyntheticLog, clicks: int, seed: int = 1) -> pd.DataFrame:
    """`clicks` more clicks per user, after the log ends (a "day 2" file for serving jobs).

    The same users go on with the same session process (long-term interests, drift from their
    last category, popular categories, noise, item popularity); the dormant interest stays quiet.
    The first new click comes a session gap (mean one day) after the user's last one. An RNG of
    its own (``[config.seed, seed]``): `generate`'s stream, and so the log itself, is untouched.
    Returns an event log (``clicks`` rows per user, sorted by user and time).
    """
    if clicks < 1:
        raise ConfigError(f"clicks must be >= 1, got {clicks}")
    config = log.config
    rng = np.random.default_rng([config.seed, seed])
    users, n_cat = log.items.shape[0], config.categories
    cat_pop = 1.0 / np.arange(1, n_cat + 1) ** config.category_skew
    cat_pop /= cat_pop.sum()
    starts = rng.random((users, clicks)) < 1.0 / config.mean_session_length
    starts[:, 0] = True
    session = np.cumsum(starts, axis=1) - 1  # (U, D)
    n_sessions = int(session.max()) + 1
    kind = rng.random((users, n_sessions))
    picks = rng.integers(0, log.long_term.shape[1], (users, n_sessions))
    long_pick = np.take_along_axis(log.long_term, picks, 1)
    random_pick = rng.choice(n_cat, size=(users, n_sessions), p=cat_pop)
    step = rng.choice(np.array([-1, 1]), size=(users, n_sessions))
    session_cat = _session_categories(config, kind, long_pick, random_pick, step, log.categories[:, -1] - 1)
    cats = np.take_along_axis(session_cat, session, 1)
    noisy = rng.random((users, clicks)) < config.noise
    cats = np.where(noisy, rng.choice(n_cat, size=(users, clicks), p=cat_pop), cats)
    dormant = log.dormant[:, None] - 1
    cats = np.where(cats == dormant, (cats + 1) % n_cat, cats)
    sizes = log.category_sizes
    rank = np.floor(sizes[cats] * rng.random((users, clicks)) ** config.item_skew).astype(np.int64)
    items = log.first_item[cats] + np.minimum(rank, sizes[cats] - 1) + 1
    gaps = np.where(
        starts, rng.exponential(86_400.0, (users, clicks)), rng.exponential(120.0, (users, clicks))
    )
    timestamps = log.timestamps[:, -1:] + np.cumsum(np.maximum(gaps.astype(np.int64), 1), axis=1)
    return pd.DataFrame(
        {
            USER: np.repeat(np.arange(1, users + 1, dtype=np.int64), clicks),
            ITEM: items.reshape(-1),
            TIMESTAMP: timestamps.reshape(-1),
            CATEGORY: (cats + 1).reshape(-1),
        }
    )


def xlong_rows(log: SyntheticLog, split: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(history matrix, positive items, negative items) of the XLong train or test lines.

    Train line of a user: history = clicks [0, L), positive = click L. Test line: history = clicks
    [1, L + 1) (the L clicks before the target), positive = click L + 1. Negatives are uniform items
    other than the positive, as in XLong.
    """
    length = log.config.length
    offset = {"train": 0, "test": 1}[split]
    history = log.items[:, offset : offset + length]
    positives = log.items[:, offset + length]
    rng = np.random.default_rng([log.config.seed, seed, offset])
    negatives = rng.integers(1, log.config.items + 1, size=len(positives))
    while (clash := negatives == positives).any():
        negatives[clash] = rng.integers(1, log.config.items + 1, size=int(clash.sum()))
    return history, positives, negatives


def _session_categories(
    config: SyntheticConfig,
    kind: np.ndarray,
    long_pick: np.ndarray,
    random_pick: np.ndarray,
    step: np.ndarray,
    previous: np.ndarray,
) -> np.ndarray:
    """(U, S) category of each session from its draws: a long-term interest, a drift from the
    previous session's category (``previous`` before the first) or a popular category."""
    session_cat = np.empty(kind.shape, dtype=np.int64)
    for s in range(kind.shape[1]):  # sequential over sessions only, vectorised over users
        drift = (previous + step[:, s]) % config.categories
        session_cat[:, s] = np.where(
            kind[:, s] < config.p_long_term,
            long_pick[:, s],
            np.where(kind[:, s] < config.p_long_term + config.p_drift, drift, random_pick[:, s]),
        )
        previous = session_cat[:, s]
    return session_cat


def _distinct_from(picks: np.ndarray, taken: np.ndarray, n_cat: int, rng: np.random.Generator) -> np.ndarray:
    """Redraw picks (uniformly) until none equals a category in the same row of `taken`."""
    picks = picks.copy()
    while (clash := (picks[:, None] == taken).any(axis=1)).any():
        picks[clash] = rng.integers(0, n_cat, int(clash.sum()))
    return picks
