"""Soft assignment of items to learned prototypes: what the interest profile counts.

Shape letters: F item width, Q prototypes (``profile_rows x d_m`` in CM).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional


class Prototypes(nn.Module):
    """``softmax(s · cos(x, w_q))`` over Q learned prototype directions w_q, with a learned scale s.

    Cosine logits make the assignment independent of the embedding scale: the item tables start
    tiny (TorchRec's default initialisation), and plain ``W x`` logits would start every item
    almost uniformly spread over the prototypes, a profile with nothing to read. The scale starts
    at `initial_scale` (assignments about as sharp as a softmax at temperature 0.1) and is learned.

    Args:
        dim: F.
        count: Q.
        initial_scale: s at initialisation.

    Example::

        prototypes = Prototypes(dim=64, count=128)
        assignment = prototypes(x)   # (..., 64) -> (..., 128), rows sum to 1
    """

    def __init__(self, dim: int, count: int, initial_scale: float = 10.0) -> None:
        super().__init__()
        self.directions = nn.Parameter(torch.randn(count, dim))
        self.log_scale = nn.Parameter(torch.tensor(math.log(initial_scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., F) items -> (..., Q) their soft assignment (each row sums to 1)."""
        cosine = functional.normalize(x, dim=-1) @ functional.normalize(self.directions, dim=-1).T
        return torch.softmax(self.log_scale.exp() * cosine, dim=-1)
