"""The continual memory machine G: encode segments, then write them into memory one at a time.

Shape letters: B batch, T segments, N items per segment, K slots, d_x item width, d_m slot width.
"""

from __future__ import annotations

import torch
from torch import nn

from cmrec.memory.encoder import SegmentEncoder
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

    Args:
        encoder: the segment encoder.
        update: the memory update module.
        slots: K.
        memory_dim: d_m (the item width, when ``history_mean``).
        history_mean: keep the two history-mean rows.

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
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.update = update
        self.slots = slots
        self.history_mean = history_mean
        # Distinct random slots: identical slots would attend identically and never diverge.
        self.initial = nn.Parameter(torch.randn(slots, memory_dim) * 0.5)

    def initial_memory(self, batch_size: int) -> torch.Tensor:
        """(B, rows, d_m) the learned initial memory, for users with no history yet."""
        slots = self.initial.unsqueeze(0).expand(batch_size, -1, -1)
        if not self.history_mean:
            return slots
        return torch.cat([slots, slots.new_zeros(batch_size, MEAN_ROWS, slots.shape[-1])], dim=1)

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

    def slots_of(self, memory: torch.Tensor) -> torch.Tensor:
        """(..., K, d_m) the slots of (..., rows, d_m) memories (what attention and recall read)."""
        return memory[..., : self.slots, :]

    def _states(
        self, memory: torch.Tensor, features: torch.Tensor, mask: torch.Tensor, x: torch.Tensor
    ) -> list[torch.Tensor]:
        """The T memories after each segment, (B, rows, d_m) each: the one update loop."""
        projected = self.update.project_items(features)  # (B, T, N, d_model)
        live = mask.any(dim=-1)  # (B, T) segments with at least one item
        means = _segment_means(x, mask) if self.history_mean else x.new_zeros((*x.shape[:2], 0))
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


MEAN_ROWS = 2  # the history mean and its segment count (`ContinualMemoryMachine`, history_mean)


def _segment_means(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, N, d_x) items and (B, T, N) mask -> (B, T, d_x) each segment's mean item (0 if empty)."""
    weights = mask.to(x.dtype)[..., None]
    return (x * weights).sum(dim=2) / weights.sum(dim=2).clamp(min=1.0)


def _add_to_mean(rows: torch.Tensor, segment_mean: torch.Tensor) -> torch.Tensor:
    """(B, 2, d_m) [mean; count row] and (B, d_m) a new segment's mean -> the two rows after it."""
    mean, count = rows[:, 0], rows[:, 1, :1] + 1.0  # (B, d_m), (B, 1)
    mean = mean + (segment_mean - mean) / count
    count_row = torch.cat([count, torch.zeros_like(mean[:, 1:])], dim=-1)
    return torch.stack([mean, count_row], dim=1)
