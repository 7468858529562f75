"""The history recall model H and its losses L_item (eq. 4) and L_seq (eq. 5).

Shape letters: H histories, T segments, N items per segment, B fragments per history, K slots,
P sampled items, M masked items in all positive fragments, D = d_x.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from cmrec.recall.fragments import Fragments, sample_fragments


class HistoryRecall(nn.Module):
    """Reconstructs history fragments from memory, to fight the forgetting of early behaviour.

    A bidirectional Transformer decoder (no causal mask) reads each fragment ([cls] + N items, half
    of them masked) and cross-attends to the memory slots. L_item: each masked item's output must
    pick the true item's feature among P sampled items (inner-product contrastive loss). L_seq:
    the [cls] output must tell a real fragment from its corrupted copy (binary cross-entropy). Both
    are averaged over items / fragments (the paper writes sums; only the scale differs). Used in
    training only: scoring needs none of it.

    Args:
        item_dim: D (d_x).
        memory_dim: d_m (projected to D for cross-attention when different).
        heads, layers, ffn_dim, dropout: decoder shape.
        segment_len: N.
        fragments: B fragments per history (paper: 5).
        mask_ratio: masked share of a fragment (paper: 0.5).
        replace_ratio: replaced share of the unmasked items in a negative (paper: 0.5).
        item_loss, seq_loss: which losses to compute (the Table 1 ablations turn one off).

    Example::

        recall = HistoryRecall(64, 64, heads=4, layers=3, ffn_dim=256, dropout=0.1, segment_len=20,
                               fragments=5, mask_ratio=0.5, replace_ratio=0.5)
        losses = recall(memory, x, ids, mask, sampled_ids, sampled_features)  # {"item": ..., "seq": ...}
    """

    def __init__(
        self,
        item_dim: int,
        memory_dim: int,
        heads: int,
        layers: int,
        ffn_dim: int,
        dropout: float,
        segment_len: int,
        fragments: int,
        mask_ratio: float,
        replace_ratio: float,
        item_loss: bool = True,
        seq_loss: bool = True,
    ) -> None:
        super().__init__()
        self.fragments = fragments
        self.mask_ratio = mask_ratio
        self.replace_ratio = replace_ratio
        self.item_loss = item_loss
        self.seq_loss = seq_loss
        self.cls_token = nn.Parameter(torch.randn(item_dim) * 0.02)
        self.mask_token = nn.Parameter(torch.randn(item_dim) * 0.02)
        self.position = nn.Parameter(torch.randn(segment_len + 1, item_dim) * 0.02)
        self.memory_in: nn.Module = (
            nn.Linear(memory_dim, item_dim) if memory_dim != item_dim else nn.Identity()
        )
        layer = nn.TransformerDecoderLayer(item_dim, heads, ffn_dim, dropout, batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.seq_head: nn.Module = nn.Linear(item_dim, 1) if seq_loss else nn.Identity()

    def forward(
        self,
        memory: torch.Tensor,
        x: torch.Tensor,
        ids: torch.Tensor,
        mask: torch.Tensor,
        sampled_ids: torch.Tensor,
        sampled_features: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Recall losses of a batch.

        Args:
            memory: (H, K, d_m) memories built from the histories.
            x: (H, T, N, D) item features of the histories' segments.
            ids: (H, T, N) item ids of the same grid.
            mask: (H, T, N) real items.
            sampled_ids: (P,) item ids of the contrastive candidates of L_item.
            sampled_features: (P, D) their features.
            generator: randomness of the fragment sampling.

        Returns:
            ``{"item": L_item}``, ``{"seq": L_seq}`` or both, as enabled.
        """
        frag = sample_fragments(mask, self.fragments, self.mask_ratio, self.replace_ratio, generator)
        decoded, positive, positive_ids = self.decode(memory, x, ids, frag)
        losses: dict[str, torch.Tensor] = {}
        if self.item_loss:
            losses["item"] = item_loss(decoded, positive, positive_ids, frag, sampled_ids, sampled_features)
        if self.seq_loss:
            losses["seq"] = seq_loss(self.seq_head(decoded[:, :, :, 0]).squeeze(-1), frag)
        return losses

    def decode(
        self, memory: torch.Tensor, x: torch.Tensor, ids: torch.Tensor, frag: Fragments
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode each fragment and its corrupted copy against the memory.

        Returns:
            decoded (H, 2, B, N+1, D): [:, 0] the fragments, [:, 1] the copies; position 0 is CLS.
            positive (H, B, N, D) and positive_ids (H, B, N): the fragments' true items.
        """
        histories, segments, length, dim = x.shape
        rows = torch.arange(histories, device=x.device)[:, None]
        positive = x[rows, frag.segment]  # (H, B, N, D)
        positive_ids = ids[rows, frag.segment]  # (H, B, N)
        flat_x = x.reshape(histories * segments * length, dim)
        borrowed = frag.replacement >= 0
        negative = torch.where(borrowed[..., None], flat_x[frag.replacement.clamp(min=0)], positive)

        tokens = torch.stack([positive, negative], dim=1)  # (H, 2, B, N, D)
        tokens = torch.where(frag.masked[:, None, :, :, None], self.mask_token, tokens)
        cls = self.cls_token.expand(histories, 2, self.fragments, 1, dim)
        tokens = torch.cat([cls, tokens], dim=3) + self.position  # (H, 2, B, N+1, D)
        padding = torch.cat([torch.zeros_like(frag.valid[..., :1]), ~frag.valid], dim=-1)  # (H, B, N+1)
        padding = padding[:, None].expand(-1, 2, -1, -1)  # (H, 2, B, N+1)
        context = self.memory_in(memory).repeat_interleave(2 * self.fragments, dim=0)  # (H*2*B, K, D)
        decoded = self.decoder(
            tokens.reshape(-1, length + 1, dim),
            context,
            tgt_key_padding_mask=padding.reshape(-1, length + 1),
        ).view(histories, 2, self.fragments, length + 1, dim)
        return decoded, positive, positive_ids


def item_loss(
    decoded: torch.Tensor,
    positive: torch.Tensor,
    positive_ids: torch.Tensor,
    frag: Fragments,
    sampled_ids: torch.Tensor,
    sampled_features: torch.Tensor,
) -> torch.Tensor:
    """L_item: each masked item of a usable fragment's decoding must pick its true item's features
    out of the sampled items' (softmax over 1 + P dot products; a sample equal to the truth is left
    out). Shapes as `HistoryRecall.decode` returns them; 0 when nothing is masked."""
    chosen = frag.masked & frag.usable[:, None, None]  # (H, B, N)
    outputs = decoded[:, 0, :, 1:][chosen]  # (M, D) positive fragments' masked items
    truth = positive[chosen]  # (M, D)
    truth_ids = positive_ids[chosen]  # (M,)
    logits = torch.cat([(outputs * truth).sum(-1, keepdim=True), outputs @ sampled_features.T], dim=1)
    same = torch.cat(
        [torch.zeros_like(truth_ids[:, None], dtype=torch.bool), sampled_ids[None, :] == truth_ids[:, None]],
        dim=1,
    )  # (M, 1 + P)
    logits = logits.masked_fill(same, torch.finfo(logits.dtype).min)
    if not outputs.shape[0]:
        return logits.sum() * 0.0
    target = torch.zeros(outputs.shape[0], dtype=torch.long, device=logits.device)
    return functional.cross_entropy(logits, target)


def seq_loss(scores: torch.Tensor, frag: Fragments) -> torch.Tensor:
    """L_seq: binary cross-entropy of (H, 2, B) CLS scores, the fragment (1) against its corrupted
    copy (0), averaged over the usable histories' pairs."""
    labels = torch.zeros_like(scores)
    labels[:, 0] = 1.0
    weight = frag.usable[:, None, None].expand_as(scores).float()
    total = functional.binary_cross_entropy_with_logits(scores, labels, weight=weight, reduction="sum")
    return total / weight.sum().clamp(min=1.0)
