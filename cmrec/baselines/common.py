"""Pieces shared by the end-to-end baselines.

Shape letters: E events, H histories, L longest history in the batch, S samples, D features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional

from cmrec.data.batch import Batch, HistoryTargets
from cmrec.data.jagged import segment_jagged
from cmrec.embeddings.tables import ItemEmbeddings
from cmrec.errors import ConfigError
from cmrec.output import RecModel

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


def prefix_windows(x: torch.Tensor, rows: torch.Tensor, ends: torch.Tensor, width: int) -> torch.Tensor:
    """(H, L, D) right-padded histories -> (R, width, D): for each (row, end) pair the `width`
    events before index `end` of history `row`, oldest first, zeros in front where there are fewer
    (an end of a history's length gives its last `width` clicks)."""
    start = ends[:, None] - width + torch.arange(width, device=x.device)[None]  # (R, width)
    valid = start >= 0
    index = start.clamp(min=0, max=max(x.shape[1] - 1, 0))
    return x[rows[:, None], index] * valid[..., None]


class PrefixPlan:
    """The dense targets a click-by-click loop scores at each step: target j reads the state after
    click ``position[j] - 1`` of its history (`HistoryTargets`).

    The loop calls `snapshot` after every step; `logits` then scores the snapshots and returns the
    logits in the targets' order.
    """

    def __init__(self, targets: HistoryTargets) -> None:
        after = targets.position - 1
        self.order = torch.argsort(after, stable=True)
        steps, counts = torch.unique_consecutive(after[self.order], return_counts=True)
        self._at = dict(zip(steps.tolist(), self.order.split(counts.tolist()), strict=True))
        self._rows = targets.history_row
        self._snaps: list[dict[str, torch.Tensor]] = []

    def snapshot(self, step: int, state: dict[str, torch.Tensor]) -> None:
        """Keep the state rows of the targets scored after click `step` (0-based)."""
        chosen = self._at.get(step)
        if chosen is not None:
            rows = self._rows[chosen]
            self._snaps.append({name: value[rows] for name, value in state.items()})

    def states(self) -> dict[str, torch.Tensor]:
        """The kept states, one row per target in `order` (every step's snapshot must be taken)."""
        if len(self._snaps) != len(self._at):
            raise RuntimeError(f"PrefixPlan: {len(self._snaps)} of {len(self._at)} steps were snapshot")
        return {name: torch.cat([snap[name] for snap in self._snaps]) for name in self._snaps[0]}

    def in_target_order(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits computed in `order` -> the targets' own order."""
        return logits[torch.argsort(self.order)]


def final_states(states: torch.Tensor, lengths: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """(B, T, H) per-step states of right-padded sequences -> (B, H): each one's state after its
    last real step, or `before` (B, H) where it has none (states past a sequence's end are never read)."""
    last = states[torch.arange(states.shape[0], device=states.device), (lengths - 1).clamp(min=0)]
    return torch.where((lengths > 0)[:, None], last, before)


def grid_clicks(
    embeddings: ItemEmbeddings,
    segment_items: torch.Tensor,
    mask: torch.Tensor,
    segment_categories: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The (B, T, N) click grids of an incremental model's `write` as one right-padded sequence per
    user: (B, T * N, D) features, (B, T * N) mask and (B,) lengths; None when the grids are empty."""
    batch = segment_items.shape[0]
    items = segment_items.reshape(batch, -1)
    if items.shape[1] == 0:
        return None
    categories = None if segment_categories is None else segment_categories.reshape(-1)
    x = embeddings.lookup(items.reshape(-1), categories).reshape(batch, items.shape[1], -1)
    flat = mask.reshape(batch, -1)
    return x, flat, flat.sum(dim=1)


def next_click_loss(
    owner: str,
    auxiliary: nn.Module,
    embeddings: ItemEmbeddings,
    batch: Batch,
    states: torch.Tensor,
    positives: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """DIEN's auxiliary loss: state t, beside the embedding of click t + 1 or of a sampled
    non-click, must tell them apart (binary cross-entropy over every such pair of the batch).

    Args:
        owner: the model's name, for the error when the batch carries no sampled negatives.
        auxiliary: the network scoring [state; behaviour] (its output is one logit).
        states: (H, L, G) states after each click; positives: (H, L, D) click features; mask: (H, L).
    """
    if batch.history_negatives is None:
        raise ConfigError(
            f"{owner}'s auxiliary loss needs sampled negative behaviours: build the loader with "
            "negatives=HistoryNegatives(...), or set aux_weight to 0"
        )
    negative_values, negative_lengths = embeddings(batch.history_negatives)
    negatives, _ = pad_histories(negative_values, negative_lengths)  # (H, L, D)
    pairs = mask[:, :-1] & mask[:, 1:]  # (H, L-1): state t and a next behaviour exist
    current = states[:, :-1][pairs]  # (P, G)
    if current.numel() == 0:
        return states.sum() * 0.0
    click = auxiliary(torch.cat([current, positives[:, 1:][pairs]], dim=-1)).squeeze(-1)
    no_click = auxiliary(torch.cat([current, negatives[:, 1:][pairs]], dim=-1)).squeeze(-1)
    logits = torch.cat([click, no_click])
    labels = torch.cat([torch.ones_like(click), torch.zeros_like(no_click)])
    return functional.binary_cross_entropy_with_logits(logits, labels)


class ClickByClick(RecModel):
    """Base of the models whose state takes one click at a time (`IncrementalModel` with
    write_len 1: GRU4REC, MIMN, HPMN): `write` turns the click grids into one right-padded
    sequence per user and hands it to `consume`."""

    write_len = 1  # a click is written as soon as it arrives: nothing is ever pending

    def write(
        self,
        memory: torch.Tensor,
        segment_items: torch.Tensor,
        mask: torch.Tensor,
        segment_categories: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """States after the clicks of (B, T, N) grids, oldest first; padding changes nothing."""
        clicks = grid_clicks(self.embeddings, segment_items, mask, segment_categories)
        return memory if clicks is None else self.consume(memory, *clicks)

    def consume(
        self, memory: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """(B, rows, d) states after (B, L, D) right-padded clicks ((B, L) mask, (B,) lengths)."""
        raise NotImplementedError
