"""The memory update module (paper §3.2, eqs. 1-3): write one segment's features into K slots.

Shape letters: B batch, K slots, N items per segment, Z subspaces; d_m slot width, d_x item width,
d_model attention width, h = d_model / Z.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from cmrec.memory.gru import GroupedGRUCell


class MemoryUpdate(nn.Module):
    """Slot-to-item attention, Z-subspace projections, one GRU per subspace, W_o aggregation.

    eq. 1: alpha_kn = w_a^T tanh(W1a m_k + W2a f_n + b_a); l_k = sum_n softmax_n(alpha_kn) f_n
    eq. 2: m_kz = W^M_z m_k,  l_kz = W^L_z l_k
    eq. 3: m'_kz = GRU_z(m_kz, l_kz);  m'_k = W_o [m'_k1; ...; m'_kZ]

    With ``slowest_write_rate`` r < 1 (not in the paper) slot k keeps part of itself:
    m_k <- m_k + r_k (m'_k - m_k), the rates r_k log-spaced from 1 (slot 0, the paper's write) to r
    (the last slot), so the slots hold the history at time scales from one segment to about 1 / r
    segments, as HPMN's periodically updated layers do.

    Args:
        memory_dim: d_m.
        item_dim: d_x.
        model_dim: d_model (divisible by `subspaces`).
        subspaces: Z.
        retention_init: see `_init_for_retention` (0: PyTorch's default initialisation).
        slots: K, needed only with ``slowest_write_rate`` < 1.
        slowest_write_rate: the write rate of the last slot (1.0: every slot is replaced, the paper).

    Example::

        update = MemoryUpdate(memory_dim=64, item_dim=64, model_dim=64, subspaces=4)
        projected = update.project_items(features)          # hoisted out of the segment loop
        memory = update(memory, features, projected, mask)  # (B, K, 64)

        # The same writes, fused for a loop over segments (what `ContinualMemoryMachine` runs):
        fused = update.fuse(features)                       # once for all segments
        memory = update.step(memory, fused.items[:, t], fused.gates[:, t], mask[:, t], fused)
    """

    def __init__(
        self,
        memory_dim: int,
        item_dim: int,
        model_dim: int,
        subspaces: int,
        retention_init: float = 0.0,
        slots: int = 1,
        slowest_write_rate: float = 1.0,
    ) -> None:
        super().__init__()
        if not 0.0 < slowest_write_rate <= 1.0:
            raise ValueError(f"slowest_write_rate must be in (0, 1], got {slowest_write_rate}")
        rates = torch.logspace(0.0, math.log10(slowest_write_rate), slots) if slots > 1 else torch.ones(1)
        # Derived from the config, so not saved: checkpoints from before the option still load.
        self.write_rate: torch.Tensor
        self.register_buffer("write_rate", rates, persistent=False)  # (K,)
        self.partial_write = slowest_write_rate < 1.0
        self.subspaces = subspaces
        self.slot_attention = nn.Linear(memory_dim, model_dim, bias=False)  # W1a
        self.item_attention = nn.Linear(item_dim, model_dim)  # W2a and b_a
        self.attention_score = nn.Linear(model_dim, 1, bias=False)  # w_a
        self.slot_heads = nn.Linear(memory_dim, model_dim, bias=False)  # W^M_z for all z
        self.aligned_heads = nn.Linear(item_dim, model_dim, bias=False)  # W^L_z for all z
        self.gru = GroupedGRUCell(subspaces, model_dim // subspaces, model_dim // subspaces)
        self.aggregate = nn.Linear(model_dim, memory_dim, bias=False)  # W_o
        if retention_init > 0:
            self._init_for_retention(retention_init)

    @torch.no_grad()
    def _init_for_retention(self, gate_bias: float) -> None:
        """Start from a memory that keeps what it holds (the paper does not give an initialisation).

        With PyTorch's default initialisation a slot passes W^M, the GRU and W_o at every segment,
        and W_o W^M shrinks it about threefold each time: after 25 segments nothing of the first
        is left before training has begun. Here W^M is orthogonal and W_o its transpose (W_o W^M =
        I when d_m = d_model), and the GRU's update gates start mostly closed (bias + `gate_bias`),
        so an untrained memory carries old segments forward; training decides what to overwrite.
        """
        nn.init.orthogonal_(self.slot_heads.weight)
        self.aggregate.weight.copy_(self.slot_heads.weight.T)
        hidden = self.gru.hidden_size
        self.gru.bias_ih[:, hidden : 2 * hidden] += gate_bias  # the update gate z (order r, z, n)

    def project_items(self, features: torch.Tensor) -> torch.Tensor:
        """W2a f + b_a for any (..., N, d_x) features; computed once for all segments."""
        return self.item_attention(features)

    def fuse(self, features: torch.Tensor) -> FusedUpdate:
        """The weights and item-side products of `step`, computed once for all segments.

        eqs. 1-3 as fewer, larger products: the slot side (W1a, W^M and the Z GRUs' hidden
        weights after W^M) is one (d_m -> 2 d_model + 3 d_model) matmul per segment, and the item
        side (W^L, then the Z GRUs' input weights) is applied to every item before the loop, since
        ``W (sum_n a_n f_n) = sum_n a_n (W f_n)`` for the attention weights a: one bmm per segment
        gives the GRUs' input gates. The Z GRUs' weights become block-diagonal matrices, so no
        per-subspace product is left.

        Args:
            features: (B, T, N, d_x) all segments' features.
        """
        gru = self.gru
        hidden_ih = _block_diagonal(gru.weight_ih) @ self.aligned_heads.weight  # (Z 3h, d_x)
        hidden_hh = _block_diagonal(gru.weight_hh) @ self.slot_heads.weight  # (Z 3h, d_m)
        slot_weight = torch.cat([self.slot_attention.weight, self.slot_heads.weight, hidden_hh])
        return FusedUpdate(
            items=self.item_attention(features),  # (B, T, N, d_model) W2a f + b_a
            gates=features @ hidden_ih.T,  # (B, T, N, Z 3h) the input gates before the bias
            slot_weight=slot_weight,  # (2 d_model + Z 3h, d_m)
        )

    def step(
        self,
        memory: torch.Tensor,
        items: torch.Tensor,
        gates: torch.Tensor,
        mask: torch.Tensor,
        fused: FusedUpdate,
    ) -> torch.Tensor:
        """`forward` on one segment's rows of `fuse`'s products (equal to rounding).

        Args:
            memory: (B, K, d_m) current slots.
            items: (B, N, d_model) ``fused.items`` of this segment.
            gates: (B, N, Z 3h) ``fused.gates`` of this segment.
            mask: (B, N) real items (rows without one must be discarded by the caller).
            fused: `fuse`'s result.
        """
        batch, slots, _ = memory.shape
        model_dim, groups = self.slot_heads.out_features, self.subspaces
        hidden, slot_parts, gates_h = (memory @ fused.slot_weight.T).split(
            [model_dim, model_dim, 3 * model_dim], dim=-1
        )
        scores = self.attention_score(
            torch.tanh(hidden[:, :, None, :] + items[:, None, :, :])
        )  # (B, K, N, 1)
        scores = scores.squeeze(-1).masked_fill(~mask[:, None, :], torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1)  # (B, K, N)
        gates_x = torch.bmm(weights, gates).view(batch, slots, groups, -1) + self.gru.bias_ih  # (B, K, Z, 3h)
        gates_h = gates_h.view(batch, slots, groups, -1) + self.gru.bias_hh  # (B, K, Z, 3h)
        updated = self.gru.combine(gates_x, gates_h, slot_parts.view(batch, slots, groups, -1))
        written = self.aggregate(updated.reshape(batch, slots, -1))  # (B, K, d_m)
        if not self.partial_write:
            return written
        return memory + self.write_rate[:, None] * (written - memory)

    def forward(
        self, memory: torch.Tensor, features: torch.Tensor, projected: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Write one segment (the reference form of `step`).

        Args:
            memory: (B, K, d_m) current slots M_t.
            features: (B, N, d_x) segment features F_t.
            projected: (B, N, d_model) ``project_items(features)``.
            mask: (B, N) real items. Rows without any real item return finite values that the
                caller must discard (`ContinualMemoryMachine` keeps the old memory for them).

        Returns:
            (B, K, d_m) the updated slots M_{t+1}.
        """
        batch, slots, _ = memory.shape
        hidden = self.slot_attention(memory)  # (B, K, d_model)
        scores = self.attention_score(
            torch.tanh(hidden[:, :, None, :] + projected[:, None, :, :])
        )  # (B, K, N, 1)
        scores = scores.squeeze(-1).masked_fill(~mask[:, None, :], torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1)  # (B, K, N) over items
        aligned = torch.bmm(weights, features)  # (B, K, d_x) l_k
        slot_parts = self.slot_heads(memory).view(batch, slots, self.subspaces, -1)  # (B, K, Z, h)
        aligned_parts = self.aligned_heads(aligned).view(batch, slots, self.subspaces, -1)  # (B, K, Z, h)
        updated = self.gru(aligned_parts, slot_parts)  # (B, K, Z, h)
        written = self.aggregate(updated.reshape(batch, slots, -1))  # (B, K, d_m)
        if not self.partial_write:
            return written
        return memory + self.write_rate[:, None] * (written - memory)


class FusedUpdate(NamedTuple):
    """`MemoryUpdate.fuse`'s weights and item-side products, shared by every segment's `step`."""

    items: torch.Tensor  # (B, T, N, d_model) W2a f + b_a
    gates: torch.Tensor  # (B, T, N, Z 3h) the GRUs' input gates of each item, before the bias
    slot_weight: torch.Tensor  # (2 d_model + Z 3h, d_m) [W1a; W^M; the GRUs' hidden weights W^M]


def _block_diagonal(weights: torch.Tensor) -> torch.Tensor:
    """(Z, o, i) per-group weights -> (Z o, Z i) their block-diagonal matrix."""
    return torch.block_diag(*weights.unbind(0))
