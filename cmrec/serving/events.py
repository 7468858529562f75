"""New events for a refresh: validated, encoded with the run's vocabularies, grouped by user."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cmrec.data.dataset import Vocabularies, check_category_column
from cmrec.data.samples import concat_ranges
from cmrec.data.schema import CATEGORY, ITEM, TIMESTAMP, USER


@dataclass(frozen=True)
class UserEvents:
    """Events grouped by user, each user's events in time order (ties in arrival order).

    Args:
        user_ids: (U,) raw user ids as strings, in the order of the log.
        offsets: (U + 1,) user u's events are ``[offsets[u], offsets[u + 1])``.
        times: (E,) timestamps (int64 or float64).
        raw_items: (E,) raw item ids as strings (the watermark's tie-breaker).
        items: (E,) int32 item indices (unknown items are OOV).
        categories: (E,) int32 category indices, or None for a model without categories.
    """

    user_ids: np.ndarray
    offsets: np.ndarray
    times: np.ndarray
    raw_items: np.ndarray
    items: np.ndarray
    categories: np.ndarray | None

    @classmethod
    def from_events(cls, events: pd.DataFrame, vocabs: Vocabularies, source: str) -> UserEvents:
        """Encode a validated, sorted log (`read_events`) the way the run's training data was."""
        check_category_column(events, vocabs, source)
        users = events[USER].astype(str).to_numpy()
        change = np.flatnonzero(users[1:] != users[:-1]) + 1
        offsets = np.concatenate([[0], change, [len(users)]]).astype(np.int64)
        categories = None
        if vocabs.categories is not None:
            categories = vocabs.categories.encode(events[CATEGORY]).astype(np.int32)
        return cls(
            user_ids=users[offsets[:-1]],
            offsets=offsets,
            times=events[TIMESTAMP].to_numpy(),
            raw_items=events[ITEM].astype(str).to_numpy(),
            items=vocabs.items.encode(events[ITEM]).astype(np.int32),
            categories=categories,
        )

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_events(self) -> int:
        return len(self.times)

    def select(self, users: np.ndarray) -> UserEvents:
        """The events of the users at the given positions (in that order)."""
        lengths = self.offsets[users + 1] - self.offsets[users]
        index = concat_ranges(self.offsets[users], lengths)
        return UserEvents(
            user_ids=self.user_ids[users],
            offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            times=self.times[index],
            raw_items=self.raw_items[index],
            items=self.items[index],
            categories=None if self.categories is None else self.categories[index],
        )

    def span(self, user: int) -> slice:
        return slice(int(self.offsets[user]), int(self.offsets[user + 1]))
