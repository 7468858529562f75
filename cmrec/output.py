"""The Model contract: every model returns logits and its loss terms, separately."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ModelOutput:
    """What every model's ``forward(batch)`` returns.

    Args:
        logits: (S,) CTR logits, one per sample of the batch.
        losses: each loss term by name (e.g. ``reason``, ``item``, ``seq``), unweighted.
        weights: the weight of each term in the training objective; the training loop sums
            ``weights[name] * losses[name]`` and never branches on the model type.
    """

    logits: torch.Tensor
    losses: dict[str, torch.Tensor]
    weights: dict[str, float] = field(default_factory=dict)

    def total(self) -> torch.Tensor:
        """The weighted sum of the loss terms (a term without a weight counts once)."""
        terms = [self.weights.get(name, 1.0) * value for name, value in self.losses.items()]
        return torch.stack(terms).sum()
