"""Sampling history fragments for the recall losses (paper §3.3).

Shape letters: H histories, T segments, N items per segment, B fragments per history.

A positive fragment is one of the history's segments (chosen uniformly, with replacement). Half of
its real items are masked (to be reconstructed from memory, L_item); the matching negative fragment
also replaces half of the remaining unmasked items with items from *other* histories of the batch
(L_seq tells real from corrupted).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Fragments:
    """Positions of sampled fragments inside the (H, T, N) segment grid.

    Args:
        segment: (H, B) segment index of each fragment.
        valid: (H, B, N) real items of each fragment.
        masked: (H, B, N) items replaced by the [mask] token (a subset of `valid`).
        replacement: (H, B, N) flat index into the (H*T*N) grid of the item that replaces this one
            in the negative fragment, or -1 where the item is kept.
        usable: (H,) histories with at least one real item (the others give no recall loss).
    """

    segment: torch.Tensor
    valid: torch.Tensor
    masked: torch.Tensor
    replacement: torch.Tensor
    usable: torch.Tensor


def _choose(candidates: torch.Tensor, ratio: float, generator: torch.Generator | None) -> torch.Tensor:
    """Pick round(ratio * count) of the True entries along the last axis, uniformly at random."""
    count = candidates.sum(dim=-1, keepdim=True)
    wanted = torch.round(count * ratio)
    noise = torch.rand(candidates.shape, generator=generator, device=candidates.device)
    noise = noise.masked_fill(~candidates, 2.0)  # non-candidates sort last
    rank = noise.argsort(dim=-1).argsort(dim=-1)
    return (rank < wanted) & candidates


def sample_fragments(
    mask: torch.Tensor,
    fragments: int,
    mask_ratio: float,
    replace_ratio: float,
    generator: torch.Generator | None = None,
) -> Fragments:
    """Sample `fragments` positive fragments per history and their negatives.

    Args:
        mask: (H, T, N) real items of the segment grid (`segment_jagged`).
        fragments: B.
        mask_ratio: share of a fragment's real items that are masked (paper: 0.5).
        replace_ratio: share of the unmasked items replaced in the negative (paper: 0.5).
        generator: source of randomness (the global one when None).
    """
    histories, segments, length = mask.shape
    device = mask.device
    live = mask.any(dim=-1)  # (H, T)
    usable = live.any(dim=-1)  # (H,)
    # Uniform choice among live segments: sample from weights (a dead row falls back to segment 0).
    weights = live.float()
    weights[~usable, 0] = 1.0
    segment = torch.multinomial(weights, fragments, replacement=True, generator=generator)  # (H, B)
    valid = torch.gather(mask, 1, segment[:, :, None].expand(-1, -1, length))  # (H, B, N)
    masked = _choose(valid, mask_ratio, generator)
    replaced = _choose(valid & ~masked, replace_ratio, generator)

    # Replacement items come from other histories: draw events, redraw those owned by the same history.
    flat_mask = mask.reshape(-1)
    events = flat_mask.nonzero().squeeze(1)  # (E,) flat indices of real items
    owner = events // (segments * length)
    row = torch.arange(histories, device=device)[:, None, None].expand_as(replaced)
    pick = torch.randint(0, max(events.numel(), 1), replaced.shape, generator=generator, device=device)
    for _ in range(16):
        clash = replaced & (owner[pick] == row) if events.numel() else replaced
        if not clash.any() or usable.sum() < 2:
            break
        redraw = torch.randint(0, events.numel(), replaced.shape, generator=generator, device=device)
        pick = torch.where(clash, redraw, pick)
    # With a single usable history there is no other user to borrow from: keep those items.
    borrowed = replaced & (usable.sum() >= 2)
    if events.numel():
        borrowed = borrowed & (owner[pick] != row)
        replacement = torch.where(borrowed, events[pick], torch.full_like(pick, -1))
    else:
        replacement = torch.full_like(pick, -1)
    return Fragments(segment=segment, valid=valid, masked=masked, replacement=replacement, usable=usable)
