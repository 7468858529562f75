"""`avg-pool`: the attention-free floor every model must beat.

The mean of the history's embeddings, the candidate's embedding and their product go through an
MLP (200, 80, PReLU, as DIEN's final MLP). Shape letters: H histories, S samples, D features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cmrec.baselines.common import (
    DENSE_SEGMENT,
    MLP,
    check_dense,
    check_positive,
    masked_mean,
    pad_histories,
    prefix_rows,
)
from cmrec.data.batch import Batch, DenseTargets
from cmrec.embeddings.tables import ItemEmbeddings
from cmrec.output import ModelNeeds, ModelOutput, RecModel


@dataclass(frozen=True)
class AvgPoolConfig:
    """Args: item_dim, mlp (hidden widths); dense_per_segment, dense_last_segments, sample_share:
    dense supervision as `CMConfig`'s (targets scored from the mean of every earlier event)."""

    item_dim: int = 64
    mlp: tuple[int, ...] = (200, 80)
    dense_per_segment: int = 0
    dense_last_segments: int = 0
    sample_share: float = 0.0

    def __post_init__(self) -> None:
        check_positive("AvgPoolConfig", item_dim=self.item_dim, mlp=self.mlp)
        check_dense("AvgPoolConfig", self.dense_per_segment, self.dense_last_segments, self.sample_share)


class AvgPoolModel(RecModel):
    """Mean-pooled history + candidate -> MLP -> CTR logit; loss ``ctr`` (binary cross-entropy)."""

    def __init__(self, config: AvgPoolConfig, embeddings: ItemEmbeddings) -> None:
        super().__init__()
        self.config = config
        self.embeddings = embeddings
        self.mlp = MLP(3 * config.item_dim, config.mlp)
        self.needs = ModelNeeds(
            dense_targets=DenseTargets.request(
                DENSE_SEGMENT, config.dense_per_segment, config.dense_last_segments
            )
        )

    def forward(self, batch: Batch) -> ModelOutput:
        values, lengths = self.embeddings(batch.history)
        x, mask = pad_histories(values, lengths)  # (H, L, D), (H, L)
        logits = self._logits(
            masked_mean(x, mask)[batch.history_index], batch.target_items, batch.target_categories
        )
        dense = None
        targets = batch.history_targets
        if targets is not None and len(targets):
            # Prefix means from cumulative sums: the mean of the events before each target.
            sums = prefix_rows(torch.cumsum(x * mask[..., None], dim=1), targets)  # (D, D_x)
            pooled = sums / targets.position[:, None].to(sums.dtype)
            dense = self._logits(pooled, targets.items, targets.categories)
        loss = batch.target_loss(logits, dense, self.config.sample_share)
        return ModelOutput(logits=logits, losses={"ctr": loss}, weights={"ctr": 1.0})

    def _logits(
        self, pooled: torch.Tensor, items: torch.Tensor, categories: torch.Tensor | None
    ) -> torch.Tensor:
        target = self.embeddings.lookup(items, categories)  # (S, D)
        return self.mlp(torch.cat([pooled, target, pooled * target], dim=-1)).squeeze(-1)
