"""Incremental memory refresh: new clicks -> pending buffer -> whole segments written into memory.

Per user, events at or below the stored watermark are dropped (a re-delivered file changes
nothing); the rest are appended to the pending buffer, and every complete N-item segment is written
with the model's own `write`, batched across users. One batch of users is one store transaction,
and batches are fixed slices of the input's users, so a run killed at any point and rerun computes
exactly the batches that were not committed, with the same composition as an uninterrupted run.

Shape letters: B users in a batch, T segments, N segment length, K slots, d_m slot width.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from cmrec.errors import ConfigError
from cmrec.progress import progress_bar
from cmrec.serving.events import UserEvents
from cmrec.serving.model import ServedModel
from cmrec.store.protocol import MemoryStoreProtocol
from cmrec.store.state import UserState


@dataclass
class RefreshStats:
    """Counts of one refresh (or the sum over workers)."""

    events: int = 0
    applied: int = 0
    dropped: int = 0
    users: int = 0
    new_users: int = 0
    updated_users: int = 0
    segments: int = 0
    seconds: float = 0.0

    def merge(self, other: RefreshStats) -> RefreshStats:
        merged = {f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        merged["seconds"] = max(self.seconds, other.seconds)  # workers run side by side
        return RefreshStats(**merged)

    def summary(self) -> str:
        rate = self.events / self.seconds if self.seconds else 0.0
        return (
            f"{self.events:,} events of {self.users:,} users in {self.seconds:.1f} s ({rate:,.0f} events/s): "
            f"{self.applied:,} applied, {self.dropped:,} dropped as already applied or late; "
            f"{self.segments:,} segments written, {self.updated_users:,} users updated "
            f"({self.new_users:,} new)"
        )


class Refresher:
    """Applies new events to the memories in a store.

    Args:
        served: the loaded run of an incremental model (cm, gru4rec, mimn, hpmn).
        store: where the states live (all users of the input must belong to it).
        batch_users: users per batch and per store transaction.
        max_segments_per_call: segments written per `write` call (bounds the working memory of a
            user's first, long refresh; writing in chunks equals writing at once).

    Example::

        refresher = Refresher(ServedModel.load(run_dir), MemoryStore(path, info, create=True))
        stats = refresher.refresh(UserEvents.from_events(read_events(f), vocabs, str(f)))
    """

    def __init__(
        self,
        served: ServedModel,
        store: MemoryStoreProtocol,
        batch_users: int = 256,
        max_segments_per_call: int = 64,
    ) -> None:
        if batch_users < 1 or max_segments_per_call < 1:
            raise ConfigError("batch_users and max_segments_per_call must be >= 1")
        self.served = served
        self.model = served.model  # in eval mode (`ServedModel.load`)
        self.store = store
        self.batch_users = batch_users
        self.max_segments = max_segments_per_call
        self.segment_len = self.model.write_len
        self.initial = served.initial_state()  # (rows, d_m)

    def check(self, events: UserEvents) -> None:
        """Read every stored user the input touches: a damaged row fails here, before any write."""
        ids = list(events.user_ids)
        for start in range(0, len(ids), self.batch_users):
            self.store.get_many(ids[start : start + self.batch_users])

    def refresh(
        self, events: UserEvents, groups: np.ndarray | None = None, show_progress: bool = True
    ) -> RefreshStats:
        """Apply `events` to the store.

        Args:
            events: the new events.
            groups: (U,) a group per user (its store partition): no batch spans two groups, so
                each batch is exactly one transaction.
            show_progress: draw a progress bar (events/s, users/s).
        """
        started = time.perf_counter()
        stats = RefreshStats(events=events.num_events, users=events.num_users)
        bar = progress_bar(events.num_events, desc="refresh", unit="ev") if show_progress else None
        done = 0
        for users in self._batches(events.num_users, groups):
            stats = stats.merge(self._refresh_batch(events, users))
            done += len(users)
            if bar is not None:
                bar.update(int((events.offsets[users + 1] - events.offsets[users]).sum()))
                elapsed = max(time.perf_counter() - started, 1e-9)
                bar.set_postfix_str(f"{done / elapsed:,.0f} users/s", refresh=False)
        if bar is not None:
            bar.close()
        stats.seconds = time.perf_counter() - started
        return stats

    def _batches(self, num_users: int, groups: np.ndarray | None) -> list[np.ndarray]:
        """Fixed slices of the input's users (in log order within each group)."""
        order = np.arange(num_users) if groups is None else np.argsort(groups, kind="stable")
        keys = np.zeros(num_users, dtype=np.int64) if groups is None else groups[order]
        batches = []
        for key in np.unique(keys):
            members = order[keys == key]
            batches += [members[i : i + self.batch_users] for i in range(0, len(members), self.batch_users)]
        return batches

    def _refresh_batch(self, events: UserEvents, users: np.ndarray) -> RefreshStats:
        """Read, plan, write and store one batch in one store transaction (`update_many`): a
        concurrent refresh of the same users waits, then plans from what this one committed."""
        row_of = {str(events.user_ids[u]): int(u) for u in users}
        # Counts per call of `apply` (one per partition), keyed by its ids: a backend that retries
        # a call on a conflict replaces that call's counts instead of adding them twice.
        counts: dict[tuple[str, ...], RefreshStats] = {}

        def apply(ids: list[str], stored: dict[str, UserState]) -> list[UserState]:
            count = counts[tuple(ids)] = RefreshStats()
            plans: list[_Plan] = []
            for user_id in ids:
                plan = self._plan(user_id, stored.get(user_id), events, events.span(row_of[user_id]))
                count.dropped += plan.dropped
                if plan.applied:
                    plans.append(plan)
                    count.applied += plan.applied
                    count.new_users += plan.state is None
            memories = self._write([p for p in plans if p.segments is not None])
            if self.served.holds_pending:
                memories.update(self._hold([p for p in plans if len(p.hold_items)], memories))
            new_states = []
            for plan in plans:
                memory = memories.get(plan.user_id, plan.memory)
                new_states.append(plan.finish(memory, self.served.fingerprint))
                count.segments += 0 if plan.segments is None else len(plan.segments) // self.segment_len
            count.updated_users = len(new_states)
            return new_states

        self.store.update_many(list(row_of), apply)
        total = RefreshStats()
        for count in counts.values():
            total = total.merge(count)
        return total

    def _plan(self, user_id: str, state: UserState | None, events: UserEvents, span: slice) -> _Plan:
        times, raw = events.times[span], events.raw_items[span]
        keep = np.ones(len(times), dtype=bool)
        watermark_time = None if state is None else state.watermark_time
        seen_at_watermark: tuple[str, ...] = () if state is None else state.watermark_items
        if watermark_time is not None:
            keep = times > watermark_time
            ties = np.flatnonzero(times == watermark_time)  # contiguous: a user's events are in time order
            old = _already_applied([str(r) for r in raw[ties]], seen_at_watermark)
            keep[ties[old:]] = True
        applied = int(keep.sum())
        plan = _Plan(user_id=user_id, state=state, dropped=len(times) - applied, applied=applied)
        if not applied:
            return plan
        last = times[keep][-1]
        at_last = tuple(str(r) for r in raw[keep & (times == last)])
        plan.watermark_time = last.item()
        plan.watermark_items = (seen_at_watermark + at_last) if last == watermark_time else at_last
        plan.events = (0 if state is None else state.events) + applied
        plan.memory = self.initial if state is None else state.memory
        items = events.items[span][keep]
        categories = None if events.categories is None else events.categories[span][keep]
        if state is not None:
            items = np.concatenate([state.pending_items, items])
            if categories is not None and state.pending_categories is not None:
                categories = np.concatenate([state.pending_categories, categories])
        whole = len(items) // self.segment_len * self.segment_len
        plan.pending_items = items[whole:].copy()
        plan.pending_categories = None if categories is None else categories[whole:].copy()
        # The clicks the stored pending rows must take in (`ServedModel.holds_pending`): after a
        # write, all the pending ones (a write resets the rows); else the new ones only.
        first_held = whole if whole else len(items) - applied
        plan.hold_items = items[first_held:]
        plan.hold_categories = None if categories is None else categories[first_held:]
        if whole:
            plan.segments = items[:whole]
            plan.segment_categories = None if categories is None else categories[:whole]
        return plan

    def _write(self, plans: Sequence[_Plan]) -> dict[str, torch.Tensor]:
        """Write every plan's whole segments, batched across users; returns the new memories."""
        if not plans:
            return {}
        memory = torch.stack([p.memory for p in plans if p.memory is not None])  # (B, K, d_m)
        items = [p.segments for p in plans if p.segments is not None]
        categories = [p.segment_categories for p in plans if p.segment_categories is not None]
        written = self.served.write_clicks(
            memory, items, categories if self.served.has_categories else None, self.max_segments
        )
        return {plan.user_id: written[row].clone() for row, plan in enumerate(plans)}

    def _hold(self, plans: Sequence[_Plan], memories: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Add every plan's new pending clicks to its state's pending rows, batched; the new states."""
        if not plans:
            return {}
        states = torch.stack([memories.get(p.user_id, p.memory) for p in plans])  # type: ignore[misc]
        categories = [p.hold_categories for p in plans] if self.served.has_categories else None
        held = self.served.hold_clicks(states, [p.hold_items for p in plans], categories)
        return {plan.user_id: held[row].clone() for row, plan in enumerate(plans)}


def _already_applied(group: list[str], seen: tuple[str, ...]) -> int:
    """How many leading clicks of `group` (the input's clicks at the watermark's timestamp) were
    applied before, given `seen`, the clicks applied at that timestamp, in order.

    An input is a window of the user's stream, so its clicks at that timestamp either continue
    `seen` or start by repeating a stretch of it (a re-delivery from the start of the timestamp,
    from inside it, or of an older file that ended inside it); the first alignment that matches
    wins, the longest overlap first. This is exact when a user clicks an item at most once per
    timestamp. Without event ids one case stays ambiguous: a user who clicks the same item again
    within one timestamp, the repeat being the first click of a new file at that timestamp; it is
    read as a re-delivery and counted as dropped.
    """
    for offset in range(len(seen)):
        overlap = min(len(group), len(seen) - offset)
        if tuple(group[:overlap]) == seen[offset : offset + overlap]:
            return overlap
    return 0


@dataclass
class _Plan:
    """One user's share of a batch: what to write and the state to store after it."""

    user_id: str
    state: UserState | None
    dropped: int
    applied: int
    memory: torch.Tensor | None = None
    segments: np.ndarray | None = None  # item indices of whole segments to write (T * N,)
    segment_categories: np.ndarray | None = None
    pending_items: np.ndarray | None = None
    pending_categories: np.ndarray | None = None
    hold_items: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # new pending clicks
    hold_categories: np.ndarray | None = None
    watermark_time: float | int | None = None
    watermark_items: tuple[str, ...] = ()
    events: int = 0

    def finish(self, memory: torch.Tensor | None, fingerprint: str) -> UserState:
        assert memory is not None and self.pending_items is not None
        return UserState(
            user_id=self.user_id,
            memory=memory,
            pending_items=self.pending_items,
            pending_categories=self.pending_categories,
            watermark_time=self.watermark_time,
            watermark_items=self.watermark_items,
            events=self.events,
            fingerprint=fingerprint,
        )
