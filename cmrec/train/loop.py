"""The training loop: model-agnostic, it sums each model's weighted loss terms.

Models never own optimisers, devices or loops (STYLE.md); the loop never branches on the model type.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cmrec.data.batch import Batch
from cmrec.output import ModelOutput
from cmrec.progress import progress


@dataclass(frozen=True)
class EpochResult:
    """One training epoch: the sample-weighted mean of each loss term and of the total, the samples
    trained on, and the labelled targets (samples plus dense targets inside the histories)."""

    losses: dict[str, float]
    samples: int
    targets: int


@dataclass(frozen=True)
class Predictions:
    """Click probabilities of a pass over a data set, with labels and user indices."""

    labels: np.ndarray
    scores: np.ndarray
    users: np.ndarray


def train_epoch(
    model: nn.Module,
    batches: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    desc: str = "train",
    total: int | None = None,
) -> EpochResult:
    """One pass of training: loss means, samples and labelled targets (see `EpochResult`)."""
    model.train()
    sums: dict[str, float] = defaultdict(float)
    seen = targets = 0
    started = time.perf_counter()
    bar = progress(batches, desc=desc, unit="batch", total=total)
    for batch in bar:
        output: ModelOutput = model(batch)
        loss = output.total()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        size = batch.num_samples
        seen += size
        targets += size + (0 if batch.history_targets is None else len(batch.history_targets))
        sums["total"] += float(loss.detach()) * size
        for name, value in output.losses.items():
            sums[name] += float(value.detach()) * size
        if hasattr(bar, "set_postfix"):  # running means of the loss terms, and throughput
            running = {name: f"{value / seen:.3f}" for name, value in sums.items()}
            elapsed = time.perf_counter() - started
            bar.set_postfix(
                running,
                samples_per_s=f"{seen / elapsed:.0f}",
                targets_per_s=f"{targets / elapsed:.0f}",
                refresh=False,
            )
    return EpochResult({name: value / max(seen, 1) for name, value in sums.items()}, seen, targets)


@torch.no_grad()
def predict(
    model: nn.Module, batches: Iterable[Batch], desc: str = "predict", total: int | None = None
) -> Predictions:
    """Click probabilities for every sample, in loader order (evaluation mode)."""
    model.eval()
    labels, scores, users = [], [], []
    for batch in progress(batches, desc=desc, unit="batch", total=total):
        output: ModelOutput = model(batch)
        labels.append(batch.labels.cpu().numpy())
        scores.append(torch.sigmoid(output.logits).cpu().numpy())
        users.append(batch.user_ids.cpu().numpy())
    return Predictions(np.concatenate(labels), np.concatenate(scores), np.concatenate(users))
