"""RUM, item level (Chen et al., WSDM 2018): a first-in-first-out memory of the user's latest items,
read by attention with the candidate and merged into a user representation, for CTR. Written from
the paper.

Shape letters: B histories, K memory slots (``slots``), D item features, S samples.

* **Memory**: the embeddings of the K latest clicks (writing a click pushes it in and drops the
  oldest); a history shorter than K leaves empty slots, which are never read.
* **Read**: w_k = softmax_k(q . m_k) with the candidate q over the filled slots; p^m = sum_k w_k m_k.
* **Merge**: p = p* + alpha p^m. The paper's p* is a learned user embedding; cmrec's models have no
  user-id tables (a user is their history), so p* is the mean of the history's embeddings.
* CTR: the MLP (200, 80, PReLU) over [p; q; p * q], loss ``ctr``.
* Dense targets (``dense_per_segment`` > 0, the registry's preset): a target inside the history is
  scored from the memory and mean of the clicks before it, exactly as a history ending there.

``slots`` = 20 and ``alpha`` = 0.2 are our settings: the paper varies K and tunes alpha, and we could
not confirm its defaults from the sources here. RUM reads the raw history (its latest K clicks and
their mean), so it is end-to-end here: `refresh` refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cmrec.baselines.common import (
    DENSE_SEGMENT,
    MLP,
    check_dense,
    check_positive,
    pad_histories,
    prefix_windows,
)
from cmrec.data.batch import Batch, DenseTargets
from cmrec.embeddings.tables import ItemEmbeddings
from cmrec.errors import ConfigError
from cmrec.output import ModelNeeds, ModelOutput, RecModel


@dataclass(frozen=True)
class RUMConfig:
    """Args: item_dim (D); slots (K, 20); alpha (the weight of the memory read, 0.2); mlp;
    dense_per_segment, dense_last_segments, sample_share: dense supervision as `CMConfig`'s."""

    item_dim: int = 64
    slots: int = 20
    alpha: float = 0.2
    mlp: tuple[int, ...] = (200, 80)
    dense_per_segment: int = 0
    dense_last_segments: int = 0
    sample_share: float = 0.0

    def __post_init__(self) -> None:
        check_dense("RUMConfig", self.dense_per_segment, self.dense_last_segments, self.sample_share)
        check_positive("RUMConfig", item_dim=self.item_dim, slots=self.slots, mlp=self.mlp)
        if not self.alpha >= 0:
            raise ConfigError(f"RUMConfig: alpha must be >= 0, got {self.alpha}")


class RUMModel(RecModel):
    """Item-level RUM for CTR; loss ``ctr``."""

    def __init__(self, config: RUMConfig, embeddings: ItemEmbeddings) -> None:
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
        x, mask = pad_histories(values, lengths)  # (B, L, D), (B, L)
        sums = torch.cumsum(x * mask[..., None], dim=1)  # (B, L, D): prefix sums for the means
        index = batch.history_index
        logits = self._logits(x, sums, index, lengths[index], batch.target_items, batch.target_categories)
        dense = None
        targets = batch.history_targets
        if targets is not None and len(targets):
            row, ends = targets.history_row, targets.position
            dense = self._logits(x, sums, row, ends, targets.items, targets.categories)
        loss = batch.target_loss(logits, dense, self.config.sample_share)
        return ModelOutput(logits=logits, losses={"ctr": loss}, weights={"ctr": 1.0})

    def _logits(
        self,
        x: torch.Tensor,
        sums: torch.Tensor,
        rows: torch.Tensor,
        ends: torch.Tensor,
        items: torch.Tensor,
        categories: torch.Tensor | None,
    ) -> torch.Tensor:
        """Logits of (S,) candidates, each from the first ``ends`` clicks of history ``rows``."""
        target = self.embeddings.lookup(items, categories)  # (S, D)
        total = sums[rows, (ends - 1).clamp(min=0)] * (ends > 0)[:, None]
        mean = total / ends.clamp(min=1)[:, None].to(total.dtype)  # zeros for an empty history
        user = mean + self.config.alpha * self.read(x, rows, ends, target)
        return self.mlp(torch.cat([user, target, user * target], dim=-1)).squeeze(-1)

    def read(
        self, x: torch.Tensor, rows: torch.Tensor, ends: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        """(H, L, D) right-padded histories, (S,) rows and prefix lengths and (S, D) candidates ->
        (S, D) p^m: the attention read of the memory of the K latest clicks before each end (zeros
        for an empty prefix)."""
        slots = self.config.slots
        memory = prefix_windows(x, rows, ends, slots)  # (S, K, D)
        filled = torch.arange(slots, device=x.device)[None] >= slots - ends[:, None]  # (S, K)
        scores = (memory * target[:, None]).sum(dim=-1).masked_fill(~filled, torch.finfo(x.dtype).min)
        weights = torch.softmax(scores, dim=-1) * filled
        return (weights[..., None] * memory).sum(dim=1)
