"""Pieces shared by the end-to-end baselines.

Shape letters: E events, H histories, L longest history in the batch, S samples, D features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cmrec.errors import ConfigError
from cmrec.memory.segments import segment_jagged


def pad_histories(values: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Jagged (E, D) values to right-padded (H, L, D) and a (H, L) mask of real events."""
    longest = max(1, int(lengths.max())) if lengths.numel() else 1
    padded, mask = segment_jagged(values, lengths, longest)  # one segment as long as the longest history
    return padded[:, 0], mask[:, 0]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(H, L, D) and (H, L) -> (H, D) mean over real events (zeros for an empty history)."""
    total = (x * mask[..., None]).sum(dim=1)
    return total / mask.sum(dim=1, keepdim=True).clamp(min=1)


class MLP(nn.Module):
    """Linear layers with an activation after each hidden layer, then a linear output.

    Args:
        in_features: input width.
        hidden: hidden widths (DIEN's code: 200, 80).
        out_features: output width.
        activation: "prelu" (DIEN's default), "sigmoid" (DIN's attention) or "relu".
    """

    def __init__(
        self, in_features: int, hidden: Sequence[int], out_features: int = 1, activation: str = "prelu"
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), _activation(activation, size)]
            width = size
        layers.append(nn.Linear(width, out_features))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _activation(name: str, size: int) -> nn.Module:
    if name == "prelu":
        return nn.PReLU(size)
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "relu":
        return nn.ReLU()
    raise ConfigError(f"activation must be prelu, sigmoid or relu, got {name!r}")


def check_positive(owner: str, **values: int | Sequence[int]) -> None:
    """Config validation: every value (or every element) must be a positive integer."""
    for name, value in values.items():
        items = list(value) if isinstance(value, Sequence) else [value]
        if not items or any(not isinstance(v, int) or v < 1 for v in items):
            raise ConfigError(f"{owner}.{name} must be positive integer(s), got {value!r}")
