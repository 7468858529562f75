"""What a finished run reports: metrics.json's summary, the run folder's files, the MLflow log."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from cmrec.atomic import write_json
from cmrec.eval.heuristics import heuristic_floors
from cmrec.eval.plots import forgetting_figure, losses_figure, roc_figure, save
from cmrec.tracking import RunTracker
from cmrec.train.checkpoint import CHECKPOINT
from cmrec.train.evaluation import PREDICTIONS, SplitEvaluation, write_predictions

if TYPE_CHECKING:
    from cmrec.train.runner import RunSpec

THROUGHPUT = (
    "train_samples_per_second",
    "train_targets_per_user",
    "train_targets_per_second",
    "train_seconds_per_epoch",
    "memory_bytes_per_user",
)


def run_summary(
    spec: RunSpec, state: dict[str, Any], params: dict[str, Any], test: SplitEvaluation, training_users: int
) -> dict[str, Any]:
    """metrics.json: the best epoch's test and validation metrics, the forgetting buckets, the
    training throughput, the heuristic floors and what serving stores per user."""
    epochs, best_epoch = state["epochs"], state["best_epoch"]
    seconds = max(state["train_seconds"], 1e-9)
    data = spec.data
    return {
        "model": spec.name,
        "data": params["data"],
        "seed": spec.settings.seed,
        "best_epoch": best_epoch,
        "test": test.metrics,
        "valid": next(row["valid"] for row in epochs if row["epoch"] == best_epoch),
        "forgetting": test.forgetting,
        "train_samples_per_second": state["samples_seen"] / seconds,
        # Labelled pairs (a positive and its negative) per training user and epoch: 1 for XLong's
        # one target, hundreds with dense supervision.
        "train_targets_per_user": state["targets_seen"] / 2 / len(epochs) / max(training_users, 1),
        "train_targets_per_second": state["targets_seen"] / seconds,
        "train_seconds_per_epoch": state["train_seconds"] / len(epochs),
        "floors": heuristic_floors(data),
        "memory_bytes_per_user": spec.model.needs.serving_bytes_per_user(
            data.max_len, data.histories.categories is not None
        ),
        "epochs": epochs,
    }


def write_run_files(out: Path, name: str, summary: dict[str, Any], test: SplitEvaluation) -> None:
    """metrics.json, test_predictions.parquet, losses.png, roc.png and forgetting.png."""
    predictions = test.predictions
    write_json(out / "metrics.json", summary)
    write_predictions(out / PREDICTIONS, predictions)
    save(losses_figure(summary["epochs"]), out / "losses.png")
    title = f"{name}: test AUC {test.metrics['auc']:.4f}"
    save(roc_figure(predictions.labels, predictions.scores, title), out / "roc.png")
    save(forgetting_figure(test.forgetting, f"{name}: test AUC by evidence age"), out / "forgetting.png")


def log_run(tracker: RunTracker, summary: dict[str, Any], out: Path) -> None:
    """The test metrics, buckets, throughput and floors, the run's files and the model (its
    weights-only checkpoint, `cmrec.mlflow_model`)."""
    tracker.log_metrics({f"test_{k}": v for k, v in summary["test"].items()})
    tracker.log_metrics({f"test_auc_{b}": v["auc"] for b, v in summary["forgetting"].items()})
    tracker.log_metrics({name: summary[name] for name in THROUGHPUT})
    tracker.log_metrics({f"floor_{name}": value for name, value in summary["floors"].items()})
    for name in ("metrics.json", "losses.png", "roc.png", "forgetting.png"):
        tracker.log_artifact(out / name)
    tracker.log_model(out / CHECKPOINT)
