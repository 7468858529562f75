"""Samples that point into histories stored once.

Shape letters: S sequences (one per user for event logs, one per line for XLong files), E events in
all sequences together, n samples.

A user's history is stored once, flat (`Histories`); a sample row (`Samples`) is only
``(sequence, prefix_len, target, label)``: its history is the last ``max_len`` events of the first
``prefix_len`` events of its sequence. No 1,000-item history is ever copied per sample. Every target
gives two adjacent rows, the real click (label 1) and a sampled negative (label 0), as in XLong.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

import numpy as np

from cmrec.data.schema import OOV_INDEX
from cmrec.data.vocab import NUM_RESERVED
from cmrec.errors import ConfigError, DataValidationError


def concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The ranges ``[starts[i], starts[i] + lengths[i])`` one after another, as one int64 array.

    Example::

        concat_ranges(np.array([5, 0]), np.array([2, 3]))   # array([5, 6, 0, 1, 2])
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    shift = np.repeat(np.asarray(starts, dtype=np.int64) - (np.cumsum(lengths) - lengths), lengths)
    return shift + np.arange(int(lengths.sum()), dtype=np.int64)


@dataclass(frozen=True)
class Histories:
    """All sequences, stored once.

    Args:
        items: (E,) int32 item indices, sequence after sequence, each in time order.
        categories: (E,) int32 category indices, or None when the data has no categories.
        offsets: (S + 1,) int64; sequence s is ``items[offsets[s]:offsets[s + 1]]``.
        users: (S,) int64 user index of each sequence.
    """

    items: np.ndarray
    categories: np.ndarray | None
    offsets: np.ndarray
    users: np.ndarray

    def __post_init__(self) -> None:
        if self.offsets.ndim != 1 or self.offsets[0] != 0 or self.offsets[-1] != len(self.items):
            raise DataValidationError("Histories: offsets must start at 0 and end at len(items)")
        if np.any(np.diff(self.offsets) < 0):
            raise DataValidationError("Histories: offsets must not decrease")
        if self.categories is not None and len(self.categories) != len(self.items):
            raise DataValidationError("Histories: items and categories differ in length")
        if len(self.users) != len(self.offsets) - 1:
            raise DataValidationError("Histories: one user per sequence")

    @property
    def num_sequences(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays (what 20,000 users x 1,000 events cost in memory)."""
        arrays = [self.items, self.offsets, self.users]
        if self.categories is not None:
            arrays.append(self.categories)
        return int(sum(a.nbytes for a in arrays))

    def sequence(self, s: int) -> np.ndarray:
        return self.items[self.offsets[s] : self.offsets[s + 1]]


@dataclass(frozen=True)
class Samples:
    """Sample rows; the positive and negative of one target are adjacent (rows 2i and 2i + 1).

    Args:
        sequence: (n,) int64 index into `Histories`.
        prefix_len: (n,) int64; the history is the sequence's events ``[:prefix_len]`` (the target
            itself is not part of it), cut to the last ``max_len`` by the collate function.
        target_item: (n,) int64 item index.
        target_category: (n,) int64 category index, or None.
        label: (n,) float32, 1 for the real click, 0 for the sampled negative.
    """

    sequence: np.ndarray
    prefix_len: np.ndarray
    target_item: np.ndarray
    target_category: np.ndarray | None
    label: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.sequence)
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and len(value) != n:
                raise DataValidationError(f"Samples: {f.name} has {len(value)} rows, expected {n}")

    def __len__(self) -> int:
        return len(self.sequence)

    def take(self, rows: np.ndarray) -> Samples:
        """The samples at `rows` (an index array or boolean mask), in that order."""
        categories = self.target_category
        return Samples(
            sequence=self.sequence[rows],
            prefix_len=self.prefix_len[rows],
            target_item=self.target_item[rows],
            target_category=None if categories is None else categories[rows],
            label=self.label[rows],
        )

    @staticmethod
    def concat(parts: list[Samples]) -> Samples:
        """The rows of several `Samples`, one after the other."""
        categories = [p.target_category for p in parts if p.target_category is not None]
        return Samples(
            sequence=np.concatenate([p.sequence for p in parts]),
            prefix_len=np.concatenate([p.prefix_len for p in parts]),
            target_item=np.concatenate([p.target_item for p in parts]),
            target_category=np.concatenate(categories) if len(categories) == len(parts) else None,
            label=np.concatenate([p.label for p in parts]),
        )


Sampling = Literal["uniform", "popularity"]


@dataclass(frozen=True)
class NegativeSampler:
    """Draws one negative item per positive: any known item other than the positive.

    Args:
        num_items: rows of the item vocabulary (known items are indices 2 .. num_items - 1).
        strategy: "uniform" (XLong's choice, the default) or "popularity" (proportional to
            `counts`, the items' frequency in the training events).
        counts: (num_items,) event counts per item index, needed for "popularity".
    """

    num_items: int
    strategy: Sampling = "uniform"
    counts: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.num_items - NUM_RESERVED < 2:
            raise DataValidationError("negative sampling needs at least two known items")
        if self.strategy not in ("uniform", "popularity"):
            raise ConfigError(f"negative sampling must be 'uniform' or 'popularity', got {self.strategy!r}")
        if self.strategy == "popularity" and (self.counts is None or len(self.counts) != self.num_items):
            raise ConfigError("popularity sampling needs one count per item index")

    def sample(self, positives: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        probs = None
        if self.strategy == "popularity":
            assert self.counts is not None
            weights = self.counts.astype(np.float64).copy()
            weights[:NUM_RESERVED] = 0.0
            probs = weights / weights.sum()
        negatives = self._draw(len(positives), rng, probs)
        clash = negatives == positives
        while clash.any():  # redraw only the clashes; expected redraws are few
            negatives[clash] = self._draw(int(clash.sum()), rng, probs)
            clash = negatives == positives
        return negatives

    def _draw(self, n: int, rng: np.random.Generator, probs: np.ndarray | None) -> np.ndarray:
        if probs is None:
            return rng.integers(NUM_RESERVED, self.num_items, size=n, dtype=np.int64)
        return rng.choice(self.num_items, size=n, p=probs).astype(np.int64)


def interleave(positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """(n,) and (n,) -> (2n,) int64: positive 0, negative 0, positive 1, negative 1, ..."""
    out = np.empty(2 * len(positives), dtype=np.int64)
    out[0::2] = positives
    out[1::2] = negatives
    return out


def paired_samples(
    sequence: np.ndarray,
    prefix_len: np.ndarray,
    positives: np.ndarray,
    negatives: np.ndarray,
    positive_categories: np.ndarray | None,
    item_category: np.ndarray | None,
) -> Samples:
    """Interleave each target's positive and negative: rows 2i (label 1) and 2i + 1 (label 0).

    A negative's category is the category of the negative item (`item_category`, indexed by item);
    items the mapping does not know get the OOV category.
    """
    n = len(positives)
    categories = None
    if positive_categories is not None:
        if item_category is None:
            neg_categories = np.full(n, OOV_INDEX, dtype=np.int64)
        else:
            neg_categories = item_category[negatives]
        categories = interleave(positive_categories, neg_categories)
    labels = np.tile(np.array([1.0, 0.0], dtype=np.float32), n)
    return Samples(
        sequence=np.repeat(sequence.astype(np.int64), 2),
        prefix_len=np.repeat(prefix_len.astype(np.int64), 2),
        target_item=interleave(positives, negatives),
        target_category=categories,
        label=labels,
    )
