"""The Model contract: every model returns logits and its loss terms, separately."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils import _pytree


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


def _flatten(output: ModelOutput) -> tuple[list[Any], dict[str, float]]:
    return [output.logits, output.losses], output.weights


def _unflatten(children: Any, weights: Any) -> ModelOutput:
    logits, losses = children
    return ModelOutput(logits=logits, losses=losses, weights=weights)


# DistributedDataParallel routes a forward's output tensors through its own autograd node (its
# first-iteration and unused-parameter gradient reduction hangs on it); it finds them by pytree
# flattening, which treats an unregistered dataclass as one opaque leaf, and then silently never
# averages the gradients. Registered, the logits and every loss term are visible to it.
_pytree.register_pytree_node(
    ModelOutput, _flatten, _unflatten, serialized_type_name="cmrec.output.ModelOutput"
)
