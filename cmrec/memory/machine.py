"""The continual memory machine G: encode segments, then write them into memory one at a time.

Shape letters: B batch, T segments, N items per segment, K slots, d_x item width, d_m slot width.
"""

from __future__ import annotations

import torch
from torch import nn

from cmrec.errors import ConfigError
from cmrec.memory.encoder import SegmentEncoder
from cmrec.memory.profile import Prototypes
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
    (`cmrec.heads.reason`). Row layout: K slots, the mean, P profile rows, the count.

    Args:
        encoder: the segment encoder.
        update: the memory update module.
        slots: K.
        memory_dim: d_m (the item width, when ``history_mean``).
        history_mean: keep the two history-mean rows.
        profile_rows: P interest-profile rows (needs ``history_mean``; 0: none).

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
    ) -> None:
        super().__init__()
        if profile_rows and not history_mean:
            raise ConfigError("profile_rows needs history_mean (the profile rows sit beside the mean)")
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
        if not self.history_mean:
            return slots
        extra = MEAN_ROWS + self.profile_rows
        return torch.cat([slots, slots.new_zeros(batch_size, extra, slots.shape[-1])], dim=1)

    def forward(self, memory: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Write T segments, oldest first.

        Args:
            memory: (B, rows, d_m) memory before the segments.
            x: (B, T, N, d_x) segment item features.
            mask: (B, T, N) real items.

        Returns:
            (B, rows, d_m) memory after the segments.
        """
        features = self.encoder(x, mask)  # (B, T, N, d_x), one call for all segments
        return self.write_features(memory, features, mask, x)

    def trajectory(self, memory: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Like `forward`, but the memory after *every* segment: (B, T, rows, d_m), oldest first.

        ``trajectory(...)[:, -1]`` is `forward`'s result (trailing padding segments change nothing);
        ``[:, t]`` is the memory after segments 0..t, what dense training scores segment t + 1 with.
        """
        features = self.encoder(x, mask)  # (B, T, N, d_x)
        return torch.stack(self._states(memory, features, mask, x), dim=1)

    def write_features(
        self, memory: torch.Tensor, features: torch.Tensor, mask: torch.Tensor, x: torch.Tensor
    ) -> torch.Tensor:
        """The memory update alone: write already encoded (B, T, N, d_x) features of the
        (B, T, N, d_x) items `x`, oldest first."""
        states = self._states(memory, features, mask, x)
        return states[-1] if states else memory

    def count_partial(self, memory: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, rows, d_m) memories with a partial segment, (B, W, d_x) items and their (B, W) mask,
        counted in the history-mean and profile rows only: what writing it does to those rows, at
        the cost of a mean (no encoder, no update). The slots are left as they are; a row without
        a real item, and a memory without ``history_mean``, are returned unchanged."""
        if not self.history_mean or x.shape[1] == 0:
            return memory
        values = self._segment_values(x[:, None], mask[:, None])[:, 0]  # (B, V, d_m)
        rows = memory[:, self.slots :]
        counted = torch.where(mask.any(dim=-1)[:, None, None], _add_to_mean(rows, values), rows)
        return torch.cat([memory[:, : self.slots], counted], dim=1)

    def slots_of(self, memory: torch.Tensor) -> torch.Tensor:
        """(..., K, d_m) the slots of (..., rows, d_m) memories (what attention and recall read)."""
        return memory[..., : self.slots, :]

    def _states(
        self, memory: torch.Tensor, features: torch.Tensor, mask: torch.Tensor, x: torch.Tensor
    ) -> list[torch.Tensor]:
        """The T memories after each segment, (B, rows, d_m) each: the one update loop."""
        projected = self.update.project_items(features)  # (B, T, N, d_model)
        live = mask.any(dim=-1)  # (B, T) segments with at least one item
        means = self._segment_values(x, mask)  # (B, T, V, d_m): what the running means take in
        states = []
        # unbind once: indexing [:, t] in the loop would give each step's backward a whole-size gradient.
        steps = zip(
            features.unbind(1),
            projected.unbind(1),
            mask.unbind(1),
            live.unbind(1),
            means.unbind(1),
            strict=True,
        )
        for features_t, projected_t, mask_t, live_t, mean_t in steps:  # sequential over segments only
            written = self.update(self.slots_of(memory), features_t, projected_t, mask_t)
            if self.history_mean:
                written = torch.cat([written, _add_to_mean(memory[:, self.slots :], mean_t)], dim=1)
            memory = torch.where(live_t[:, None, None], written, memory)
            states.append(memory)
        return states

    def _segment_values(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, V, d_m) per segment: its mean item and (with the profile) its mean prototype
        assignment as P rows; V = 0 without ``history_mean``."""
        if not self.history_mean:
            return x.new_zeros((*x.shape[:2], 0, x.shape[-1]))
        values = [_segment_means(x, mask)[:, :, None]]  # (B, T, 1, d_x)
        if self.prototypes is not None:
            assignment = self.prototypes(x)  # (B, T, N, P d_m)
            values.append(_segment_means(assignment, mask).unflatten(-1, (self.profile_rows, x.shape[-1])))
        return torch.cat(values, dim=2)


MEAN_ROWS = 2  # the history mean and its segment count (`ContinualMemoryMachine`, history_mean)


def split_memory(
    memory: torch.Tensor, history_mean: bool, profile_rows: int = 0
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(M, rows, d_m) memories -> the slots (M, K, d_m), the history mean (M, d_m) or None, and
    the interest profile (M, P d_m) or None: the one place that knows the row layout."""
    if not history_mean:
        return memory, None, None
    extra = MEAN_ROWS + profile_rows
    slots, mean = memory[:, :-extra], memory[:, -extra]
    profile = memory[:, -extra + 1 : -1].flatten(1) if profile_rows else None
    return slots, mean, profile


def _segment_means(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, N, F) values and (B, T, N) mask -> (B, T, F) each segment's mean value (0 if empty)."""
    weights = mask.to(x.dtype)[..., None]
    return (x * weights).sum(dim=2) / weights.sum(dim=2).clamp(min=1.0)


def _add_to_mean(rows: torch.Tensor, segment_values: torch.Tensor) -> torch.Tensor:
    """(B, V + 1, d_m) [running means; count row] and (B, V, d_m) a new segment's values -> the
    V + 1 rows after it (every running mean moves by (value - mean) / count)."""
    means, count = rows[:, :-1], rows[:, -1, :1] + 1.0  # (B, V, d_m), (B, 1)
    means = means + (segment_values - means) / count[:, :, None]
    count_row = torch.cat([count, torch.zeros_like(means[:, 0, 1:])], dim=-1)
    return torch.cat([means, count_row[:, None]], dim=1)
