"""HPMN (Ren et al., SIGIR 2019): a hierarchy of GRU memories updated periodically, read by
multi-hop attention with the candidate, for CTR. Written from the paper; the authors' TF1 code
(alimamarankgroup/HPMN) was read for its XLong settings only.

Shape letters: B users, L longest history, J layers, H hidden size, D item feature width, S samples.

* **Layers**: layer 1 is a GRU over the clicks; layer j + 1 is a GRU over layer j's outputs, taking
  one every ``periods[j]`` of them, so layer j updates once every p_1 * ... * p_{j-1} clicks (the
  XLong code: 5 layers, each period 2: every 1, 2, 4, 8, 16 clicks). The memory is the J final
  states (J x H).
* **Read**: the candidate q, mapped to H, reads the memory ``hops`` times (3): an attention MLP
  (80, 40, ReLU) over [q; m_j; q - m_j; q * m_j] pools the layers, then q <- q W + read.
* **Output**: an MLP (200, 80, ELU) over [q; candidate] (the code's dropout and batch normalisation
  are left out), loss ``ctr``; the **covariance regulariser** ``covariance``: the Frobenius norm of
  the off-diagonal covariance between the J memory rows, summed over the batch's users (the code's
  form, weight 5e-5).

Departure, for incremental serving: the periods count from each user's first click (the code pads
histories in front to a fixed length, which aligns them to the history's end instead, and feeds the
padding through the GRUs). HPMN is then incremental by construction (`IncrementalModel`): its state
is the J hidden states plus the number of clicks consumed, (J + 1) x H floats (J = 5, H = 64: 1,536
bytes per user), written one click at a time (the count is exact in float32 up to 2^24 clicks).
Dense targets (``dense_per_segment`` > 0, the registry's preset): a target after p clicks is scored
from every layer's state at that prefix (layer j has then taken p // (p_1 ... p_{j-1}) inputs; its
output there is read from the training forward's per-step outputs), as a candidate would be after
writing those p clicks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

from cmrec.baselines.common import (
    DENSE_SEGMENT,
    MLP,
    ClickByClick,
    check_dense,
    check_positive,
    final_states,
    pad_histories,
)
from cmrec.data.batch import Batch, DenseTargets, HistoryTargets
from cmrec.embeddings.tables import ItemEmbeddings
from cmrec.errors import ConfigError
from cmrec.output import ModelNeeds, ModelOutput

COUNT_LIMIT = 2**24  # clicks a float32 count holds exactly


@dataclass(frozen=True)
class HPMNConfig:
    """Defaults: the HPMN code's XLong settings (5 layers of period 2, 3 hops, covariance weight
    5e-5) at cmrec's feature width (D = H = 64).

    Args:
        item_dim: D.
        hidden: H, every layer's GRU size.
        periods: J - 1 periods: layer j + 1 takes one of every ``periods[j]`` outputs of layer j.
        hops: attention reads of the memory.
        covariance_weight: weight of the covariance regulariser (0: off).
        mlp, attention_mlp: hidden widths of the output MLP (ELU) and the read attention (ReLU).
        dense_per_segment, dense_last_segments, sample_share: dense supervision as `CMConfig`'s
            (targets scored from every layer's state at their prefix).
    """

    item_dim: int = 64
    hidden: int = 64
    periods: tuple[int, ...] = (2, 2, 2, 2)
    hops: int = 3
    covariance_weight: float = 5e-5
    mlp: tuple[int, ...] = (200, 80)
    attention_mlp: tuple[int, ...] = (80, 40)
    dense_per_segment: int = 0
    dense_last_segments: int = 0
    sample_share: float = 0.0

    def __post_init__(self) -> None:
        check_dense("HPMNConfig", self.dense_per_segment, self.dense_last_segments, self.sample_share)
        check_positive("HPMNConfig", item_dim=self.item_dim, hidden=self.hidden, hops=self.hops, mlp=self.mlp)
        if any(p < 1 for p in self.periods):
            raise ConfigError(f"HPMNConfig: periods must be >= 1, got {self.periods}")
        if not self.covariance_weight >= 0:
            raise ConfigError(f"HPMNConfig: covariance_weight must be >= 0, got {self.covariance_weight}")

    @property
    def layers(self) -> int:
        return len(self.periods) + 1


class HPMNModel(ClickByClick):
    """HPMN for CTR; losses ``ctr`` and (when weighted) ``covariance``."""

    def __init__(self, config: HPMNConfig, embeddings: ItemEmbeddings) -> None:
        super().__init__()
        self.config = config
        self.embeddings = embeddings
        h = config.hidden
        sizes = [config.item_dim] + [h] * (config.layers - 1)
        self.grus = nn.ModuleList(nn.GRU(size, h, batch_first=True) for size in sizes)
        self.query = nn.Linear(config.item_dim, h)
        self.hop_map = nn.Linear(h, h, bias=False)
        self.attention = MLP(4 * h, config.attention_mlp, activation="relu")
        self.mlp = MLP(h + config.item_dim, config.mlp, activation="elu")
        self.needs = ModelNeeds(
            dense_targets=DenseTargets.request(
                DENSE_SEGMENT, config.dense_per_segment, config.dense_last_segments
            ),
            memory_shape=(config.layers + 1, h),
        )

    # ---- IncrementalModel: state (B, J + 1, H) = [layer states; (clicks consumed, 0, ...)] ----

    def initial_memory(self, batch_size: int) -> torch.Tensor:
        weight = next(self.query.parameters())
        return weight.new_zeros(batch_size, self.config.layers + 1, self.config.hidden)

    def score(
        self, memory: torch.Tensor, items: torch.Tensor, categories: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self._logits(memory[:, : self.config.layers], self.embeddings.lookup(items, categories))

    # ---- training ----

    def forward(self, batch: Batch) -> ModelOutput:
        values, lengths = self.embeddings(batch.history)
        x, _ = pad_histories(values, lengths)  # (B, L, D), (B, L)
        start = self.initial_memory(x.shape[0])
        finals, outputs = self._layers(start, x, lengths)
        memory = torch.stack(finals, dim=1)  # (B, J, H)
        target = self.embeddings.lookup(batch.target_items, batch.target_categories)
        logits = self._logits(memory[batch.history_index], target)
        dense = None
        targets = batch.history_targets
        if targets is not None and len(targets):
            candidates = self.embeddings.lookup(targets.items, targets.categories)
            dense = self._logits(self._prefix_memory(start, outputs, targets), candidates)
        losses = {"ctr": batch.target_loss(logits, dense, self.config.sample_share)}
        weights = {"ctr": 1.0}
        if self.config.covariance_weight > 0:
            losses["covariance"] = covariance_penalty(memory)
            weights["covariance"] = self.config.covariance_weight
        return ModelOutput(logits=logits, losses=losses, weights=weights)

    def consume(
        self, state: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """Feed (B, L, D) right-padded clicks (`lengths` real ones per user) through the layers.

        Layer j has consumed ``count // (p_1 ... p_{j-1})`` inputs before these clicks; of the new
        outputs of layer j it passes on those whose index (counted from the user's first) completes
        a period.
        """
        count = state[:, -1, 0].round().long()  # (B,) clicks consumed so far
        layers, _ = self._layers(state, x, lengths)
        new_count = (count + lengths).to(state.dtype)
        counter = functional.pad(new_count[:, None], (0, self.config.hidden - 1))
        return torch.cat([torch.stack(layers, dim=1), counter[:, None]], dim=1)

    def _layers(
        self, state: torch.Tensor, x: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """`consume`'s layers: each layer's (B, H) state after the clicks, and its (B, T_j, H)
        outputs over its new inputs (None where it took none; past a user's own count, padding)."""
        count = state[:, -1, 0].round().long()
        if int((count + lengths).max()) >= COUNT_LIMIT:
            raise ConfigError(
                f"HPMN: a user's click count would reach {COUNT_LIMIT:,}, past float32's exact range"
            )
        layers: list[torch.Tensor] = []
        per_step: list[torch.Tensor | None] = []
        inputs, steps, consumed = x, lengths, count
        for j, gru in enumerate(self.grus):
            h0 = state[:, j]
            if inputs.shape[1] == 0:
                layers.append(h0)
                per_step.append(None)
                continue
            outputs, _ = gru(inputs, h0[None].contiguous())  # (B, T_j, H)
            layers.append(final_states(outputs, steps, h0))
            per_step.append(outputs)
            if j == len(self.grus) - 1:
                break
            period = self.config.periods[j]
            # Output i (0-based among the new ones) is output number consumed + i + 1 of layer j.
            first = (period - 1 - consumed % period) % period  # (B,) index of the first passed on
            passed = torch.where(
                steps > first, (steps - first + period - 1) // period, torch.zeros_like(steps)
            )
            width = int(passed.max())
            index = first[:, None] + period * torch.arange(width, device=x.device)[None]  # (B, W)
            index = index.clamp(max=outputs.shape[1] - 1)  # past a user's `passed`: padding, never read
            inputs = outputs.gather(1, index[..., None].expand(-1, -1, outputs.shape[2]))
            consumed, steps = consumed // period, passed
        return layers, per_step

    def _prefix_memory(
        self, start: torch.Tensor, outputs: list[torch.Tensor | None], targets: HistoryTargets
    ) -> torch.Tensor:
        """(D, J, H): every layer's state after the clicks before each dense target, from the
        per-step outputs of `_layers` run from `start` with no clicks consumed before."""
        rows = targets.history_row
        layers = []
        for j, (out, every) in enumerate(zip(outputs, update_every(self.config), strict=True)):
            before = start[rows, j]  # (D, H): the layer's state before any input
            if out is None:  # no history of the batch is long enough to reach this layer
                layers.append(before)
                continue
            taken = targets.position // every  # inputs the layer has taken after the prefix
            picked = out[rows, (taken - 1).clamp(min=0)]
            layers.append(torch.where((taken > 0)[:, None], picked, before))
        return torch.stack(layers, dim=1)

    def _logits(self, memory: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(S, J, H) memories and (S, D) candidates -> (S,) logits: multi-hop read, then the MLP."""
        query = self.query(target)
        for _ in range(self.config.hops):
            q = query[:, None].expand_as(memory)
            scores = self.attention(torch.cat([q, memory, q - memory, q * memory], dim=-1)).squeeze(-1)
            read = (torch.softmax(scores, dim=-1)[..., None] * memory).sum(dim=1)
            query = self.hop_map(query) + read
        return self.mlp(torch.cat([query, target], dim=-1)).squeeze(-1)


def covariance_penalty(memory: torch.Tensor) -> torch.Tensor:
    """Sum over users of the Frobenius norm of the off-diagonal covariance of the (J, H) rows."""
    centred = memory - memory.mean(dim=2, keepdim=True)
    cov = centred @ centred.transpose(1, 2) / memory.shape[2]  # (B, J, J)
    off = cov - torch.diag_embed(torch.diagonal(cov, dim1=1, dim2=2))
    return torch.sqrt((off**2).sum(dim=(1, 2)) + 1e-12).sum()


def update_every(config: HPMNConfig) -> list[int]:
    """Clicks between two updates of each layer: 1, p_1, p_1 p_2, ..."""
    return [math.prod(config.periods[:j]) for j in range(config.layers)]
