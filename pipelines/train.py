"""`cmrec train`: train a registered model on a click log, evaluate it, track it in MLflow.

Writes RUN_DIR/checkpoint.pt (best validation epoch: weights, config, vocabularies; readable with
``torch.load(weights_only=True)``), RUN_DIR/metrics.json and the plots (losses.png, roc.png,
forgetting.png); logs params, per-epoch metrics (every loss term), test metrics, the plots and the
model to MLflow. Early stopping on validation AUC. Deterministic for a seed on CPU.
RUN_DIR/test_predictions.parquet holds the test probabilities the metrics were computed from.

With --nproc N the same job runs in N processes (``torchrun --standalone``; several machines:
plain ``torchrun``, see the README): TorchRec shards the embedding tables (--sharding), the dense
part is data-parallel, each process trains on its own share of the users, and evaluation gathers
every prediction before computing the metrics once. The tables then train with a fused
--embedding-optimizer (RowWiseAdagrad by default; fused Adam is GPU-only), the dense part with Adam
(--lr). Every epoch writes RUN_DIR/distributed/last (a torch.distributed.checkpoint folder,
continued with --resume); RUN_DIR/checkpoint.pt is converted from RUN_DIR/distributed/best.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from cmrec.atomic import partial_folder, swap_in
from cmrec.errors import CmrecError
from cmrec.models.registry import model_config, model_names
from cmrec.pipelines._common import launch, run_command, torchrun_world
from cmrec.pipelines._data import add_data_arguments, load_data
from cmrec.tracking import tracking_uri
from cmrec.train import SettingError, TrainSettings, fit
from cmrec.train.distributed import EMBEDDING_OPTIMIZERS, SHARDING_TYPES, ShardingOptions
from cmrec.train.run_folder import check_run_folder, prepare_run_folder

SWAP_BY_LAUNCHER = "CMREC_SWAP_BY_LAUNCHER"  # set for the processes `--nproc` starts
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
    group = parser.add_argument_group("multi-process training (TorchRec DistributedModelParallel)")
    group.add_argument(
        "--nproc",
        type=int,
        help="train in N processes on this machine (torchrun --standalone); under torchrun the world "
        "it sets is used and --nproc is ignored",
    )
    group.add_argument(
        "--sharding",
        choices=list(SHARDING_TYPES),
        default="auto",
        help="how the embedding tables are split over processes (default auto: the planner's choice)",
    )
    group.add_argument(
        "--embedding-optimizer",
        choices=list(EMBEDDING_OPTIMIZERS),
        default="rowwise-adagrad",
        help="fused optimizer of the sharded tables (default rowwise-adagrad; adam: GPU only)",
    )
    group.add_argument("--embedding-lr", type=float, default=0.01, help="its learning rate (default 0.01)")
    group.add_argument(
        "--resume", action="store_true", help="continue from RUN_DIR/distributed/last (same settings)"
    )


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
    settings = _settings(args)
    overrides = read_overrides(args.config)
    model_config(args.model, overrides)  # unknown keys and bad values fail before any work
    under_torchrun = torchrun_world() is not None
    if args.resume and args.nproc is None and not under_torchrun:
        raise CmrecError("--resume continues a multi-process run: give --nproc N as well")
    if args.nproc is not None and args.nproc < 1:
        raise CmrecError(f"--nproc must be >= 1, got {args.nproc}")
    sharding = None
    if args.nproc is not None or under_torchrun:
        sharding = ShardingOptions(args.sharding, args.embedding_optimizer, args.embedding_lr, args.lr)
    check_run_folder(args.out, args.overwrite or args.resume)  # before the data is read
    if sharding is not None and not under_torchrun:
        sharding.check_device("cuda" if torch.cuda.is_available() else "cpu")  # before any process starts
        return _launch(args)
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
        swap=os.environ.get(SWAP_BY_LAUNCHER) != "1",
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


def _launch(args: argparse.Namespace) -> int:
    """Start the --nproc processes on this machine; swap the run folder in when all succeeded."""
    prepare_run_folder(args.out, args.resume)
    os.environ[SWAP_BY_LAUNCHER] = "1"  # the processes leave the swap to this one
    try:
        code = launch(args.nproc, args.argv)
    finally:
        del os.environ[SWAP_BY_LAUNCHER]
    if code == 0:
        swap_in(partial_folder(args.out), args.out)
    return code if code in (0, 2) else 1


def main(argv: list[str] | None = None) -> int:
    return run_command(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
