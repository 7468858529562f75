"""Cutting jagged histories into fixed-length segments (CM's N-click segments; one segment as
long as the longest history is the right-padded layout of the end-to-end baselines).

Shape letters: E events, H histories, T segments per history, N items per segment, D features.

Segments are aligned to the start of each history: segment t holds events [t*N, (t+1)*N). The last
segment of a history may be partial (its tail is padding) and shorter histories end with whole
padding segments; `mask` marks the real events. Padding never changes a result: padded items take
no attention and a fully padded segment leaves the memory unchanged.
"""

from __future__ import annotations

import torch


def segment_jagged(
    values: torch.Tensor, lengths: torch.Tensor, segment_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scatter jagged values into segments.

    Args:
        values: (E, *F) per-event values (features (E, D), or ids (E,)), history after history.
        lengths: (H,) events per history.
        segment_len: N.

    Returns:
        segments: (H, T, N, *F) with zeros at padding, T = max(1, ceil(max(lengths) / N)).
        mask: (H, T, N) bool, True at real events.
    """
    num_histories = lengths.numel()
    longest = int(lengths.max()) if num_histories else 0
    num_segments = max(1, -(-longest // segment_len))
    slots = num_segments * segment_len
    starts = torch.cumsum(lengths, 0) - lengths  # (H,) offset of each history in `values`
    row = torch.repeat_interleave(torch.arange(num_histories, device=values.device), lengths)  # (E,)
    position = torch.arange(values.shape[0], device=values.device) - starts[row]  # (E,) index in its history
    flat = row * slots + position  # (E,) index into (H * T * N)
    trailing = values.shape[1:]
    out = values.new_zeros((num_histories * slots, *trailing)).index_copy(0, flat, values)
    mask = torch.zeros(num_histories * slots, dtype=torch.bool, device=values.device)
    mask[flat] = True
    return (
        out.view(num_histories, num_segments, segment_len, *trailing),  # (H, T, N, *F)
        mask.view(num_histories, num_segments, segment_len),  # (H, T, N)
    )
