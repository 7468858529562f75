"""GRU4REC as a CTR model, as the MIMN and HPMN code bases run it on XLong.

A GRU over the history's embeddings (right-padded; padding changes nothing, see `last_states`); its
final state, the candidate's embedding and their product go through an MLP (200, 80, PReLU) to a logit.
Hidden size = d = 64 to match CM's embedding size. Shape letters: H histories, L longest history,
S samples, D features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cmrec.baselines.common import (
    DENSE_SEGMENT,
    MLP,
    ClickByClick,
    check_dense,
    check_positive,
    final_states,
    pad_histories,
    prefix_rows,
)
from cmrec.data.batch import Batch, DenseTargets
from cmrec.embeddings.tables import ItemEmbeddings
from cmrec.output import ModelNeeds, ModelOutput


@dataclass(frozen=True)
class GRU4RecConfig:
    """Args: item_dim, hidden, mlp (hidden widths); dense_per_segment, dense_last_segments,
    sample_share: dense supervision as `CMConfig`'s (targets scored from the hidden state after the
    previous event)."""

    item_dim: int = 64
    hidden: int = 64
    mlp: tuple[int, ...] = (200, 80)
    dense_per_segment: int = 0
    dense_last_segments: int = 0
    sample_share: float = 0.0

    def __post_init__(self) -> None:
        check_positive("GRU4RecConfig", item_dim=self.item_dim, hidden=self.hidden, mlp=self.mlp)
        check_dense("GRU4RecConfig", self.dense_per_segment, self.dense_last_segments, self.sample_share)


def last_states(states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(H, L, hidden) GRU states of right-padded histories -> (H, hidden); zeros for empty histories.

    The GRU runs over the right-padded batch and each history's state is read at its last real
    step, so padding never changes a result (states past a history's end are never read). Packing
    would also skip the padded steps, but on this CPU build the backward pass of a packed GRU takes
    about 90 times longer than a padded one at L = 1,000 (27 s against 0.3 s for 64 histories).
    """
    return final_states(states, lengths, states.new_zeros(states.shape[0], states.shape[2]))


class GRU4RecModel(ClickByClick):
    """GRU4REC for CTR; loss ``ctr`` (binary cross-entropy)."""

    def __init__(self, config: GRU4RecConfig, embeddings: ItemEmbeddings) -> None:
        super().__init__()
        self.config = config
        self.embeddings = embeddings
        self.gru = nn.GRU(config.item_dim, config.hidden, batch_first=True)
        self.mlp = MLP(2 * config.hidden + config.item_dim, config.mlp)
        self.target_proj: nn.Module = (
            nn.Linear(config.item_dim, config.hidden) if config.hidden != config.item_dim else nn.Identity()
        )
        self.needs = ModelNeeds(
            dense_targets=DenseTargets.request(
                DENSE_SEGMENT, config.dense_per_segment, config.dense_last_segments
            ),
            memory_shape=(1, config.hidden),
        )

    def forward(self, batch: Batch) -> ModelOutput:
        values, lengths = self.embeddings(batch.history)
        x, _ = pad_histories(values, lengths)  # (H, L, D)
        states, _ = self.gru(x)  # (H, L, hidden)
        state = last_states(states, lengths)[batch.history_index]  # (S, hidden)
        logits = self._logits(state, batch.target_items, batch.target_categories)
        dense = None
        targets = batch.history_targets
        if targets is not None and len(targets):  # the hidden state after the event before each click
            dense = self._logits(prefix_rows(states, targets), targets.items, targets.categories)
        loss = batch.target_loss(logits, dense, self.config.sample_share)
        return ModelOutput(logits=logits, losses={"ctr": loss}, weights={"ctr": 1.0})

    def initial_memory(self, batch_size: int) -> torch.Tensor:
        """(B, 1, hidden) zeros: the state the training forward starts every history from."""
        weight = next(self.gru.parameters())
        return torch.zeros(batch_size, 1, self.config.hidden, dtype=weight.dtype, device=weight.device)

    def consume(
        self, memory: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """Run the GRU from each (B, 1, hidden) state over its clicks and keep the state after the
        last one."""
        states, _ = self.gru(x, memory[:, 0][None].contiguous())
        return final_states(states, lengths, memory[:, 0])[:, None]

    def score(
        self, memory: torch.Tensor, items: torch.Tensor, categories: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(S, 1, hidden) states and (S,) candidates -> (S,) CTR logits, as the forward scores."""
        return self._logits(memory[:, 0], items, categories)

    def _logits(
        self, state: torch.Tensor, items: torch.Tensor, categories: torch.Tensor | None
    ) -> torch.Tensor:
        target = self.embeddings.lookup(items, categories)  # (S, D)
        features = torch.cat([state, target, self.target_proj(target) * state], dim=-1)
        return self.mlp(features).squeeze(-1)
