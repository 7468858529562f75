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

    Args:
        encoder: the segment encoder.
        update: the memory update module.
        slots: K.
        memory_dim: d_m.

    Example::

        machine = ContinualMemoryMachine(encoder, update, slots=20, memory_dim=64)
        memory = machine(machine.initial_memory(B), x, mask)   # (B, 20, 64)
    """

    def __init__(self, encoder: SegmentEncoder, update: MemoryUpdate, slots: int, memory_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.update = update
        # Distinct random slots: identical slots would attend identically and never diverge.
        self.initial = nn.Parameter(torch.randn(slots, memory_dim) * 0.5)

    def initial_memory(self, batch_size: int) -> torch.Tensor:
        """(B, K, d_m) the learned initial memory, for users with no history yet."""
        return self.initial.unsqueeze(0).expand(batch_size, -1, -1)

    def forward(self, memory: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Write T segments, oldest first.

        Args:
            memory: (B, K, d_m) memory before the segments.
            x: (B, T, N, d_x) segment item features.
            mask: (B, T, N) real items.

        Returns:
            (B, K, d_m) memory after the segments.
        """
        features = self.encoder(x, mask)  # (B, T, N, d_x), one call for all segments
        return self.write_features(memory, features, mask)

    def trajectory(self, memory: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Like `forward`, but the memory after *every* segment: (B, T, K, d_m), oldest first.

        ``trajectory(...)[:, -1]`` is `forward`'s result (trailing padding segments change nothing);
        ``[:, t]`` is the memory after segments 0..t, what dense training scores segment t + 1 with.
        """
        features = self.encoder(x, mask)  # (B, T, N, d_x)
        return torch.stack(self._states(memory, features, mask), dim=1)

    def write_features(
        self, memory: torch.Tensor, features: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """The memory update alone: write already encoded (B, T, N, d_x) features, oldest first."""
        states = self._states(memory, features, mask)
        return states[-1] if states else memory

    def _states(self, memory: torch.Tensor, features: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """The T memories after each segment, (B, K, d_m) each: the one update loop."""
        projected = self.update.project_items(features)  # (B, T, N, d_model)
        live = mask.any(dim=-1)  # (B, T) segments with at least one item
        states = []
        # unbind once: indexing [:, t] in the loop would give each step's backward a whole-size gradient.
        steps = zip(features.unbind(1), projected.unbind(1), mask.unbind(1), live.unbind(1), strict=True)
        for features_t, projected_t, mask_t, live_t in steps:  # sequential over segments only
            written = self.update(memory, features_t, projected_t, mask_t)
            memory = torch.where(live_t[:, None, None], written, memory)
            states.append(memory)
        return states
