"""Scoring from stored memories: the reason head reads the memory and the candidate, never the history.

The fewer than N clicks still pending for a user are written into a scratch copy of the memory
first (``pending="write"``, the default): one masked segment, a cost that does not grow with the
history, and the exact memory the training path would have built over the same history. A model
that reads its recent clicks itself (CM with ``recent_clicks``) is given them instead: it was
trained on the memory of whole segments beside them, so nothing is written at request time.
``pending="ignore"`` scores from the stored memory alone (only the reason head runs).

Shape letters: U users, S requests, N segment length, K slots, d_m slot width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch

from cmrec.data.schema import OOV_INDEX
from cmrec.errors import ConfigError
from cmrec.serving.model import ServedModel, pad_clicks
from cmrec.store.protocol import MemoryStoreProtocol
from cmrec.store.state import UserState

PendingPolicy = Literal["write", "ignore"]


@dataclass(frozen=True)
class Scores:
    """Click probabilities of a batch of requests; the users the store did not know (scored from
    the initial memory) and how many requests name an item the run never saw (its OOV embedding)."""

    probabilities: np.ndarray
    unknown_users: tuple[str, ...]
    users: int
    unknown_items: int = 0


class Scorer:
    """Load a run and a store once; score batches of (user, item) requests.

    Args:
        served: the loaded run of an incremental model (cm, gru4rec, mimn, hpmn).
        store: any `MemoryStoreProtocol` backend refreshed with this run (`cmrec.store.open_store`
            opens a store folder and checks its fingerprint).
        pending: "write" (default) or "ignore", see the module docstring.

    Example::

        served = ServedModel.load(Path("runs/cm"))
        scorer = Scorer(served, open_store(Path("memories"), served.store_info))
        scorer.score(["u1", "u1", "u2"], ["i9", "i4", "i9"]).probabilities   # (3,) float32
    """

    def __init__(
        self, served: ServedModel, store: MemoryStoreProtocol, pending: PendingPolicy = "write"
    ) -> None:
        if pending not in ("write", "ignore"):
            raise ConfigError(f"pending must be 'write' or 'ignore', got {pending!r}")
        self.served = served
        self.model = served.model  # in eval mode (`ServedModel.load`)
        self.store = store
        self.pending = pending
        self.initial = served.initial_state()  # (rows, d_m) the state of a user the store does not know

    @torch.inference_mode()
    def memories(self, user_ids: Sequence[str]) -> tuple[torch.Tensor, np.ndarray]:
        """(U, K, d_m) memories ready to score from, and a (U,) bool array of users the store knows."""
        return self._memories(user_ids, self.store.get_many(list(user_ids)))

    def _memories(
        self, user_ids: Sequence[str], states: dict[str, UserState]
    ) -> tuple[torch.Tensor, np.ndarray]:
        memory = torch.stack([states[u].memory if u in states else self.initial for u in user_ids])
        known = np.array([u in states for u in user_ids], dtype=bool)
        if self.pending == "write" and not self.reads_recent:
            memory = self._write_pending(memory, [states.get(u) for u in user_ids])
        return memory, known

    @property
    def reads_recent(self) -> bool:
        """Whether the model reads pending clicks itself (`ContinualMemoryModel.reads_recent`)."""
        return bool(getattr(self.model, "reads_recent", False))

    def _recent(
        self, user_ids: Sequence[str], states: dict[str, UserState]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(U, W) pending item ids, mask and category ids (None without categories) of each user."""
        empty = np.zeros(0, np.int64)
        pending = [states[u].pending_items if u in states else empty for u in user_ids]
        categories = None
        if self.served.has_categories:
            categories = [states[u].pending_categories if u in states else None for u in user_ids]
        return pad_clicks(pending, categories)

    def _write_pending(self, memory: torch.Tensor, states: Sequence[UserState | None]) -> torch.Tensor:
        waiting = [(i, s) for i, s in enumerate(states) if s is not None and len(s.pending_items)]
        if not waiting:
            return memory
        items = [state.pending_items for _, state in waiting]
        categories = [s.pending_categories for _, s in waiting if s.pending_categories is not None]
        index = torch.tensor([i for i, _ in waiting])
        memory = memory.clone()
        memory[index] = self.served.write_clicks(
            memory[index], items, categories if self.served.has_categories else None
        )
        return memory

    @torch.inference_mode()
    def score(
        self,
        user_ids: Sequence[str],
        item_ids: Sequence[object] | np.ndarray | pd.Series,
        category_ids: Sequence[object] | np.ndarray | pd.Series | None = None,
    ) -> Scores:
        """Click probabilities of (user, item) requests; raw ids, unknown items are OOV."""
        if len(user_ids) != len(item_ids):
            raise ConfigError(f"{len(user_ids)} user ids but {len(item_ids)} item ids")
        vocabs = self.served.vocabs
        items = vocabs.items.encode(item_ids)
        categories = None
        if category_ids is not None and vocabs.categories is not None:
            categories = vocabs.categories.encode(category_ids)
        return self.score_indices(user_ids, items, categories)

    @torch.inference_mode()
    def score_indices(
        self, user_ids: Sequence[str], items: np.ndarray, categories: np.ndarray | None = None
    ) -> Scores:
        """Like `score`, with items (and categories) already encoded by the run's vocabularies."""
        row_of: dict[str, int] = {}  # each distinct user, in order of first request
        codes = [row_of.setdefault(str(user), len(row_of)) for user in user_ids]
        distinct = list(row_of)
        states = self.store.get_many(distinct)
        memory, known = self._memories(distinct, states)
        rows = torch.tensor(codes, dtype=torch.long)
        candidates = torch.from_numpy(np.asarray(items, dtype=np.int64))
        candidate_categories = (
            None if categories is None else torch.from_numpy(np.asarray(categories, dtype=np.int64))
        )
        if self.reads_recent:
            # One user's pending clicks are counted once, whatever the number of their candidates.
            recent = self._recent(distinct, states) if self.pending == "write" else None
            logits = self.model.score(memory, candidates, candidate_categories, recent=recent, rows=rows)  # type: ignore[call-arg]
        else:
            logits = self.model.score(memory[rows], candidates, candidate_categories)
        return Scores(
            probabilities=torch.sigmoid(logits.float()).numpy().astype(np.float32),
            unknown_users=tuple(user for user, seen in zip(distinct, known, strict=True) if not seen),
            users=len(distinct),
            unknown_items=int((np.asarray(items) == OOV_INDEX).sum()),
        )
