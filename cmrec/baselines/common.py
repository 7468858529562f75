"""Pieces shared by the end-to-end baselines.

Shape letters: E events, H histories, L longest history in the batch, S samples, D features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cmrec.data.batch import HistoryTargets
from cmrec.data.jagged import segment_jagged
from cmrec.errors import ConfigError

# Dense targets of the end-to-end baselines are drawn per 20-click segment, like CM's (N = 20), so
# every model trains on the same distribution of targets.
DENSE_SEGMENT = 20


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
        activation: "prelu" (DIEN's default), "sigmoid" (DIN's attention), "relu" or "elu" (HPMN).
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
    if name == "elu":
        return nn.ELU()
    raise ConfigError(f"activation must be prelu, sigmoid, relu or elu, got {name!r}")


def check_positive(owner: str, **values: int | Sequence[int]) -> None:
    """Config validation: every value (or every element) must be a positive integer."""
    for name, value in values.items():
        items = list(value) if isinstance(value, Sequence) else [value]
        if not items or any(not isinstance(v, int) or v < 1 for v in items):
            raise ConfigError(f"{owner}.{name} must be positive integer(s), got {value!r}")


def check_dense(owner: str, per_segment: int, last_segments: int, sample_share: float = 0.0) -> None:
    """Config validation of the dense-supervision settings (see `DenseTargets`, `Batch.target_loss`)."""
    if per_segment < 0 or last_segments < 0 or per_segment > DENSE_SEGMENT:
        raise ConfigError(
            f"{owner}.dense_per_segment must be in [0, {DENSE_SEGMENT}] and dense_last_segments >= 0, "
            f"got {per_segment} and {last_segments}"
        )
    check_sample_share(owner, sample_share)


def check_sample_share(owner: str, sample_share: float) -> None:
    """`sample_share` (see `Batch.target_loss`) must lie in [0, 1)."""
    if not 0.0 <= sample_share < 1.0:
        raise ConfigError(f"{owner}.sample_share must be in [0, 1), got {sample_share}")


def prefix_rows(states: torch.Tensor, targets: HistoryTargets) -> torch.Tensor:
    """(H, L, F) per-event states -> (D, F) the state after the event before each target."""
    return states[targets.history_row, targets.position - 1]
