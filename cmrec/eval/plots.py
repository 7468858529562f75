"""Plots of a run: loss curves, ROC curve, forgetting diagnostic.

Each ``*_figure`` function returns a matplotlib `Figure` (a notebook shows it); `save` writes one
as PNG (the train job does). Figures are built without pyplot, so importing this module sets no
matplotlib backend and keeps no figure alive.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve


def losses_figure(epochs: list[dict[str, Any]]) -> Figure:
    """Training loss terms and validation AUC per epoch (`metrics.json`'s "epochs" rows)."""
    figure = Figure(figsize=(10, 4))
    left, right = figure.subplots(1, 2)
    terms = sorted({k for e in epochs for k in e["train"]})
    steps = [e["epoch"] for e in epochs]
    for term in terms:
        left.plot(steps, [e["train"].get(term, np.nan) for e in epochs], marker="o", label=term)
    left.set(xlabel="epoch", ylabel="training loss", title="loss terms")
    left.legend()
    right.plot(steps, [e["valid"]["auc"] for e in epochs], marker="o")
    right.set(xlabel="epoch", ylabel="AUC", title="validation AUC")
    figure.tight_layout()
    return figure


def roc_figure(labels: np.ndarray, scores: np.ndarray, title: str) -> Figure:
    """The ROC curve of click probabilities against labels."""
    false_positive, true_positive, _ = roc_curve(labels, scores)
    figure = Figure(figsize=(5, 5))
    axis = figure.subplots()
    axis.plot(false_positive, true_positive)
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey")
    axis.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    figure.tight_layout()
    return figure


def forgetting_figure(buckets: dict[str, dict[str, float]], title: str) -> Figure:
    """AUC per evidence-age bucket (`cmrec.eval.forgetting`), each bar labelled with its pairs."""
    figure = Figure(figsize=(6, 4))
    axis = figure.subplots()
    names = list(buckets)
    axis.bar(names, [buckets[n]["auc"] for n in names])
    for i, name in enumerate(names):
        axis.text(i, buckets[name]["auc"], f"{int(buckets[name]['pairs'])}", ha="center", va="bottom")
    axis.set(
        xlabel="age of the last evidence (Q1 newest .. Q4 oldest)", ylabel="AUC", ylim=(0.4, 1.0), title=title
    )
    figure.tight_layout()
    return figure


def save(figure: Figure, path: Path) -> None:
    """Write a figure as PNG (100 dpi)."""
    figure.savefig(path, dpi=100)
