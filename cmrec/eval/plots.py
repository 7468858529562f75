"""Plots of a run, written as PNG files: loss curves, ROC curve, forgetting diagnostic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import roc_curve


def plot_losses(epochs: list[dict[str, Any]], path: Path) -> None:
    """Training loss terms and validation AUC per epoch."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    terms = sorted({k for e in epochs for k in e["train"]})
    steps = [e["epoch"] for e in epochs]
    for term in terms:
        left.plot(steps, [e["train"].get(term, np.nan) for e in epochs], marker="o", label=term)
    left.set(xlabel="epoch", ylabel="training loss", title="loss terms")
    left.legend()
    right.plot(steps, [e["valid"]["auc"] for e in epochs], marker="o")
    right.set(xlabel="epoch", ylabel="AUC", title="validation AUC")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_roc(labels: np.ndarray, scores: np.ndarray, path: Path, title: str) -> None:
    false_positive, true_positive, _ = roc_curve(labels, scores)
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot(false_positive, true_positive)
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey")
    axis.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_forgetting(buckets: dict[str, dict[str, float]], path: Path, title: str) -> None:
    figure, axis = plt.subplots(figsize=(6, 4))
    names = list(buckets)
    axis.bar(names, [buckets[n]["auc"] for n in names])
    for i, name in enumerate(names):
        axis.text(i, buckets[name]["auc"], f"{int(buckets[name]['pairs'])}", ha="center", va="bottom")
    axis.set(
        xlabel="age of the last evidence (Q1 newest .. Q4 oldest)", ylabel="AUC", ylim=(0.4, 1.0), title=title
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
