"""From a validated event log to train / validation / test samples without leakage.

Split strategies (`SplitConfig.strategy`):

* ``leave-last-out`` (default): per user, the last event is the test target, the one before it the
  validation target, and up to ``train_targets_per_user`` events before that are training targets.
* ``time``: a global cut. Per user, the first event at or after ``test_cut`` is the test target, the
  first event in ``[valid_cut, test_cut)`` the validation target, and the last
  ``train_targets_per_user`` events before ``valid_cut`` the training targets.

A target's history is every event of the user strictly before it, cut to the last ``max_len``. So no
test target lies in any training history or is a training target (the tests check this), and the
vocabularies are fitted on the training region only: an item first clicked as a validation or test
target is out of vocabulary, as it would be in production.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from cmrec.data.samples import (
    Histories,
    NegativeSampler,
    Samples,
    Sampling,
    concat_ranges,
    paired_samples,
)
from cmrec.data.schema import CATEGORY, ITEM, OOV_INDEX, TIMESTAMP, USER
from cmrec.data.vocab import Vocab
from cmrec.errors import ConfigError, DataValidationError

Strategy = Literal["leave-last-out", "time"]
SPLITS = ("train", "valid", "test")
_REGION = {"leave-last-out": "events before each user's last two", "time": "events before valid_cut"}


@dataclass(frozen=True)
class SplitConfig:
    """How event logs become samples.

    Args:
        max_len: longest history a sample sees (the paper's XLong: 1,000).
        strategy: "leave-last-out" or "time" (see the module docstring).
        train_targets_per_user: training targets per user (XLong has one).
        min_history: a target needs at least this many earlier events.
        valid_cut / test_cut: the timestamps of the "time" strategy (same unit as the log).
        negatives: "uniform" (XLong's choice) or "popularity" negative sampling.
        seed: seeds negative sampling; the same seed gives the same samples.
    """

    max_len: int = 1000
    strategy: Strategy = "leave-last-out"
    train_targets_per_user: int = 1
    min_history: int = 1
    valid_cut: float | None = None
    test_cut: float | None = None
    negatives: Sampling = "uniform"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_len < 1:
            raise ConfigError(f"max_len must be >= 1, got {self.max_len}")
        if self.train_targets_per_user < 1:
            raise ConfigError(f"train_targets_per_user must be >= 1, got {self.train_targets_per_user}")
        if self.min_history < 0:
            raise ConfigError(f"min_history must be >= 0, got {self.min_history}")
        if self.negatives not in ("uniform", "popularity"):
            raise ConfigError(f"negatives must be 'uniform' or 'popularity', got {self.negatives!r}")
        if self.strategy == "time":
            if self.valid_cut is None or self.test_cut is None:
                raise ConfigError("the 'time' split needs valid_cut and test_cut")
            if not self.valid_cut < self.test_cut:
                raise ConfigError(f"valid_cut ({self.valid_cut}) must be before test_cut ({self.test_cut})")
        elif self.strategy != "leave-last-out":
            raise ConfigError(f"strategy must be 'leave-last-out' or 'time', got {self.strategy!r}")


@dataclass(frozen=True)
class Vocabularies:
    """Every id mapping a model depends on; saved and loaded with it.

    Args:
        users, items: vocabularies of user and item ids.
        categories: vocabulary of category ids, or None when the data has none.
        item_category: (len(items),) int64 category index of each item index (OOV where unknown),
            or None without categories; gives sampled negatives their category.
    """

    users: Vocab
    items: Vocab
    categories: Vocab | None = None
    item_category: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "users": self.users.to_dict(),
            "items": self.items.to_dict(),
            "categories": None if self.categories is None else self.categories.to_dict(),
            "item_category": None if self.item_category is None else self.item_category.tolist(),
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Vocabularies:
        try:
            categories = state["categories"]
            item_category = state["item_category"]
            return cls(
                users=Vocab.from_dict(state["users"]),
                items=Vocab.from_dict(state["items"]),
                categories=None if categories is None else Vocab.from_dict(categories),
                item_category=None if item_category is None else np.asarray(item_category, np.int64),
            )
        except (KeyError, TypeError) as exc:
            raise DataValidationError(f"not saved vocabularies (missing {exc})") from exc

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> Vocabularies:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise DataValidationError(f"{path}: cannot read vocabularies: {exc}") from exc


@dataclass(frozen=True)
class ClickLogData:
    """Histories stored once, the three sample splits, and the vocabularies that encode them."""

    histories: Histories
    train: Samples
    valid: Samples
    test: Samples
    vocabs: Vocabularies
    max_len: int
    stats: dict[str, int] = field(default_factory=dict)

    def split(self, name: str) -> Samples:
        if name not in SPLITS:
            raise ConfigError(f"split must be one of {SPLITS}, got {name!r}")
        samples: Samples = getattr(self, name)
        return samples

    def summary(self) -> dict[str, Any]:
        lengths = self.histories.lengths
        return {
            **self.stats,
            "sequences": self.histories.num_sequences,
            "events": int(lengths.sum()),
            "items": self.vocabs.items.num_known,
            "categories": 0 if self.vocabs.categories is None else self.vocabs.categories.num_known,
            "train_samples": len(self.train),
            "valid_samples": len(self.valid),
            "test_samples": len(self.test),
            "history_bytes": self.histories.nbytes,
        }


def check_category_column(events: pd.DataFrame, vocabs: Vocabularies, source: str = "") -> None:
    """Refuse an event log whose category column does not match the model's (named `source`)."""
    has_categories = CATEGORY in events.columns
    if has_categories != (vocabs.categories is not None):
        raise DataValidationError(
            f"{source + ': ' if source else ''}the model was trained "
            f"{'with' if vocabs.categories is not None else 'without'} a {CATEGORY!r} column; "
            f"this event log {'has' if has_categories else 'lacks'} one"
        )


def _item_vocabs(
    events: pd.DataFrame, train_region: np.ndarray, config: SplitConfig, vocabs: Vocabularies | None
) -> tuple[Vocab, Vocab | None]:
    """The item and category vocabularies: a trained model's, or fitted on the training region."""
    if vocabs is not None:
        check_category_column(events, vocabs)
        return vocabs.items, vocabs.categories
    items = Vocab.fit(events[ITEM][train_region], name="item")
    has_categories = CATEGORY in events.columns
    categories = Vocab.fit(events[CATEGORY][train_region], name="category") if has_categories else None
    if items.num_known < 2:
        raise DataValidationError(
            f"too little data: the training region ({_REGION[config.strategy]}) holds "
            f"{items.num_known} distinct item(s); sampling negatives needs at least 2"
        )
    return items, categories


def _item_category(num_items: int, item_idx: np.ndarray, cat_idx: np.ndarray) -> np.ndarray:
    """(num_items,) the category of each item (its first event's), OOV for items never seen."""
    item_category = np.full(num_items, OOV_INDEX, dtype=np.int64)
    known, first = np.unique(item_idx, return_index=True)
    item_category[known] = cat_idx[first]
    item_category[0] = 0
    item_category[OOV_INDEX] = OOV_INDEX
    return item_category


def _split_samples(
    seq: np.ndarray,
    t: np.ndarray,
    offsets: np.ndarray,
    item_idx: np.ndarray,
    cat_idx: np.ndarray | None,
    item_category: np.ndarray | None,
    sampler: NegativeSampler,
    rng: np.random.Generator,
) -> Samples:
    """The (positive, sampled negative) pairs of the targets at positions t of sequences seq."""
    flat = offsets[seq] + t
    positives = item_idx[flat].astype(np.int64)
    return paired_samples(
        sequence=seq,
        prefix_len=t,
        positives=positives,
        negatives=sampler.sample(positives, rng),
        positive_categories=None if cat_idx is None else cat_idx[flat].astype(np.int64),
        item_category=item_category,
    )


def build_from_events(
    events: pd.DataFrame, config: SplitConfig | None = None, vocabs: Vocabularies | None = None
) -> ClickLogData:
    """Turn a validated, sorted event log (`read_events`) into samples.

    Args:
        events: output of `read_events` / `validate_events`.
        config: split and sampling settings; defaults to `SplitConfig()`.
        vocabs: the vocabularies of a trained model, to encode new data the way it was trained
            (unknown ids become OOV); fitted on the training region when None.
    """
    config = config or SplitConfig()
    user_vocab = vocabs.users if vocabs else Vocab.fit(events[USER], name="user")
    # Events are sorted by user; each user's run of rows is one sequence.
    user_codes, _ = pd.factorize(events[USER], sort=False)
    change = np.flatnonzero(np.diff(user_codes)) + 1
    offsets = np.concatenate([[0], change, [len(events)]]).astype(np.int64)
    lengths = np.diff(offsets)
    seq_of_event = np.repeat(np.arange(len(lengths)), lengths)
    position = np.arange(len(events)) - offsets[seq_of_event]
    timestamps = events[TIMESTAMP].to_numpy()

    targets, train_region = _choose_targets(config, offsets, lengths, position, timestamps, seq_of_event)

    items, categories = _item_vocabs(events, train_region, config, vocabs)
    item_idx = items.encode(events[ITEM]).astype(np.int32)
    cat_idx = categories.encode(events[CATEGORY]).astype(np.int32) if categories is not None else None
    item_category = vocabs.item_category if vocabs else None
    if item_category is None and cat_idx is not None:
        item_category = _item_category(len(items), item_idx[train_region], cat_idx[train_region])
    counts = np.bincount(item_idx[train_region], minlength=len(items))
    sampler = NegativeSampler(num_items=len(items), strategy=config.negatives, counts=counts)

    histories = Histories(
        items=item_idx,
        categories=cat_idx,
        offsets=offsets,
        users=user_vocab.encode(events[USER].iloc[offsets[:-1]]),
    )
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(len(SPLITS))]
    splits = {}
    for name, rng in zip(SPLITS, rngs, strict=True):
        seq, t = targets[name]
        splits[name] = _split_samples(seq, t, offsets, item_idx, cat_idx, item_category, sampler, rng)
    stats = {
        "users": len(lengths),
        "users_with_test_target": len(targets["test"][0]),
        "users_dropped": len(lengths) - len(np.union1d(targets["test"][0], targets["train"][0])),
    }
    return ClickLogData(
        histories=histories,
        train=splits["train"],
        valid=splits["valid"],
        test=splits["test"],
        vocabs=Vocabularies(user_vocab, items, categories, item_category),
        max_len=config.max_len,
        stats=stats,
    )


def _choose_targets(
    config: SplitConfig,
    offsets: np.ndarray,
    lengths: np.ndarray,
    position: np.ndarray,
    timestamps: np.ndarray,
    seq_of_event: np.ndarray,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """Per split, (sequence index, target position) arrays; and the training-region event mask."""
    k = config.train_targets_per_user
    if config.strategy == "leave-last-out":
        valid_t = lengths - 2
        eligible = np.flatnonzero(valid_t >= config.min_history)
        train_region = position < (lengths - 2)[seq_of_event]
        # Training targets: up to k positions just before the validation target.
        first = np.maximum(config.min_history, valid_t - k)
        train_seq, train_t = _ranges(first[eligible], valid_t[eligible], eligible)
        return {
            "train": (train_seq, train_t),
            "valid": (eligible, valid_t[eligible]),
            "test": (eligible, lengths[eligible] - 1),
        }, train_region
    assert config.valid_cut is not None and config.test_cut is not None
    region = np.where(timestamps < config.valid_cut, 0, np.where(timestamps < config.test_cut, 1, 2))
    train_region = region == 0
    # First position of each region per user (regions are ordered in time within a user).
    n_train = np.bincount(seq_of_event, weights=train_region, minlength=len(lengths)).astype(np.int64)
    n_valid = np.bincount(seq_of_event, weights=region == 1, minlength=len(lengths)).astype(np.int64)
    valid_t, test_t = n_train, n_train + n_valid
    has_valid = (n_valid > 0) & (valid_t >= config.min_history)
    has_test = (test_t < lengths) & (test_t >= config.min_history)
    first = np.maximum(config.min_history, n_train - k)
    users = np.arange(len(lengths))
    train_seq, train_t = _ranges(first, n_train, users)
    return {
        "train": (train_seq, train_t),
        "valid": (np.flatnonzero(has_valid), valid_t[has_valid]),
        "test": (np.flatnonzero(has_test), test_t[has_test]),
    }, train_region


def _ranges(starts: np.ndarray, stops: np.ndarray, owners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated ranges [starts[i], stops[i]) with the owner of each value."""
    counts = np.maximum(stops - starts, 0)
    return np.repeat(owners, counts).astype(np.int64), concat_ranges(starts, counts)
