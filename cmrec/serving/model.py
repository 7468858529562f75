"""The served model: a run of a model incremental by construction (`IncrementalModel`: CM, GRU4REC,
MIMN, HPMN), loaded once, with the fingerprint that ties stored states to it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmrec.data.dataset import Vocabularies
from cmrec.data.jagged import segment_jagged
from cmrec.errors import CmrecError
from cmrec.output import IncrementalModel
from cmrec.store.state import MemoryDtype, StoreInfo
from cmrec.train.checkpoint import CHECKPOINT, load_checkpoint


def model_fingerprint(
    name: str, config: dict[str, Any], state_dict: dict[str, torch.Tensor], vocabs: dict[str, Any]
) -> str:
    """SHA-256 of the model name, config, vocabularies and every weight (names, shapes, bytes).

    Two runs give one fingerprint only if they would write the same memory for every history.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps({"model": name, "config": config}, sort_keys=True).encode())
    digest.update(json.dumps(vocabs, sort_keys=True).encode())
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().to("cpu").contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        # reshape(-1): a 0-dim tensor (a scalar parameter) has no byte view of its own.
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


@dataclass(frozen=True)
class ServedModel:
    """An incremental model in eval mode, its vocabularies and fingerprint.

    Example::

        served = ServedModel.load(Path("runs/demo/cm"))
        info = served.store_info(dtype="float16", partitions=4)
    """

    model: IncrementalModel
    vocabs: Vocabularies
    name: str
    fingerprint: str
    run_dir: Path

    @classmethod
    def load(cls, run_dir: Path) -> ServedModel:
        if not run_dir.is_dir():
            raise CmrecError(f"{run_dir}: no such run folder")
        model, vocabs, payload = load_checkpoint(run_dir / CHECKPOINT)
        if not isinstance(model, IncrementalModel) or model.needs.memory_shape is None:
            raise CmrecError(
                f"{run_dir}: model {payload['model']!r} is end-to-end: it reads each user's raw "
                "history, so it keeps no state a store could hold; refresh and score serve models "
                "incremental by construction (cm and its variants, gru4rec, mimn, hpmn). Score it from "
                "histories with cmrec.jobs.score_histories"
            )
        fingerprint = model_fingerprint(
            payload["model"], payload["config"], payload["state_dict"], payload["vocabs"]
        )
        return cls(
            model=model, vocabs=vocabs, name=payload["model"], fingerprint=fingerprint, run_dir=run_dir
        )

    @property
    def state_shape(self) -> tuple[int, int]:
        """(rows, d_m) of one user's stored state."""
        shape = self.model.needs.memory_shape
        assert shape is not None  # checked by `load`
        return shape

    @property
    def has_categories(self) -> bool:
        return self.vocabs.categories is not None

    @torch.no_grad()
    def write_clicks(
        self,
        memory: torch.Tensor,
        items: Sequence[np.ndarray],
        categories: Sequence[np.ndarray] | None,
        max_segments: int | None = None,
    ) -> torch.Tensor:
        """Write each user's clicks (oldest first) into (B, K, d_m) memories, batched.

        Clicks are cut into `write_len`-click segments from each user's first click, as in
        training; a partial last segment is written masked. `max_segments` bounds the segments of
        one `write` call (writing in chunks equals writing at once).

        Args:
            memory: (B, K, d_m) memories before the clicks.
            items: B arrays of item indices.
            categories: B arrays of category indices (same lengths), or None without categories.

        Returns:
            (B, K, d_m) memories after the clicks.
        """
        segment_len = self.model.write_len
        lengths = torch.tensor([len(user_items) for user_items in items], dtype=torch.long)

        def grid(values: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
            flat = torch.from_numpy(np.concatenate(values).astype(np.int64))
            return segment_jagged(flat, lengths, segment_len)  # (B, T, N), (B, T, N)

        ids, mask = grid(items)
        cats = None if categories is None else grid(categories)[0]
        step = max_segments or ids.shape[1]
        for t0 in range(0, ids.shape[1], step):
            window = slice(t0, t0 + step)
            window_cats = None if cats is None else cats[:, window]
            memory = self.model.write(memory, ids[:, window], mask[:, window], window_cats)
        return memory

    def initial_state(self) -> torch.Tensor:
        """(rows, d_m) the stored state of a user without history (`state_shape`)."""
        initial = getattr(self.model, "initial_state", self.model.initial_memory)
        with torch.no_grad():
            state: torch.Tensor = initial(1)[0].detach().clone()
        return state

    @property
    def holds_pending(self) -> bool:
        """Whether the stored state keeps the pending clicks' running form beside the memory
        (CM with ``recent_clicks``: `ContinualMemoryModel.hold`), which refresh must then update."""
        return bool(getattr(self.model, "pending_rows", 0))

    @torch.no_grad()
    def hold_clicks(
        self,
        states: torch.Tensor,
        items: Sequence[np.ndarray],
        categories: Sequence[np.ndarray | None] | None,
    ) -> torch.Tensor:
        """(B, rows, d_m) stored states after B users' new pending clicks (each < `write_len`,
        oldest first; `ContinualMemoryModel.hold`)."""
        ids, mask, cats = pad_clicks(items, categories)
        held: torch.Tensor = self.model.hold(states, ids, mask, cats)  # type: ignore[attr-defined]
        return held

    def store_info(self, dtype: MemoryDtype = "float32", partitions: int = 1) -> StoreInfo:
        shape = self.state_shape
        return StoreInfo(
            fingerprint=self.fingerprint,
            model=self.name,
            slots=shape[0],
            memory_dim=shape[1],
            segment_len=self.model.write_len,
            has_categories=self.has_categories,
            dtype=dtype,
            partitions=partitions,
        )


def pad_clicks(
    items: Sequence[np.ndarray], categories: Sequence[np.ndarray | None] | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """B users' clicks (item indices, oldest first) as (B, W) ids, mask (True at real clicks,
    first in each row) and category ids (None without `categories`; zeros for a user whose
    categories are None); W is the longest user's count."""
    width = max((len(user_items) for user_items in items), default=0)
    ids = torch.zeros(len(items), width, dtype=torch.long)
    mask = torch.zeros(len(items), width, dtype=torch.bool)
    cats = None if categories is None else torch.zeros(len(items), width, dtype=torch.long)
    for row, user_items in enumerate(items):
        ids[row, : len(user_items)] = torch.from_numpy(user_items.astype(np.int64))
        mask[row, : len(user_items)] = True
        given = None if categories is None else categories[row]
        if cats is not None and given is not None:
            cats[row, : len(user_items)] = torch.from_numpy(given.astype(np.int64))
    return ids, mask, cats
