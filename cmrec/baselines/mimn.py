"""MIMN (Pi et al., KDD 2019): a neural-Turing-machine memory of a user's clicks, plus the Memory
Induction Unit, for CTR. Written from the paper; the authors' TF1 code (UIC-Paper/MIMN) was read
for its defaults only.

Shape letters: B users (histories), L longest history, m memory slots, D item feature width (the
memory vector width and the controller's size), S samples.

One step per click x_t (B, D), the state carried from click to click:

* **controller**: a GRU cell over [x_t; r_{t-1}] (the previous read vector) -> h_t;
* **heads**: a linear map of h_t gives a read and a write head (key k = tanh(.), sharpness
  beta = sharpness * (softplus(.) + 1)) and the write head's erase (sigmoid) and add (tanh) vectors;
* **addressing**: w = softmax(beta * K), K = (cos(k, key_M) + cos(k, M_{t-1})) / 2 over the m slots,
  key_M a learned slot key;
* **read**: r_t = sum_i w^r_i M_{t-1,i};
* **write**: M_t = M_{t-1} * (1 - w^w e^T) + w^w a^T;
* **memory utilisation regularisation** (``utilisation_weight`` > 0): the write weights are
  re-weighted by P_t = softmax(W_g u_{t-1}), u the share of all writing each slot received so far
  (w~ = w * P_t, renormalised), and the loss adds the variance over slots of the final shares
  (our reading of the paper's w~_t = w_t P_t and its variance penalty, on shares so that it does
  not grow with history length);
* **Memory Induction Unit** (``induction``): one more GRU state per slot, S_i; at each click the
  slot the read head weights most (top-1: the code's one channel) updates S_i = GRU([x_t;
  sg(M_{t-1,i})], S_i), the other channels stay.

Scoring a candidate q (no write): one more controller step with q as the input reads the final
memory, o = clip(W_o [h'; r']); an attention of q over the channels S pools the MIU; the CTR MLP
(200, 80, PReLU) takes [q; o; MIU pooled; q * mean_i M_i]. (The code also feeds the sum of the raw
history embeddings; we leave it out: the model then scores from its state alone.) With
``aux_weight`` > 0, a DIEN-style auxiliary loss trains o_t to tell the next click from a sampled
non-click.

MIMN is incremental by construction (`cmrec.output.IncrementalModel`): its state is
[M; S; h; r; u] = (2m + 3) x D floats per user (m = 4, D = 64: 2,816 bytes), written one click at a
time. Dense targets (``dense_per_segment`` > 0, the registry's preset): a target inside the history
is scored, as a candidate would be, from the state after the clicks before it (kept at that step
of the loop, `PrefixPlan`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

from cmrec.baselines.common import (
    DENSE_SEGMENT,
    MLP,
    ClickByClick,
    PrefixPlan,
    check_dense,
    check_positive,
    next_click_loss,
    pad_histories,
)
from cmrec.data.batch import Batch, DenseTargets
from cmrec.embeddings.tables import ItemEmbeddings
from cmrec.errors import ConfigError
from cmrec.output import ModelNeeds, ModelOutput


@dataclass(frozen=True)
class MIMNConfig:
    """Defaults: the MIMN code's (4 slots, one read and one write head, one induction channel,
    sharpness 2, clip 20) at cmrec's feature width D = 64.

    Args:
        item_dim: D, also the memory vector width and the controller's hidden size.
        slots: m memory slots.
        induction: the Memory Induction Unit on.
        utilisation_weight: weight of the utilisation regulariser (0: off, and no re-weighting).
        aux_weight: weight of the auxiliary next-click loss (0: off).
        sharpness, clip: the addressing sharpness and the clip of head parameters and outputs.
        mlp, attention_mlp, aux_mlp: hidden widths of the CTR MLP, the MIU attention and the
            auxiliary network.
        dense_per_segment, dense_last_segments, sample_share: dense supervision as `CMConfig`'s
            (targets scored from the state after the click before them).
    """

    item_dim: int = 64
    slots: int = 4
    induction: bool = True
    utilisation_weight: float = 1.0
    aux_weight: float = 0.0
    sharpness: float = 2.0
    clip: float = 20.0
    mlp: tuple[int, ...] = (200, 80)
    attention_mlp: tuple[int, ...] = (80, 40)
    aux_mlp: tuple[int, ...] = (100, 50)
    dense_per_segment: int = 0
    dense_last_segments: int = 0
    sample_share: float = 0.0

    def __post_init__(self) -> None:
        check_dense("MIMNConfig", self.dense_per_segment, self.dense_last_segments, self.sample_share)
        check_positive("MIMNConfig", item_dim=self.item_dim, slots=self.slots, mlp=self.mlp)
        if self.slots > self.item_dim:
            raise ConfigError(f"MIMNConfig: slots ({self.slots}) must be <= item_dim ({self.item_dim})")
        for name in ("utilisation_weight", "aux_weight"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"MIMNConfig: {name} must be >= 0, got {getattr(self, name)}")
        if not (self.sharpness > 0 and self.clip > 0):
            raise ConfigError("MIMNConfig: sharpness and clip must be > 0")


class MIMNModel(ClickByClick):
    """MIMN for CTR; losses ``ctr``, ``utilisation`` (when weighted) and ``aux`` (training, when
    weighted)."""

    def __init__(self, config: MIMNConfig, embeddings: ItemEmbeddings) -> None:
        super().__init__()
        self.config = config
        self.embeddings = embeddings
        d, m = config.item_dim, config.slots
        self.controller = nn.GRUCell(2 * d, d)
        # Per head: key (D) and sharpness (1); the write head also erase (D) and add (D).
        self.heads = nn.Linear(d, 2 * (d + 1) + 2 * d)
        self.output = nn.Linear(2 * d, d)
        self.slot_keys = nn.Parameter(torch.randn(m, d) * 0.5)
        self.initial_slots: torch.Tensor
        self.register_buffer("initial_slots", torch.randn(m, d) * 1e-5)
        self.initial_read = nn.Parameter(torch.zeros(d))
        self.utilisation = nn.Linear(m, m) if config.utilisation_weight > 0 else None
        self.induction = nn.GRUCell(2 * d, d) if config.induction else None
        self.attention = MLP(4 * d, config.attention_mlp, activation="sigmoid") if config.induction else None
        self.mlp = MLP((4 if config.induction else 3) * d, config.mlp)
        self.auxiliary = MLP(2 * d, config.aux_mlp, activation="sigmoid") if config.aux_weight > 0 else None
        rows = 2 * m + 3 if config.induction else m + 3
        self.needs = ModelNeeds(
            history_negatives=self.auxiliary is not None,
            dense_targets=DenseTargets.request(
                DENSE_SEGMENT, config.dense_per_segment, config.dense_last_segments
            ),
            memory_shape=(rows, d),
        )

    # ---- the state: (B, rows, D) = [M (m); S (m, with induction); h; r; u (first m entries)] ----

    def _unpack(self, state: torch.Tensor) -> dict[str, torch.Tensor]:
        m = self.config.slots
        at = 2 * m if self.induction is not None else m
        parts = {"M": state[:, :m], "h": state[:, at], "r": state[:, at + 1], "u": state[:, at + 2, :m]}
        if self.induction is not None:
            parts["S"] = state[:, m:at]
        return parts

    def _pack(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        u = functional.pad(parts["u"], (0, self.config.item_dim - self.config.slots))
        rows = [parts["M"]] + ([parts["S"]] if self.induction is not None else [])
        return torch.cat([*rows, torch.stack([parts["h"], parts["r"], u], dim=1)], dim=1)

    # ---- IncrementalModel ----

    def initial_memory(self, batch_size: int) -> torch.Tensor:
        """(B, rows, D): near-zero slots, zero controller, channels and utilisation, learned read."""
        d, m = self.config.item_dim, self.config.slots
        zeros = self.initial_read.new_zeros
        parts = {
            "M": torch.tanh(self.initial_slots)[None].expand(batch_size, m, d),
            "h": zeros(batch_size, d),
            "r": torch.tanh(self.initial_read)[None].expand(batch_size, d),
            "u": zeros(batch_size, m),
        }
        if self.induction is not None:
            parts["S"] = zeros(batch_size, m, d)
        return self._pack(parts)

    def consume(
        self, memory: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        state, _ = self._run(self._unpack(memory), x, mask)
        return self._pack(state)

    def score(
        self, memory: torch.Tensor, items: torch.Tensor, categories: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(S, rows, D) states and (S,) candidates -> (S,) CTR logits."""
        return self._logits(self._unpack(memory), self.embeddings.lookup(items, categories))

    # ---- training ----

    def forward(self, batch: Batch) -> ModelOutput:
        values, lengths = self.embeddings(batch.history)
        x, mask = pad_histories(values, lengths)  # (B, L, D), (B, L)
        start = self._unpack(self.initial_memory(x.shape[0]))
        with_aux = self.auxiliary is not None and self.training
        targets = batch.history_targets
        plan = PrefixPlan(targets) if targets is not None and len(targets) else None
        state, outputs = self._run(
            start, x, mask, keep_utilisation_grad=True, with_outputs=with_aux, plan=plan
        )
        sample_state = {name: value[batch.history_index] for name, value in state.items()}
        target = self.embeddings.lookup(batch.target_items, batch.target_categories)
        logits = self._logits(sample_state, target)
        dense = None
        if plan is not None:
            assert targets is not None
            order = plan.order
            categories = None if targets.categories is None else targets.categories[order]
            candidates = self.embeddings.lookup(targets.items[order], categories)
            dense = plan.in_target_order(self._logits(plan.states(), candidates))
        losses = {"ctr": batch.target_loss(logits, dense, self.config.sample_share)}
        weights = {"ctr": 1.0}
        if self.utilisation is not None:
            losses["utilisation"] = _shares(state["u"]).var(dim=1, unbiased=False).mean()
            weights["utilisation"] = self.config.utilisation_weight
        if with_aux:
            assert self.auxiliary is not None and outputs is not None
            losses["aux"] = next_click_loss("MIMN", self.auxiliary, self.embeddings, batch, outputs, x, mask)
            weights["aux"] = self.config.aux_weight
        return ModelOutput(logits=logits, losses=losses, weights=weights)

    def _run(
        self,
        state: dict[str, torch.Tensor],
        x: torch.Tensor,
        mask: torch.Tensor,
        keep_utilisation_grad: bool = False,
        with_outputs: bool = False,
        plan: PrefixPlan | None = None,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """The cell over (B, L, D) clicks from `state`; (B, L) `mask` False leaves a state as it
        was. Returns the final state and, `with_outputs` (the auxiliary loss reads them), the
        (B, L, D) outputs o_t; serving and a forward without that loss skip computing them. A
        `plan` keeps the states its dense targets are scored from."""
        outputs = []
        for t in range(x.shape[1]):
            new = self.step(state, x[:, t], keep_utilisation_grad)
            keep = mask[:, t]
            state = {
                k: torch.where(keep.view(-1, *([1] * (v.dim() - 1))), new[k], v) for k, v in state.items()
            }
            if with_outputs:
                outputs.append(self._output(new["h"], new["r"]))
            if plan is not None:
                plan.snapshot(t, state)
        if not with_outputs:
            return state, None
        return state, torch.stack(outputs, dim=1) if outputs else x.new_zeros(x.shape)

    def step(
        self, state: dict[str, torch.Tensor], x: torch.Tensor, keep_utilisation_grad: bool = False
    ) -> dict[str, torch.Tensor]:
        """One click (B, D) into the state: controller, heads, read, MIU, write. Returns the new
        state (its output o_t is `_output(h, r)` of that state)."""
        memory = state["M"]
        h, read_weights, write_weights, erase, add = self._heads(state, x)
        read = (read_weights[..., None] * memory).sum(dim=1)  # (B, D)
        new = {"h": h, "r": read}
        if self.utilisation is not None:
            share = _shares(state["u"]).detach()
            reweighted = write_weights * torch.softmax(self.utilisation(share), dim=-1)
            write_weights = reweighted / reweighted.sum(dim=1, keepdim=True)
        used = write_weights if keep_utilisation_grad else write_weights.detach()
        new["u"] = state["u"] + used
        new["M"] = (
            memory * (1 - write_weights[..., None] * erase[:, None]) + write_weights[..., None] * add[:, None]
        )
        if self.induction is not None:
            new["S"] = self._induce(state["S"], memory, read_weights, x)
        return new

    def _heads(
        self, state: dict[str, torch.Tensor], x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Controller step and head parameters: h, read weights, write weights, erase, add."""
        d = self.config.item_dim
        h = self.controller(torch.cat([x, state["r"]], dim=-1), state["h"])
        params = self.heads(h).clamp(-self.config.clip, self.config.clip)
        read_key, read_beta = torch.tanh(params[:, :d]), params[:, d]
        write_key, write_beta = torch.tanh(params[:, d + 1 : 2 * d + 1]), params[:, 2 * d + 1]
        erase = torch.sigmoid(params[:, 2 * d + 2 : 3 * d + 2])
        add = torch.tanh(params[:, 3 * d + 2 :])
        memory = state["M"]
        return (
            h,
            self._address(read_key, read_beta, memory),
            self._address(write_key, write_beta, memory),
            erase,
            add,
        )

    def _address(self, key: torch.Tensor, beta: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """(B, D) keys over (B, m, D) memories -> (B, m) content weights."""
        similarity = 0.5 * (
            functional.cosine_similarity(key[:, None], self.slot_keys[None], dim=-1, eps=1e-8)
            + functional.cosine_similarity(key[:, None], memory, dim=-1, eps=1e-8)
        )
        sharp = self.config.sharpness * (functional.softplus(beta) + 1)
        return torch.softmax(sharp[:, None] * similarity, dim=-1)

    def _induce(
        self, channels: torch.Tensor, memory: torch.Tensor, read_weights: torch.Tensor, x: torch.Tensor
    ) -> torch.Tensor:
        """The MIU: the top-1 read slot's channel takes one GRU step over [x; sg(its slot)]."""
        assert self.induction is not None
        batch, m, d = channels.shape
        inputs = torch.cat([x[:, None].expand(batch, m, d), memory.detach()], dim=-1)
        stepped = self.induction(inputs.reshape(batch * m, 2 * d), channels.reshape(batch * m, d))
        chosen = functional.one_hot(read_weights.argmax(dim=1), m).bool()[..., None]  # (B, m, 1)
        return torch.where(chosen, stepped.reshape(batch, m, d), channels)

    def _output(self, h: torch.Tensor, read: torch.Tensor) -> torch.Tensor:
        return self.output(torch.cat([h, read], dim=-1)).clamp(-self.config.clip, self.config.clip)

    def _logits(self, state: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """CTR logits of (S, D) candidates from their users' states (no write)."""
        h, read_weights, _, _, _ = self._heads(state, target)
        read = (read_weights[..., None] * state["M"]).sum(dim=1)
        features = [target, self._output(h, read)]
        if self.attention is not None:
            channels = state["S"]
            query = target[:, None].expand_as(channels)
            scores = self.attention(torch.cat([query, channels, query - channels, query * channels], dim=-1))
            features.append((torch.softmax(scores.squeeze(-1), dim=-1)[..., None] * channels).sum(dim=1))
        features.append(target * state["M"].mean(dim=1))
        return self.mlp(torch.cat(features, dim=-1)).squeeze(-1)


def _shares(utilisation: torch.Tensor) -> torch.Tensor:
    """(B, m) writing each slot received so far -> the share of all writing (sums to 1)."""
    return utilisation / utilisation.sum(dim=1, keepdim=True).clamp(min=1e-9)
