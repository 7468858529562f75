"""The segment encoder: a Transformer encoder over each N-item segment (paper §3.2).

Shape letters: B batch, T segments, N items per segment, D features.
"""

from __future__ import annotations

import torch
from torch import nn

CHUNK_SEGMENTS = 512  # segments per encoder call


class SegmentEncoder(nn.Module):
    """Bidirectional self-attention inside each segment; all B*T segments in one call.

    Segments without any real item are skipped (a fully masked attention row would be NaN), and
    their output is zero. Positions inside a segment get a learned embedding (the paper leaves the
    positional encoding unspecified).

    Args:
        dim: D (d_x).
        heads: attention heads.
        layers: encoder layers.
        ffn_dim: width of the feed-forward sublayer.
        dropout: dropout inside the layers.
        segment_len: N.

    Example::

        encoder = SegmentEncoder(dim=64, heads=4, layers=3, ffn_dim=256, dropout=0.1, segment_len=20)
        features = encoder(x, mask)   # (B, T, 20, 64)
    """

    def __init__(
        self, dim: int, heads: int, layers: int, ffn_dim: int, dropout: float, segment_len: int
    ) -> None:
        super().__init__()
        self.position = nn.Parameter(torch.randn(segment_len, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, ffn_dim, dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, N, D) segments and (B, T, N) mask -> (B, T, N, D) features F."""
        batch, segments, length, dim = x.shape
        flat_x = x.reshape(batch * segments, length, dim)  # (B*T, N, D)
        flat_mask = mask.reshape(batch * segments, length)  # (B*T, N)
        live = flat_mask.any(dim=1).nonzero().squeeze(1)  # segments with at least one item
        if live.numel() == 0:  # no real item at all (attention over nothing is undefined)
            return torch.zeros_like(x)
        # In chunks of segments: one call over every segment of long histories runs out of the
        # caches (measured at L = 5,000: 2.24 s forward + backward in one call, 1.62 s in chunks of
        # 512; no difference at L = 1,000). Each segment is encoded alone either way.
        encoded = torch.cat(
            [
                self.encoder(flat_x[chunk] + self.position, src_key_padding_mask=~flat_mask[chunk])
                for chunk in live.split(CHUNK_SEGMENTS)
            ]
        )
        out = flat_x.new_zeros(flat_x.shape).index_copy(0, live, encoded)
        return out.view(batch, segments, length, dim)
