"""`cmrec train`: train a registered model on a click log, evaluate it, track it in MLflow.

Writes RUN_DIR/checkpoint.pt (best validation epoch: weights, config, vocabularies; readable with
``torch.load(weights_only=True)``), RUN_DIR/metrics.json and the plots (losses.png, roc.png,
forgetting.png); logs params, per-epoch metrics (every loss term), test metrics, the plots and the
model to MLflow. Early stopping on validation AUC. Deterministic for a seed on CPU.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml

from cmrec.data.batch import HistoryNegatives, make_loader
from cmrec.data.dataset import ClickLogData
from cmrec.errors import CmrecError
from cmrec.eval.forgetting import bucket_aucs, evidence_buckets
from cmrec.eval.metrics import ctr_metrics
from cmrec.eval.plots import plot_forgetting, plot_losses, plot_roc
from cmrec.models.registry import DataSpec, build_model, model_config, model_names
from cmrec.tracking import RunTracker, tracking_uri
from cmrec.train.checkpoint import CHECKPOINT, save_checkpoint
from cmrec.train.loop import Predictions, predict, train_epoch
from pipelines._common import write_json
from pipelines._data import add_data_arguments, load_data

DESCRIPTION = "Train a model on a click log; write a run folder and track the run in MLflow."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, choices=model_names(), help="registered model name")
    parser.add_argument("--out", type=Path, required=True, help="run folder to write")
    add_data_arguments(parser, training=True)
    parser.add_argument("--epochs", type=int, default=5, help="most epochs (default 5)")
    parser.add_argument("--patience", type=int, default=2, help="epochs without a better validation AUC")
    parser.add_argument("--batch-size", type=int, default=128, help="samples per batch (default 128)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (paper: 1e-3)")
    parser.add_argument("--seed", type=int, default=0, help="seeds weights, negatives and shuffling")
    parser.add_argument("--config", type=Path, help="YAML file of model config values to override")
    parser.add_argument("--experiment", default="cmrec", help="MLflow experiment (default cmrec)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")


def read_overrides(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CmrecError(f"{path}: cannot read the YAML config: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise CmrecError(f"{path}: the YAML config must be a mapping of config keys to values")
    return {key: tuple(v) if isinstance(v, list) else v for key, v in loaded.items()}


def run(args: argparse.Namespace) -> int:
    if args.epochs < 1 or args.batch_size < 2 or args.patience < 1:
        raise CmrecError("--epochs >= 1, --patience >= 1 and an even --batch-size >= 2 are required")
    overrides = read_overrides(args.config)
    config = model_config(args.model, overrides)  # unknown keys and bad values fail before any work
    torch.manual_seed(args.seed)
    data, source = load_data(args)
    model = build_model(args.model, DataSpec.from_vocabs(data.vocabs), overrides)
    negatives = None
    if getattr(model, "needs_history_negatives", False):  # a capability the model declares
        negatives = HistoryNegatives(len(data.vocabs.items), data.vocabs.item_category, args.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    params = {
        "model": args.model,
        "data": source,
        "seed": args.seed,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "max_len": args.max_len,
        "epochs": args.epochs,
        **{f"config.{k}": v for k, v in asdict(config).items()},
    }
    tracker = (
        None
        if args.no_mlflow
        else RunTracker(args.experiment, f"{args.model}-seed{args.seed}", {"model": args.model})
    )
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        summary = _fit(args, data, model, optimizer, negatives, config, tracker, params)
    finally:
        if tracker is not None:
            tracker.__exit__(*sys.exc_info())
    test = summary["test"]
    print(
        f"{args.model} on {source} (seed {args.seed}): test AUC {test['auc']:.4f}, GAUC {test['gauc']:.4f}, "
        f"logloss {test['logloss']:.4f}; best epoch {summary['best_epoch']}; "
        f"{summary['train_samples_per_second']:.1f} training samples/s; run folder {args.out}"
        + ("" if args.no_mlflow else f"; MLflow store {tracking_uri()}")
    )
    return 0


def _fit(
    args: argparse.Namespace,
    data: ClickLogData,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    negatives: HistoryNegatives | None,
    config: Any,
    tracker: RunTracker | None,
    params: dict[str, Any],
) -> dict[str, Any]:
    if tracker is not None:
        tracker.log_params(params)

    def loader(split: str, shuffle: bool = False, epoch: int = 0):  # type: ignore[no-untyped-def]
        return make_loader(
            data.histories,
            data.split(split),
            args.batch_size,
            data.max_len,
            shuffle=shuffle,
            seed=args.seed * 1000 + epoch,
            negatives=negatives,
        )

    epochs: list[dict[str, Any]] = []
    best_auc, best_state, best_epoch, waited = -1.0, None, 0, 0
    train_seconds = 0.0
    for epoch in range(args.epochs):
        started = time.perf_counter()
        losses = train_epoch(model, loader("train", True, epoch), optimizer, desc=f"epoch {epoch}")
        train_seconds += time.perf_counter() - started
        valid = _metrics(predict(model, loader("valid"), desc="valid"))
        epochs.append({"epoch": epoch, "train": losses, "valid": valid})
        if tracker is not None:
            tracker.log_metrics(
                {
                    **{f"train_{k}": v for k, v in losses.items()},
                    **{f"valid_{k}": v for k, v in valid.items()},
                },
                step=epoch,
            )
        print(
            f"epoch {epoch}: "
            + ", ".join(f"{k} {v:.4f}" for k, v in losses.items())
            + f"; valid AUC {valid['auc']:.4f}",
            file=sys.stderr,
        )
        if valid["auc"] > best_auc:
            best_auc, best_state, best_epoch, waited = (
                valid["auc"],
                copy.deepcopy(model.state_dict()),
                epoch,
                0,
            )
            save_checkpoint(
                args.out / CHECKPOINT,
                args.model,
                config,
                model,
                data.vocabs,
                {
                    "max_len": data.max_len,
                    "epoch": epoch,
                    "params": {k: str(v) for k, v in params.items()},
                },
            )
        else:
            waited += 1
            if waited >= args.patience:
                break
    assert best_state is not None
    model.load_state_dict(best_state)
    predictions = predict(model, loader("test"), desc="test")
    test = _metrics(predictions)
    buckets = bucket_aucs(
        evidence_buckets(data.histories, data.test, data.max_len),
        predictions.labels,
        predictions.scores,
    )
    samples_seen = len(data.train) * len(epochs)
    summary = {
        "model": args.model,
        "data": params["data"],
        "seed": args.seed,
        "best_epoch": best_epoch,
        "test": test,
        "valid": epochs[best_epoch]["valid"],
        "forgetting": buckets,
        "train_samples_per_second": samples_seen / max(train_seconds, 1e-9),
        "memory_bytes_per_user": _memory_bytes_per_user(config, data),
        "epochs": epochs,
    }
    write_json(args.out / "metrics.json", summary)
    plot_losses(epochs, args.out / "losses.png")
    plot_roc(
        predictions.labels,
        predictions.scores,
        args.out / "roc.png",
        f"{args.model}: test AUC {test['auc']:.4f}",
    )
    plot_forgetting(buckets, args.out / "forgetting.png", f"{args.model}: test AUC by evidence age")
    if tracker is not None:
        tracker.log_metrics({f"test_{k}": v for k, v in test.items()})
        tracker.log_metrics({f"test_auc_{b}": v["auc"] for b, v in buckets.items()})
        tracker.log_metrics(
            {
                "train_samples_per_second": summary["train_samples_per_second"],
                "memory_bytes_per_user": summary["memory_bytes_per_user"],
            }
        )
        for name in ("metrics.json", "losses.png", "roc.png", "forgetting.png"):
            tracker.log_artifact(args.out / name)
        tracker.log_model(model)
    return summary


def _memory_bytes_per_user(config: Any, data: ClickLogData) -> int:
    """What serving stores per user: a memory of K x d_m float32, or the history's int32 ids."""
    if hasattr(config, "slots") and hasattr(config, "memory_dim"):
        return int(config.slots * config.memory_dim * 4)
    ids_per_event = 1 if data.histories.categories is None else 2
    return int(data.max_len * ids_per_event * 4)


def _metrics(predictions: Predictions) -> dict[str, float]:
    return ctr_metrics(predictions.labels, predictions.scores, predictions.users)


def main(argv: list[str] | None = None) -> int:
    from cmrec.cli import run_pipeline

    return run_pipeline("train", argv)


if __name__ == "__main__":
    sys.exit(main())
