"""The Model contract: every model returns logits and its loss terms, separately, and declares
what its training batches and its serving state need (`ModelNeeds`), so that no job guesses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn
from torch.utils import _pytree

if TYPE_CHECKING:
    from cmrec.data.batch import DenseTargets
    from cmrec.embeddings.tables import ItemEmbeddings


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


@dataclass(frozen=True)
class ModelNeeds:
    """What a model declares about itself; every registered model has one as ``model.needs``.

    Args:
        history_negatives: its batches must carry one sampled negative per history event (DIEN's
            auxiliary loss).
        dense_targets: the dense supervision its training loader adds (`DenseTargets`), or None.
        memory_shape: (rows, d_m) of the per-user state it serves from (a model incremental by
            construction, `IncrementalModel`: CM's memory, GRU4REC's hidden state); None for an
            end-to-end model, which must keep each user's history.
    """

    history_negatives: bool = False
    dense_targets: DenseTargets | None = None
    memory_shape: tuple[int, int] | None = None

    def serving_bytes_per_user(self, max_len: int, has_categories: bool) -> int:
        """What serving stores per user: the float32 memory, or the history's int32 ids."""
        if self.memory_shape is not None:
            rows, dim = self.memory_shape
            return rows * dim * 4
        return max_len * (2 if has_categories else 1) * 4


@runtime_checkable
class IncrementalModel(Protocol):
    """A model incremental by construction: what refresh and score need to serve it from a store.

    A user's state is a fixed (rows, d_m) tensor (``needs.memory_shape``) whatever the history
    length; clicks are written into it `write_len` at a time (CM: one N-click segment; GRU4REC: one
    click), so a store keeps fewer than `write_len` clicks pending per user; a candidate is scored
    from the state alone. Writing a history in one call, in chunks, or through the training forward
    gives the same state (tested for every such model).
    """

    needs: ModelNeeds

    @property
    def write_len(self) -> int:
        """Clicks per write step; the store keeps fewer than this many pending per user."""
        ...

    def initial_memory(self, batch_size: int) -> torch.Tensor:
        """(B, rows, d_m) state of users without history."""
        ...

    def write(
        self,
        memory: torch.Tensor,
        segment_items: torch.Tensor,
        mask: torch.Tensor,
        segment_categories: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, rows, d_m) states after the clicks of (B, T, write_len) item grids, oldest first
        (`mask` False on padding, which leaves a state unchanged)."""
        ...

    def score(
        self, memory: torch.Tensor, items: torch.Tensor, categories: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(S, rows, d_m) states and (S,) candidates -> (S,) CTR logits."""
        ...


class RecModel(nn.Module):
    """The base of every registered model: ``forward(batch) -> ModelOutput`` and ``needs``.

    Subclasses set ``self.needs`` in ``__init__``; the jobs read it instead of probing the model.
    """

    needs: ModelNeeds
    embeddings: ItemEmbeddings  # every model embeds through one TorchRec EmbeddingCollection
