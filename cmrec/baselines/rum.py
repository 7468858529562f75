"""RUM, item level (Chen et al., WSDM 2018): a first-in-first-out memory of the user's latest items,
read by attention with the candidate and merged into a user representation, for CTR. Written from
the paper.

Shape letters: B histories, K memory slots (``slots``), D item features, S samples.

* **Memory**: the embeddings of the K latest clicks (writing a click pushes it in and drops the
  oldest); a history shorter than K leaves empty slots, which are never read.
* **Read**: w_k = softmax_k(q . m_k) with the candidate q over the filled slots; p^m = sum_k w_k m_k.
* **Merge**: p = p* + alpha p^m. The paper's p* is a learned user embedding; cmrec's models have no
  user-id tables (a user is their history), so p* is the mean of the history's embeddings.
* CTR: the MLP (200, 80, PReLU) over [p; q; p * q], loss ``ctr``, one target per user.

``slots`` = 20 and ``alpha`` = 0.2 are our settings: the paper varies K and tunes alpha, and we could
not confirm its defaults from the sources here. RUM reads the raw history (its latest K clicks and
their mean), so it is end-to-end here: `refresh` refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional

from cmrec.baselines.caser import last_window
from cmrec.baselines.common import MLP, check_positive, masked_mean, pad_histories
from cmrec.data.batch import Batch
from cmrec.embeddings.tables import ItemEmbeddings
from cmrec.errors import ConfigError
from cmrec.output import ModelNeeds, ModelOutput, RecModel


@dataclass(frozen=True)
class RUMConfig:
    """Args: item_dim (D); slots (K, 20); alpha (the weight of the memory read, 0.2); mlp."""

    item_dim: int = 64
    slots: int = 20
    alpha: float = 0.2
    mlp: tuple[int, ...] = (200, 80)

    def __post_init__(self) -> None:
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
        self.needs = ModelNeeds()

    def forward(self, batch: Batch) -> ModelOutput:
        values, lengths = self.embeddings(batch.history)
        x, mask = pad_histories(values, lengths)  # (B, L, D), (B, L)
        target = self.embeddings.lookup(batch.target_items, batch.target_categories)  # (S, D)
        index = batch.history_index
        read = self.read(x[index], lengths[index], target)
        user = masked_mean(x, mask)[index] + self.config.alpha * read
        logits = self.mlp(torch.cat([user, target, user * target], dim=-1)).squeeze(-1)
        loss = functional.binary_cross_entropy_with_logits(logits, batch.labels)
        return ModelOutput(logits=logits, losses={"ctr": loss}, weights={"ctr": 1.0})

    def read(self, x: torch.Tensor, lengths: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(S, L, D) right-padded histories, their lengths and (S, D) candidates -> (S, D) p^m: the
        attention read of the memory of the K latest clicks (zeros for an empty history)."""
        slots = self.config.slots
        memory = last_window(x, lengths, slots)  # (S, K, D)
        filled = torch.arange(slots, device=x.device)[None] >= slots - lengths[:, None]  # (S, K)
        scores = (memory * target[:, None]).sum(dim=-1).masked_fill(~filled, torch.finfo(x.dtype).min)
        weights = torch.softmax(scores, dim=-1) * filled
        return (weights[..., None] * memory).sum(dim=1)
