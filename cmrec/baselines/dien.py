"""DIEN (Zhou et al., AAAI 2019): interest extractor, auxiliary loss, AUGRU interest evolution.

Shape letters: H histories, L longest history, S samples, D item features, G GRU hidden width.

Choices and their sources (the DIEN paper and its public code, `script/model.py` of the reference
implementation), and where we depart:

* Embeddings: our shared TorchRec tables, item + category summed, D = 64 (DIEN's code concatenates
  an 18-wide item and an 18-wide category embedding; we match CM's d = 64 so AUCs compare).
* Interest extractor: a GRU with G = D (the code's HIDDEN_SIZE equals its embedding width), run
  over the right-padded batch; states past a history's end are zeroed and never read.
* Auxiliary loss: h_t must tell the real next behaviour e_{t+1} from a sampled negative behaviour
  e'_{t+1}; an MLP (100, 50, sigmoid activations, as the code's auxiliary_net) on [h_t; e] gives
  the click logit; binary cross-entropy averaged over the valid (t, t+1) pairs. The negatives come
  from the data pipeline (`HistoryNegatives`: uniform items other than the clicked one), not from
  the future of the same sequence. Weight `aux_weight` (paper: 1.0); at 0 the auxiliary network is
  not built and the loader need not sample negatives.
* Attention between h_t and the candidate: DIN's MLP (80, 40, sigmoid) on [q, h_t, q - h_t, q * h_t],
  softmax over the real steps (the code's din_fcn_attention with softmax scores).
* Interest evolution: AUGRU (`cmrec.baselines.augru`), the paper's best variant.
* Final MLP (200, 80, PReLU; the code's default) over [evolved interest, candidate, pooled history,
  candidate * pooled history]. Departures: the pooled history is the *mean* of the history
  embeddings, not the sum (at L = 1,000 a sum has a scale 1,000 times the other inputs), and the
  batch normalisation before the MLP is left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

from cmrec.baselines.augru import AUGRU
from cmrec.baselines.common import MLP, check_positive, masked_mean, next_click_loss, pad_histories
from cmrec.data.batch import Batch
from cmrec.embeddings.tables import ItemEmbeddings
from cmrec.errors import ConfigError
from cmrec.output import ModelNeeds, ModelOutput, RecModel


@dataclass(frozen=True)
class DIENConfig:
    """DIEN hyper-parameters (see the module docstring for their sources)."""

    item_dim: int = 64
    hidden: int = 64
    attention_mlp: tuple[int, ...] = (80, 40)
    aux_mlp: tuple[int, ...] = (100, 50)
    mlp: tuple[int, ...] = (200, 80)
    aux_weight: float = 1.0

    def __post_init__(self) -> None:
        check_positive(
            "DIENConfig",
            item_dim=self.item_dim,
            hidden=self.hidden,
            attention_mlp=self.attention_mlp,
            aux_mlp=self.aux_mlp,
            mlp=self.mlp,
        )
        if self.aux_weight < 0:
            raise ConfigError(f"DIENConfig.aux_weight must be >= 0, got {self.aux_weight}")


class DIENModel(RecModel):
    """DIEN for CTR; losses ``ctr`` and, with a positive ``aux_weight`` in training mode, ``aux``."""

    def __init__(self, config: DIENConfig, embeddings: ItemEmbeddings) -> None:
        super().__init__()
        self.config = config
        self.embeddings = embeddings
        hidden = config.hidden
        self.extractor = nn.GRU(config.item_dim, hidden, batch_first=True)
        self.query: nn.Module = (
            nn.Linear(config.item_dim, hidden) if hidden != config.item_dim else nn.Identity()
        )
        self.attention = MLP(4 * hidden, config.attention_mlp, activation="sigmoid")
        self.evolution = AUGRU(hidden, hidden)
        self.mlp = MLP(hidden + 3 * config.item_dim, config.mlp)
        self.auxiliary: MLP | None = None
        if config.aux_weight > 0:
            self.auxiliary = MLP(hidden + config.item_dim, config.aux_mlp, activation="sigmoid")
        self.needs = ModelNeeds(history_negatives=self.auxiliary is not None)

    def forward(self, batch: Batch) -> ModelOutput:
        values, lengths = self.embeddings(batch.history)
        x, mask = pad_histories(values, lengths)  # (H, L, D), (H, L)
        states = self._extract(x, lengths)  # (H, L, G), zeros at padding
        target = self.embeddings.lookup(batch.target_items, batch.target_categories)  # (S, D)

        # Attention of each sample's candidate over its history's interest states.
        sample_states = states[batch.history_index]  # (S, L, G)
        sample_mask = mask[batch.history_index]  # (S, L)
        query = self.query(target)[:, None, :].expand_as(sample_states)  # (S, L, G)
        scores = self.attention(
            torch.cat([query, sample_states, query - sample_states, query * sample_states], dim=-1)
        ).squeeze(-1)  # (S, L)
        scores = scores.masked_fill(~sample_mask, torch.finfo(scores.dtype).min)
        attention = torch.softmax(scores, dim=-1) * sample_mask  # zero at padding (empty rows too)
        evolved = self.evolution(sample_states, attention)  # (S, G)

        pooled = masked_mean(x, mask)[batch.history_index]  # (S, D)
        logits = self.mlp(torch.cat([evolved, target, pooled, target * pooled], dim=-1)).squeeze(-1)
        losses = {"ctr": functional.binary_cross_entropy_with_logits(logits, batch.labels)}
        weights = {"ctr": 1.0}
        if self.auxiliary is not None and self.training:  # a training signal only; scoring skips it
            losses["aux"] = next_click_loss("DIEN", self.auxiliary, self.embeddings, batch, states, x, mask)
            weights["aux"] = self.config.aux_weight
        return ModelOutput(logits=logits, losses=losses, weights=weights)

    def _extract(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Interest states, zero past each history's end (right-padded GRU: see gru4rec.last_states)."""
        states, _ = self.extractor(x)  # (H, L, G)
        steps = torch.arange(x.shape[1], device=x.device)[None, :]
        return states * (steps < lengths[:, None])[..., None]
