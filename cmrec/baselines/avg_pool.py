"""`avg-pool`: the attention-free floor every model must beat.

The mean of the history's embeddings, the candidate's embedding and their product go through an
MLP (200, 80, PReLU, as DIEN's final MLP). Shape letters: H histories, S samples, D features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

from cmrec.baselines.common import MLP, check_positive, masked_mean, pad_histories
from cmrec.data.batch import Batch
from cmrec.embeddings.tables import ItemEmbeddings
from cmrec.output import ModelOutput


@dataclass(frozen=True)
class AvgPoolConfig:
    item_dim: int = 64
    mlp: tuple[int, ...] = (200, 80)

    def __post_init__(self) -> None:
        check_positive("AvgPoolConfig", item_dim=self.item_dim, mlp=self.mlp)


class AvgPoolModel(nn.Module):
    """Mean-pooled history + candidate -> MLP -> CTR logit; loss ``ctr`` (binary cross-entropy)."""

    def __init__(self, config: AvgPoolConfig, embeddings: ItemEmbeddings) -> None:
        super().__init__()
        self.config = config
        self.embeddings = embeddings
        self.mlp = MLP(3 * config.item_dim, config.mlp)

    def forward(self, batch: Batch) -> ModelOutput:
        values, lengths = self.embeddings(batch.history)
        x, mask = pad_histories(values, lengths)  # (H, L, D), (H, L)
        pooled = masked_mean(x, mask)[batch.history_index]  # (S, D)
        target = self.embeddings.lookup(batch.target_items, batch.target_categories)  # (S, D)
        logits = self.mlp(torch.cat([pooled, target, pooled * target], dim=-1)).squeeze(-1)
        loss = functional.binary_cross_entropy_with_logits(logits, batch.labels)
        return ModelOutput(logits=logits, losses={"ctr": loss}, weights={"ctr": 1.0})
