"""Caser (Tang & Wang, WSDM 2018): horizontal and vertical convolutions over the embeddings of the
last L clicks, as a CTR model. Written from the paper.

Shape letters: B histories, L the window (``window``, the paper's default 5), D item features,
S samples.

* The window: the embeddings of a history's last L clicks as an (L, D) "image"; a history shorter
  than L is padded with zeros in front (the padding embedding).
* **Horizontal filters**: for every height h = 1 ... L, ``horizontal`` filters (the paper's 16) of
  size h x D, ReLU, max-pooled over the L - h + 1 positions: union-level and point-level patterns.
* **Vertical filters**: ``vertical`` filters (the paper's 4) of size L x 1: weighted sums of the
  window's rows, kept whole (V x D).
* The concatenation, dropout (the paper's 0.5, training only) and a fully connected layer with ReLU
  give the sequence representation z (D). The paper adds a user embedding P_u; cmrec's models have
  no user-id tables (a user is their history), so z alone stands for the user.
* CTR: the MLP (200, 80, PReLU) over [z; candidate; z * candidate], loss ``ctr``.
* Dense targets (``dense_per_segment`` > 0, the registry's preset): a target inside the history is
  scored from the window of the L clicks before it, exactly as a history ending there would be.

Caser reads the raw history (its last L clicks), so it is end-to-end: it keeps no state a store
could hold, and `refresh` refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

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
class CaserConfig:
    """Args: item_dim (D); window (L, the paper's 5); horizontal (filters per height, 16);
    vertical (filters, 4); dropout (0.5); mlp (the CTR MLP's hidden widths); dense_per_segment,
    dense_last_segments, sample_share: dense supervision as `CMConfig`'s (targets scored from the
    window before them)."""

    item_dim: int = 64
    window: int = 5
    horizontal: int = 16
    vertical: int = 4
    dropout: float = 0.5
    mlp: tuple[int, ...] = (200, 80)
    dense_per_segment: int = 0
    dense_last_segments: int = 0
    sample_share: float = 0.0

    def __post_init__(self) -> None:
        check_dense("CaserConfig", self.dense_per_segment, self.dense_last_segments, self.sample_share)
        check_positive(
            "CaserConfig",
            item_dim=self.item_dim,
            window=self.window,
            horizontal=self.horizontal,
            vertical=self.vertical,
            mlp=self.mlp,
        )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"CaserConfig: dropout must be in [0, 1), got {self.dropout}")


class CaserModel(RecModel):
    """Caser for CTR; loss ``ctr``."""

    def __init__(self, config: CaserConfig, embeddings: ItemEmbeddings) -> None:
        super().__init__()
        self.config = config
        self.embeddings = embeddings
        d, window = config.item_dim, config.window
        self.horizontal = nn.ModuleList(nn.Conv2d(1, config.horizontal, (h, d)) for h in range(1, window + 1))
        self.vertical = nn.Conv2d(1, config.vertical, (window, 1))
        self.dropout = nn.Dropout(config.dropout)
        self.fc = nn.Linear(config.horizontal * window + config.vertical * d, d)
        self.mlp = MLP(3 * d, config.mlp)
        self.needs = ModelNeeds(
            dense_targets=DenseTargets.request(
                DENSE_SEGMENT, config.dense_per_segment, config.dense_last_segments
            )
        )

    def forward(self, batch: Batch) -> ModelOutput:
        values, lengths = self.embeddings(batch.history)
        x, _ = pad_histories(values, lengths)  # (B, L_max, D), right-padded
        z = self.represent(last_window(x, lengths, self.config.window))[batch.history_index]
        logits = self._logits(z, batch.target_items, batch.target_categories)
        dense = None
        targets = batch.history_targets
        if targets is not None and len(targets):
            windows = prefix_windows(x, targets.history_row, targets.position, self.config.window)
            dense = self._logits(self.represent(windows), targets.items, targets.categories)
        loss = batch.target_loss(logits, dense, self.config.sample_share)
        return ModelOutput(logits=logits, losses={"ctr": loss}, weights={"ctr": 1.0})

    def _logits(self, z: torch.Tensor, items: torch.Tensor, categories: torch.Tensor | None) -> torch.Tensor:
        target = self.embeddings.lookup(items, categories)  # (S, D)
        return self.mlp(torch.cat([z, target, z * target], dim=-1)).squeeze(-1)

    def represent(self, window: torch.Tensor) -> torch.Tensor:
        """(B, L, D) windows -> (B, D) sequence representations z."""
        image = window[:, None]  # (B, 1, L, D)
        pooled = [functional.relu(conv(image)).squeeze(-1).amax(dim=-1) for conv in self.horizontal]
        vertical = self.vertical(image).reshape(window.shape[0], -1)  # (B, V * D)
        features = self.dropout(torch.cat([*pooled, vertical], dim=-1))
        return functional.relu(self.fc(features))


def last_window(x: torch.Tensor, lengths: torch.Tensor, window: int) -> torch.Tensor:
    """(B, L_max, D) right-padded histories -> (B, window, D): each history's last `window` clicks,
    oldest first, zeros in front of a shorter history."""
    return prefix_windows(x, torch.arange(x.shape[0], device=x.device), lengths, window)
