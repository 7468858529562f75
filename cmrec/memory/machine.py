"""The continual memory machine G: encode segments, then write them into memory one at a time.

Shape letters: B batch, T segments, N items per segment, K slots, d_x item width, d_m slot width.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional

from cmrec.errors import ConfigError
from cmrec.memory.encoder import SegmentEncoder
from cmrec.memory.profile import Prototypes
from cmrec.memory.sketch import key_buckets, sketch_entries
from cmrec.memory.update import MemoryUpdate


class ContinualMemoryMachine(nn.Module):
    """Compresses segments into a memory of K slots. Holds parameters only, never per-user state.

    The encoder runs on all B*T segments in one call; the update then runs sequentially over T
    only. Writing T segments in one call equals writing them one by one, in any chunking, because
    the encoder sees one segment at a time and a fully padded segment leaves a user's memory as it
    was.

    With ``history_mean`` (not in the paper) the memory has two more rows after the K slots: row K
    is the mean over all segments written so far of each segment's mean item embedding (the raw
    embeddings, before the encoder), row K + 1 holds the number of those segments in its first
    entry. The mean is kept exactly and incrementally (``mean += (s_t - mean) / t``), so it
    forgets nothing, whatever the slots overwrite; the memory is still of constant size, and
    written in chunks it equals the whole write.

    With ``profile_rows`` P > 0 as well, P rows between the mean and the count hold an *interest
    profile*: the mean over segments of each segment's mean soft assignment of its items to
    P x d_m learned prototypes, ``a(x)`` (`Prototypes`, a softmax of cosine logits): a histogram
    of the whole history over learned clusters, summing to 1. It is kept exactly like the mean,
    so it shares the mean's guarantees; the reason head reads how much of it falls on a candidate's prototypes
    (`cmrec.heads.reason`).

    With ``count_buckets`` C > 0 (and ``history_mean``), ceil(C / d_m) rows hold an exact *count sketch*:
    the mean over segments of each segment's histogram of its items' keys (category ids, or item
    ids when the data has none) taken modulo C, kept like the mean. With C at least the number of
    keys it is exact: entry c is the share of the history whose key is c. With ``item_buckets``
    C_i > 0 the same rows also hold an *item sketch*, two hashed tables of C_i entries over the
    item ids (`cmrec.memory.sketch`): ceil((C + 2 C_i) / d_m) rows in all.

    With ``recurrent`` (not in the paper) one row right after the slots holds the state of a GRU
    (hidden size d_m) run over every click, oldest first, on the raw item embeddings: the state
    after the last click written. It is what the memory knows of the order of the latest clicks,
    which the segment encoder sees only inside a segment. Written in chunks it equals the whole
    write, because each chunk's GRU starts from the row. Row layout: K slots, [the recurrent row],
    [the mean, P profile rows, ceil((C + 2 C_i) / d_m) count rows, the segment count].

    Args:
        encoder: the segment encoder.
        update: the memory update module.
        slots: K.
        memory_dim: d_m (the item width, when ``history_mean``).
        history_mean: keep the two history-mean rows.
        profile_rows: P interest-profile rows (needs ``history_mean``; 0: none).
        count_buckets: C count-sketch entries, in ceil(C / d_m) rows (needs ``history_mean``; 0: none).
        item_buckets: C_i entries of each item-sketch table (needs ``history_mean``; 0: none).
        recurrent: keep the recurrent row (its GRU reads d_m-wide items: d_x must equal d_m).

    Example::

        machine = ContinualMemoryMachine(encoder, update, slots=20, memory_dim=64)
        memory = machine(machine.initial_memory(B), x, mask)   # (B, 20, 64)
    """

    def __init__(
        self,
        encoder: SegmentEncoder,
        update: MemoryUpdate,
        slots: int,
        memory_dim: int,
        history_mean: bool = False,
        profile_rows: int = 0,
        count_buckets: int = 0,
        recurrent: bool = False,
        item_buckets: int = 0,
    ) -> None:
        super().__init__()
        if profile_rows and not history_mean:
            raise ConfigError("profile_rows needs history_mean (the profile rows sit beside the mean)")
        if (count_buckets or item_buckets) and not history_mean:
            raise ConfigError(
                f"count_buckets ({count_buckets}) and item_buckets ({item_buckets}) need history_mean"
            )
        self.memory_dim = memory_dim
        self.count_buckets = count_buckets
        self.item_buckets = item_buckets
        self.sketch_entries = sketch_entries(count_buckets, item_buckets)
        self.recurrent: nn.GRU | None = (
            nn.GRU(memory_dim, memory_dim, batch_first=True) if recurrent else None
        )
        # Row of the first running mean: after the slots and the recurrent row.
        self.mean_start = slots + (1 if recurrent else 0)
        self.encoder = encoder
        self.update = update
        self.slots = slots
        self.history_mean = history_mean
        self.profile_rows = profile_rows
        # item -> its soft assignment to the P x d_m prototypes of the interest profile.
        self.prototypes: Prototypes | None = (
            Prototypes(memory_dim, profile_rows * memory_dim) if profile_rows else None
        )
        # Distinct random slots: identical slots would attend identically and never diverge.
        self.initial = nn.Parameter(torch.randn(slots, memory_dim) * 0.5)

    def initial_memory(self, batch_size: int) -> torch.Tensor:
        """(B, rows, d_m) the learned initial memory, for users with no history yet."""
        slots = self.initial.unsqueeze(0).expand(batch_size, -1, -1)
        extra = self.rows - self.slots  # the recurrent row and the running means' rows, zeros
        if not extra:
            return slots
        return torch.cat([slots, slots.new_zeros(batch_size, extra, slots.shape[-1])], dim=1)

    @property
    def rows(self) -> int:
        """Rows of one memory (see the class docstring's row layout)."""
        return memory_rows(
            self.slots,
            self.memory_dim,
            recurrent=self.recurrent is not None,
            history_mean=self.history_mean,
            profile_rows=self.profile_rows,
            count_buckets=self.count_buckets,
            item_buckets=self.item_buckets,
        )

    def forward(
        self, memory: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, keys: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Write T segments, oldest first.

        Args:
            memory: (B, rows, d_m) memory before the segments.
            x: (B, T, N, d_x) segment item features.
            mask: (B, T, N) real items.
            keys: (B, T, N) the items' count-sketch keys (needed with ``count_buckets`` only).

        Returns:
            (B, rows, d_m) memory after the segments.
        """
        features = self.encoder(x, mask)  # (B, T, N, d_x), one call for all segments
        return self.write_features(memory, features, mask, x, keys)

    def trajectory(
        self, memory: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, keys: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Like `forward`, but the memory after *every* segment: (B, T, rows, d_m), oldest first.

        ``trajectory(...)[:, -1]`` is `forward`'s result (trailing padding segments change nothing);
        ``[:, t]`` is the memory after segments 0..t, what dense training scores segment t + 1 with.
        """
        return self.trajectory_parts(memory, x, mask, keys).states

    def trajectory_parts(
        self, memory: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, keys: torch.Tensor | None = None
    ) -> Trajectory:
        """`trajectory` and what it computed per click on the way (`Trajectory`): what training
        reads the clicks since a target's last whole segment from (`target_pending`)."""
        features = self.encoder(x, mask)  # (B, T, N, d_x)
        return self._trajectory(memory, features, mask, x, keys)

    def write_features(
        self,
        memory: torch.Tensor,
        features: torch.Tensor,
        mask: torch.Tensor,
        x: torch.Tensor,
        keys: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The memory update alone: write already encoded (B, T, N, d_x) features of the
        (B, T, N, d_x) items `x`, oldest first."""
        states = self._trajectory(memory, features, mask, x, keys).states
        return states[:, -1] if states.shape[1] else memory

    def count_partial(
        self, memory: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, keys: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, rows, d_m) memories with a partial segment, (B, W, d_x) items, their (B, W) mask
        (real items first) and (B, W) count-sketch keys, counted in the running means (history
        mean, profile, count sketch) and run through the recurrent row: what writing it does to
        those rows, without the encoder and the slots' update. The slots are left as they are; a
        row without a real item is returned unchanged."""
        if x.shape[1] == 0 or (not self.history_mean and self.recurrent is None):
            return memory
        parts = [memory[:, : self.slots]]
        if self.recurrent is not None:
            states = self._recurrent_states(memory[:, self.slots], x[:, None], mask[:, None])  # (B, 1, d_m)
            parts.append(states[:, 0][:, None])
        if self.history_mean:
            values = self._segment_values(x[:, None], mask[:, None], None if keys is None else keys[:, None])[
                :, 0
            ]  # (B, V, d_m)
            rows = memory[:, self.mean_start :]
            parts.append(torch.where(mask.any(dim=-1)[:, None, None], _add_to_mean(rows, values), rows))
        return torch.cat(parts, dim=1)

    def slots_of(self, memory: torch.Tensor) -> torch.Tensor:
        """(..., K, d_m) the slots of (..., rows, d_m) memories (what attention and recall read)."""
        return memory[..., : self.slots, :]

    def _trajectory(
        self,
        memory: torch.Tensor,
        features: torch.Tensor,
        mask: torch.Tensor,
        x: torch.Tensor,
        keys: torch.Tensor | None = None,
    ) -> Trajectory:
        """The memories after each segment, (B, T, rows, d_m): the one update code path.

        Only the slots need a loop over the segments; the recurrent row is one GRU pass over all
        the clicks, and the running means are cumulative sums (``mean_t = (n_0 m_0 + sum of the
        values of live segments up to t) / (n_0 + live segments up to t)``, what ``mean += (s_t -
        mean) / t`` computes, to rounding).
        """
        live = mask.any(dim=-1)  # (B, T) segments with at least one item
        parts = [self._slot_states(self.slots_of(memory), features, mask, live)]  # (B, T, K, d_m)
        outputs = None
        if self.recurrent is not None:
            # (B, T x N, d_m) the recurrent row after each click: one GRU pass over all the clicks.
            outputs = self._recurrent_outputs(memory[:, self.slots], x, mask)
            parts.append(self._segment_ends(memory[:, self.slots], outputs, mask)[:, :, None])
        values = None
        if self.history_mean:
            values = self._click_values(x, mask)  # (B, T, N, 1 + P, d_m)
            segment_values = self._segment_values(x, mask, keys, values)  # (B, T, V, d_m)
            parts.append(_running_means(memory[:, self.mean_start :], segment_values, live))
        return Trajectory(torch.cat(parts, dim=2), values, outputs)

    def _slot_states(
        self, slots: torch.Tensor, features: torch.Tensor, mask: torch.Tensor, live: torch.Tensor
    ) -> torch.Tensor:
        """(B, K, d_m) slots before (B, T, N, d_x) features -> (B, T, K, d_m) the slots after each
        segment; a segment without a real item leaves them as they were, and costs nothing: each
        step updates only the memories whose segment is live."""
        fused = self.update.fuse(features)  # the weights and item-side products of every step
        live_rows = live.sum(dim=0).tolist()  # (T,) memories with a live segment at each step
        states = []
        # unbind once: indexing [:, t] in the loop would give each step's backward a whole-size gradient.
        steps = zip(fused.items.unbind(1), fused.gates.unbind(1), mask.unbind(1), live.unbind(1), strict=True)
        for (items_t, gates_t, mask_t, live_t), count in zip(steps, live_rows, strict=True):
            if count == len(slots):
                slots = self.update.step(slots, items_t, gates_t, mask_t, fused)
            elif count:
                index = live_t.nonzero().squeeze(1)
                written = self.update.step(
                    slots.index_select(0, index),
                    items_t.index_select(0, index),
                    gates_t.index_select(0, index),
                    mask_t.index_select(0, index),
                    fused,
                )
                slots = slots.index_copy(0, index, written)
            states.append(slots)
        if not states:
            return slots.new_zeros(len(slots), 0, *slots.shape[1:])
        return torch.stack(states, dim=1)

    def target_pending(
        self,
        trajectory: Trajectory,
        initial: torch.Tensor,
        mask: torch.Tensor,
        keys: torch.Tensor | None,
        histories: torch.Tensor,
        ends: torch.Tensor,
    ) -> Pending:
        """The clicks since the last whole segment before each of J targets, read from a
        trajectory: what `pending` gives for those clicks, without running anything again.

        Args:
            trajectory: `trajectory_parts` of (B, T, N) grids.
            initial: (B, rows, d_m) the memories the trajectory started from.
            mask: (B, T, N) the grid's real clicks.
            keys: (B, T, N) their count-sketch keys (None without a sketch).
            histories: (J,) the grid row of each target.
            ends: (J,) the clicks of its history before it.

        Returns:
            `Pending` of the J targets: the ``ends % N`` clicks of segment ``ends // N``. Its
            recurrent row is the GRU's state after the click before the target.
        """
        _, segments, length = mask.shape
        count = ends % length
        segment = (ends // length).clamp(max=max(segments - 1, 0))  # T (no click held): any segment
        held = (count[:, None] > torch.arange(length, device=ends.device)).to(mask.dtype)  # (J, N)
        grid_row = histories * segments + segment  # (J,) row of the (B T)-flattened grid
        sums = None
        if trajectory.values is not None:
            prefix = trajectory.values.cumsum(dim=2).flatten(0, 2)  # (B T N, 1 + P, d_m)
            # index_select: a deterministic backward (advanced indexing's accumulates in any order).
            picked = prefix.index_select(0, grid_row * length + (count - 1).clamp(min=0))
            sums = picked * (count > 0).to(picked.dtype)[:, None, None]
        pending_keys = None if keys is None else keys.flatten(0, 1).index_select(0, grid_row)
        recurrent = None
        if trajectory.recurrent is not None:
            after = trajectory.recurrent.flatten(0, 1).index_select(
                0, histories * segments * length + (ends - 1).clamp(min=0)
            )
            before = initial[:, self.slots].index_select(0, histories)
            recurrent = torch.where((ends > 0)[:, None], after, before)
        return Pending(count, held, sums, pending_keys, recurrent)

    def pending(
        self, memory: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, keys: torch.Tensor | None = None
    ) -> Pending:
        """What the head reads of a partial segment (`Pending`): (B, rows, d_m) memories, (B, W,
        d_x) clicks (real ones first, W < N), their (B, W) mask and (B, W) count-sketch keys."""
        count = mask.sum(dim=1)
        sums = None
        if self.history_mean:
            sums = self._click_values(x[:, None], mask[:, None])[:, 0].sum(dim=1)  # (B, 1 + P, d_m)
        recurrent = None
        if self.recurrent is not None:
            recurrent = memory[:, self.slots]
            if x.shape[1]:
                recurrent = self._recurrent_states(recurrent, x[:, None], mask[:, None])[:, 0]
        return Pending(count, mask, sums, keys, recurrent)

    def _recurrent_states(self, state: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, d_m) recurrent rows, (B, T, N, d_x) items and their mask -> (B, T, d_m) the row after
        each segment's last real click (the row before it for an empty segment)."""
        return self._segment_ends(state, self._recurrent_outputs(state, x, mask), mask)

    def _recurrent_outputs(self, state: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, d_m) recurrent rows, (B, T, N, d_x) items and their mask -> (B, T x N, d_m) the row
        after each click of the flattened grid.

        The GRU runs once over the T x N grid flattened; padding may only follow the real clicks
        (a right-padded history, or whole segments and then a partial one), so no state read ever
        saw a padded step.
        """
        assert self.recurrent is not None
        batch, segments, length = mask.shape
        flat = mask.reshape(batch, -1)
        if flat.shape[1] > 1 and bool((flat[:, 1:] & ~flat[:, :-1]).any()):
            raise ConfigError("the recurrent row needs each history's real clicks first, padding after them")
        outputs, _ = self.recurrent(x.reshape(batch, segments * length, -1), state[None].contiguous())
        return outputs

    @staticmethod
    def _segment_ends(state: torch.Tensor, outputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, d_m) the recurrent row after each segment's last real click, from the GRU's
        (B, T x N, d_m) outputs (the row before it for an empty segment)."""
        # The real clicks come first (`_recurrent_outputs` checks): the last one up to segment t
        # is click number (clicks in segments 0..t) - 1 of the flattened grid.
        seen = mask.sum(dim=-1).cumsum(dim=1)  # (B, T)
        ends = outputs.gather(1, (seen - 1).clamp(min=0)[..., None].expand(-1, -1, outputs.shape[-1]))
        return torch.where((seen > 0)[..., None], ends, state[:, None])  # (B, T, d_m)

    def _click_values(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, N, 1 + P, d_m) what each click adds to the history mean and the profile: its
        embedding and (with the profile) its prototype assignment as P rows; zero at padding."""
        values = [x[..., None, :]]
        if self.prototypes is not None:
            values.append(self.prototypes(x).unflatten(-1, (self.profile_rows, x.shape[-1])))
        merged = values[0] if len(values) == 1 else torch.cat(values, dim=-2)
        return merged * mask.to(x.dtype)[..., None, None]

    def _segment_values(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        keys: torch.Tensor | None = None,
        click_values: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, V, d_m) per segment: its mean item, (with the profile) its mean prototype
        assignment as P rows and (with the count sketch) its key histogram as C / d_m rows; V = 0
        without ``history_mean``. `click_values`: `_click_values(x, mask)`, if already computed."""
        if not self.history_mean:
            return x.new_zeros((*x.shape[:2], 0, x.shape[-1]))
        if click_values is None:
            click_values = self._click_values(x, mask)
        weights = mask.to(x.dtype)
        real = weights.sum(dim=2).clamp(min=1.0)  # (B, T)
        values = [click_values.sum(dim=2) / real[..., None, None]]  # (B, T, 1 + P, d_m)
        if self.sketch_entries:
            if keys is None:
                raise ConfigError("count_buckets: writing a memory needs the items' count-sketch keys")
            buckets = key_buckets(keys.long(), self.count_buckets, self.item_buckets)  # (B, T, N, Q)
            histogram = x.new_zeros(*mask.shape[:2], self.sketch_entries)
            histogram.scatter_add_(
                2, buckets.flatten(2), weights[..., None].expand(buckets.shape).flatten(2)
            )  # (B, T, entries): each table's counts
            histogram = histogram / real[..., None]
            width = count_rows(self.sketch_entries, x.shape[-1]) * x.shape[-1]  # whole rows; the rest stays 0
            histogram = functional.pad(histogram, (0, width - self.sketch_entries))
            values.append(histogram.unflatten(-1, (-1, x.shape[-1])))
        return torch.cat(values, dim=2)


class Trajectory(NamedTuple):
    """`ContinualMemoryMachine.trajectory_parts`: the memories after every segment and what was
    computed per click on the way."""

    states: torch.Tensor  # (B, T, rows, d_m) the memory after each segment
    values: torch.Tensor | None  # (B, T, N, 1 + P, d_m) each click's mean and profile values (history_mean)
    recurrent: torch.Tensor | None  # (B, T x N, d_m) the recurrent row after each click (recurrent)


class Pending(NamedTuple):
    """What the reason head reads of the clicks since a memory's last whole segment (fewer than N),
    one row per memory or target: the head counts them into the running means it reads and takes
    the recurrent row after them, which is what writing them would do to those rows
    (`ContinualMemoryMachine.count_partial`), at the cost of a few vector operations.

    Shape letters: J rows, W <= N clicks.
    """

    clicks: torch.Tensor  # (J,) int64 clicks pending
    held: torch.Tensor  # (J, W) bool, True at the pending clicks (first in each row)
    sums: torch.Tensor | None  # (J, 1 + P, d_m) the sum of their embeddings and prototype assignments
    keys: torch.Tensor | None  # (J, W) their count-sketch keys (read where `held`)
    recurrent: torch.Tensor | None  # (J, d_m) the recurrent row after them

    def select(self, rows: torch.Tensor) -> Pending:
        """The rows `rows` (S,) of each field."""

        def pick(field: torch.Tensor | None) -> torch.Tensor | None:
            return None if field is None else gather_rows(field, rows)

        return Pending(
            gather_rows(self.clicks, rows),
            gather_rows(self.held, rows),
            pick(self.sums),
            pick(self.keys),
            pick(self.recurrent),
        )


def gather_rows(tensor: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``tensor[rows]`` along dim 0, as index_select (a deterministic backward); a view when the
    tensor has one row (a request's single user: nothing copied per candidate)."""
    if len(tensor) == 1:
        return tensor.expand(len(rows), *tensor.shape[1:])
    return tensor.index_select(0, rows)


MEAN_ROWS = 2  # the history mean and its segment count (`ContinualMemoryMachine`, history_mean)


class MemoryParts(NamedTuple):
    """The parts of (M, rows, d_m) memories (`split_memory`); None where the layout has none."""

    slots: torch.Tensor  # (M, K, d_m)
    mean: torch.Tensor | None  # (M, d_m) the history mean
    profile: torch.Tensor | None  # (M, P d_m) the interest profile
    recurrent: torch.Tensor | None  # (M, d_m) the recurrent row
    counts: torch.Tensor | None  # (M, C) the count sketch
    segments: torch.Tensor | None  # (M,) segments counted in the running means


def split_memory(
    memory: torch.Tensor,
    history_mean: bool,
    profile_rows: int = 0,
    slots: int | None = None,
    recurrent: bool = False,
    count_rows: int = 0,
) -> MemoryParts:
    """(M, rows, d_m) memories -> their `MemoryParts`: the one place that knows the row layout
    (`ContinualMemoryMachine`). `slots` is K (None: every row before the running means)."""
    extra = MEAN_ROWS + profile_rows + count_rows if history_mean else 0
    if slots is None:
        slots = memory.shape[1] - extra - (1 if recurrent else 0)
    state = memory[:, slots] if recurrent else None
    if not history_mean:
        return MemoryParts(memory[:, :slots], None, None, state, None, None)
    means = memory[:, memory.shape[1] - extra :]  # mean, P profile rows, count rows, the count
    profile = means[:, 1 : 1 + profile_rows].flatten(1) if profile_rows else None
    counts = means[:, 1 + profile_rows : -1].flatten(1) if count_rows else None
    return MemoryParts(memory[:, :slots], means[:, 0], profile, state, counts, means[:, -1, 0])


def count_rows(buckets: int, memory_dim: int) -> int:
    """Memory rows of a count sketch of `buckets` entries: ceil(C / d_m) (the last row zero-padded)."""
    return -(-buckets // memory_dim)


def memory_rows(
    slots: int,
    memory_dim: int,
    recurrent: bool,
    history_mean: bool,
    profile_rows: int,
    count_buckets: int,
    item_buckets: int = 0,
) -> int:
    """Rows of one memory of this layout: K slots, [the recurrent row], [the mean, P profile rows,
    ceil((C + 2 C_i) / d_m) count rows and the segment count]."""
    sketch = count_rows(sketch_entries(count_buckets, item_buckets), memory_dim)
    means = MEAN_ROWS + profile_rows + sketch if history_mean else 0
    return slots + (1 if recurrent else 0) + means


def _add_to_mean(rows: torch.Tensor, segment_values: torch.Tensor) -> torch.Tensor:
    """(B, V + 1, d_m) [running means; count row] and (B, V, d_m) a new segment's values -> the
    V + 1 rows after it (every running mean moves by (value - mean) / count)."""
    means, count = rows[:, :-1], rows[:, -1, :1] + 1.0  # (B, V, d_m), (B, 1)
    means = means + (segment_values - means) / count[:, :, None]
    count_row = torch.cat([count, torch.zeros_like(means[:, 0, 1:])], dim=-1)
    return torch.cat([means, count_row[:, None]], dim=1)


def _running_means(rows: torch.Tensor, values: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    """(B, V + 1, d_m) [running means; count row] before T segments, their (B, T, V, d_m) values
    and (B, T) live flags -> (B, T, V + 1, d_m) the rows after each segment: each mean over the
    live segments so far (a dead segment changes nothing), computed in float32."""
    means, start = rows[:, :-1].float(), rows[:, -1, 0].float()  # (B, V, d_m), (B,)
    counts = start[:, None] + live.float().cumsum(dim=1)  # (B, T)
    totals = (means * start[:, None, None])[:, None] + (values.float() * live[..., None, None]).cumsum(dim=1)
    seen = (counts > 0)[..., None, None]
    averaged = torch.where(seen, totals / counts.clamp(min=1.0)[..., None, None], means[:, None])
    count_row = functional.pad(counts[..., None], (0, rows.shape[-1] - 1))  # (B, T, d_m)
    return torch.cat([averaged, count_row[:, :, None]], dim=2).to(rows.dtype)
