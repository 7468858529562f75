"""The recent past: the candidate read against the user's clicks since the last whole segment.

A segment memory sees a click only once its N-click segment is complete, so up to N - 1 of a
user's most recent clicks are not in it: exactly the clicks a store keeps pending. `RecentReader`
reads them directly (at most N - 1 item embeddings per user, a constant size), in training for
every target (the clicks of the target's own segment before it) exactly as in serving (the
store's pending clicks), and adds a logit of its own to the memory's.

Shape letters: S candidates, N segment length, d_x item width.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from cmrec.baselines.common import MLP


class RecentReader(nn.Module):
    """Attention of the candidate over its user's recent clicks, then an MLP logit.

    Each click's key is its embedding plus a learned embedding of how recent it is (0: the last
    click); a learned null key lets the candidate attend to "none of these" (and is all there is
    when no click is pending). The MLP reads ``[r; e_C; r ⊙ e_C; max_j s_j; n / N]`` for the
    attended clicks r, the candidate e_C, its best match score and the number n of recent clicks.

    Args:
        item_dim: d_x.
        segment_len: N (at most N - 1 clicks are recent).
        mlp: hidden widths of the MLP.

    Example::

        reader = RecentReader(item_dim=64, segment_len=20)
        logits = reader(recent, mask, candidates)   # (S, N, 64), (S, N) bool, (S, 64) -> (S,)
    """

    def __init__(self, item_dim: int, segment_len: int, mlp: tuple[int, ...] = (200, 80)) -> None:
        super().__init__()
        self.segment_len = segment_len
        self.recency = nn.Parameter(torch.zeros(segment_len, item_dim))
        self.key = nn.Linear(item_dim, item_dim, bias=False)
        self.null = nn.Parameter(torch.zeros(item_dim))
        self.output = MLP(3 * item_dim + 2, mlp)

    def forward(self, recent: torch.Tensor, mask: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """recent: (S, W, d_x) clicks, oldest first, W <= N; mask: (S, W) True at real clicks,
        which come first in each row; candidates: (S, d_x) -> (S,) logits."""
        count = mask.sum(dim=1)  # (S,)
        position = torch.arange(recent.shape[1], device=recent.device)
        from_end = (count[:, None] - 1 - position).clamp(min=0, max=self.segment_len - 1)  # (S, W)
        keys = self.key(recent + self.recency[from_end])  # (S, W, d_x)
        scale = recent.shape[-1] ** -0.5
        scores = (keys @ candidates[:, :, None]).squeeze(-1) * scale  # (S, W)
        scores = scores.masked_fill(~mask, float("-inf"))
        null = (candidates @ self.key(self.null)) * scale  # (S,)
        weights = torch.softmax(torch.cat([scores, null[:, None]], dim=1), dim=1)[:, :-1]  # (S, W)
        attended = (weights[:, :, None] * recent).sum(dim=1)  # (S, d_x); the null's value is 0
        best = torch.where(count > 0, scores.amax(dim=1) if scores.shape[1] else null, torch.zeros_like(null))
        features = [attended, candidates, attended * candidates, best[:, None]]
        features.append((count.to(recent.dtype) / self.segment_len)[:, None])
        return functional.softplus(self.output(torch.cat(features, dim=-1)).squeeze(-1))
