"""`cmrec train`: train a registered model on a click log, evaluate it, track it in MLflow.

Writes RUN_DIR/checkpoint.pt (best validation epoch: weights, config, vocabularies; readable with
``torch.load(weights_only=True)``), RUN_DIR/metrics.json and the plots (losses.png, roc.png,
forgetting.png); logs params, per-epoch metrics (every loss term), test metrics, the plots and the
model to MLflow. Early stopping on validation AUC. Deterministic for a seed on CPU.
RUN_DIR/test_predictions.parquet holds the test probabilities the metrics were computed from.

With --nproc N the same job runs in N processes (``torchrun --standalone``; several machines:
plain ``torchrun``, see docs/training.md): TorchRec shards the embedding tables (--sharding), the dense
part is data-parallel, each process trains on its own share of the users, and evaluation gathers
every prediction before computing the metrics once. The tables then train with a fused
--embedding-optimizer (RowWiseAdagrad by default; fused Adam is GPU-only), the dense part with Adam
(--lr). Every epoch writes RUN_DIR/distributed/last (a torch.distributed.checkpoint folder,
continued with --resume); RUN_DIR/checkpoint.pt is converted from RUN_DIR/distributed/best.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cmrec.errors import CmrecError
from cmrec.models.registry import model_config, model_names
from cmrec.pipelines._common import read_overrides, run_command
from cmrec.pipelines._data import add_data_arguments, load_data
from cmrec.pipelines._launch import (
    add_distributed_arguments,
    launch_and_swap,
    sharding_options,
    started_by_launch,
)
from cmrec.tracking import tracking_uri
from cmrec.train import SettingError, TrainSettings, fit
from cmrec.train.distributed import torchrun_world
from cmrec.train.run_folder import check_run_folder

FLAGS = {"epochs": "--epochs", "patience": "--patience", "batch_size": "--batch-size", "lr": "--lr"}

DESCRIPTION = "Train a model on a click log; write a run folder and track the run in MLflow."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, choices=model_names(), help="registered model name")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="run folder to write; built beside it and swapped in whole when the run is complete",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing run folder at --out (kept until then)"
    )
    add_data_arguments(parser, training=True)
    parser.add_argument("--epochs", type=int, default=5, help="most epochs (default 5)")
    parser.add_argument("--patience", type=int, default=2, help="epochs without a better validation AUC")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="samples per batch (default 32: 16 users, each with its dense targets; per process with "
        "--nproc)",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=3e-3,
        help="Adam learning rate (default 3e-3; the paper's recipe: 1e-3); with --nproc of the dense part",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds weights, negatives and shuffling")
    parser.add_argument("--config", type=Path, help="YAML file of model config values to override")
    parser.add_argument("--experiment", default="cmrec", help="MLflow experiment (default cmrec)")
    parser.add_argument(
        "--label",
        help="the row name of this run in `cmrec compare` (default: the model name); runs of one "
        "model with other --config values need labels of their own",
    )
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    add_distributed_arguments(parser)


def run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    overrides = read_overrides(args.config)
    model_config(args.model, overrides)  # unknown keys and bad values fail before any work
    sharding = sharding_options(args)
    check_run_folder(args.out, args.overwrite or args.resume)  # before the data is read
    if sharding is not None and torchrun_world() is None:
        return launch_and_swap(args)  # this process starts the workers and swaps their run folder in
    data, source = load_data(args, training=True)
    result = fit(
        args.model,
        data,
        args.out,
        settings,
        overrides=overrides,
        source=source,
        label=args.label,
        experiment=None if args.no_mlflow else args.experiment,
        sharding=sharding,
        replace=args.overwrite or args.resume,
        resume=args.resume,
        swap=not started_by_launch(),
    )
    if result.is_main:
        summary, test = result.summary, result.summary["test"]
        print(
            f"{args.model} on {source} (seed {args.seed}): test AUC {test['auc']:.4f}, "
            f"GAUC {test['gauc']:.4f}, logloss {test['logloss']:.4f}; best epoch {summary['best_epoch']}; "
            f"{summary['train_samples_per_second']:.1f} training samples/s; run folder {args.out}"
            + ("" if args.no_mlflow else f"; MLflow store {tracking_uri()}")
        )
    return 0


def _settings(args: argparse.Namespace) -> TrainSettings:
    try:
        settings = TrainSettings(args.epochs, args.patience, args.batch_size, args.lr, args.seed)
    except SettingError as exc:
        raise CmrecError(exc.named(FLAGS)) from exc
    if not args.embedding_lr > 0:  # also NaN
        raise CmrecError(f"--embedding-lr must be a positive number, got {args.embedding_lr}")
    return settings


def main(argv: list[str] | None = None) -> int:
    return run_command(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
