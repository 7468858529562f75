"""The reason model R for recommendation (paper Appendix A.1): multi-hop attention over memory.

Shape letters: S samples, K slots, d_m slot width, d_x item width, d_model query width.
"""

from __future__ import annotations

import torch
from torch import nn


class _Hop(nn.Module):
    """One hop c: gamma_k = w_c^T tanh(W1 q_{c-1} + W2 m_k + b); e_c = sum_k softmax(gamma)_k m_k;
    q_c = W_q [e_c; q_{c-1}]."""

    def __init__(self, memory_dim: int, model_dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(model_dim, model_dim, bias=False)  # W1^c
        self.slot = nn.Linear(memory_dim, model_dim)  # W2^c and b^c
        self.score = nn.Linear(model_dim, 1, bias=False)  # w^c
        self.next_query = nn.Linear(memory_dim + model_dim, model_dim, bias=False)  # W_q

    def forward(self, memory: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        scores = self.score(torch.tanh(self.query(query)[:, None, :] + self.slot(memory)))  # (S, K, 1)
        weights = torch.softmax(scores, dim=1)  # over slots
        evidence = (weights * memory).sum(dim=1)  # (S, d_m) e_c
        return self.next_query(torch.cat([evidence, query], dim=-1))  # (S, d_model) q_c


class ReasonHead(nn.Module):
    """Scores a candidate against a memory alone: C hops of attention, then a linear CTR logit.

    The query q_0 is the candidate's embedding (projected to d_model when d_x differs).

    Args:
        item_dim: d_x.
        memory_dim: d_m.
        model_dim: d_model.
        hops: C (the paper uses 1 for sequence recommendation).

    Example::

        head = ReasonHead(item_dim=64, memory_dim=64, model_dim=64, hops=1)
        logits = head(memory, candidates)   # (S, K, 64), (S, 64) -> (S,)
    """

    def __init__(self, item_dim: int, memory_dim: int, model_dim: int, hops: int) -> None:
        super().__init__()
        self.query_in: nn.Module = nn.Linear(item_dim, model_dim) if item_dim != model_dim else nn.Identity()
        self.hops = nn.ModuleList([_Hop(memory_dim, model_dim) for _ in range(hops)])
        self.output = nn.Linear(model_dim, 1)

    def forward(self, memory: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """memory: (S, K, d_m); candidates: (S, d_x) -> (S,) logits."""
        query = self.query_in(candidates)  # (S, d_model) q_0
        for hop in self.hops:
            query = hop(memory, query)
        return self.output(query).squeeze(-1)
