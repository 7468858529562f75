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
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from cmrec.atomic import check_output_folder, partial_folder, swap_in, write_file, write_json
from cmrec.data.batch import DenseSupervision, HistoryNegatives
from cmrec.data.dataset import ClickLogData
from cmrec.data.samples import NegativeSampler
from cmrec.errors import CmrecError
from cmrec.eval.forgetting import bucket_aucs, evidence_buckets
from cmrec.eval.heuristics import heuristic_floors
from cmrec.eval.metrics import ctr_metrics
from cmrec.eval.plots import plot_forgetting, plot_losses, plot_roc
from cmrec.models.registry import DataSpec, build_model, model_config, model_names
from cmrec.progress import set_progress
from cmrec.tracking import RunTracker, tracking_uri
from cmrec.train.distributed import (
    EMBEDDING_OPTIMIZERS,
    SHARDING_TYPES,
    ShardingOptions,
    complete_checkpoint,
    launch,
)
from cmrec.train.loop import Predictions
from pipelines._common import RUN_MARKERS, torchrun_world
from pipelines._data import add_data_arguments, load_data
from pipelines._trainers import DISTRIBUTED_DIR, DistributedTrainer, LocalTrainer

PREDICTIONS = "test_predictions.parquet"
SWAP_BY_LAUNCHER = "CMREC_SWAP_BY_LAUNCHER"  # set for the processes `--nproc` starts

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
    if args.epochs < 1 or args.patience < 1:
        raise CmrecError(f"--epochs and --patience must be >= 1, got {args.epochs} and {args.patience}")
    if args.batch_size < 2 or args.batch_size % 2:
        raise CmrecError(
            "--batch-size must be an even number >= 2 (each user's target and its negative), got "
            f"{args.batch_size}"
        )
    for flag, value in (("--lr", args.lr), ("--embedding-lr", args.embedding_lr)):
        if not value > 0:  # also NaN
            raise CmrecError(f"{flag} must be a positive number, got {value}")
    overrides = read_overrides(args.config)
    config = model_config(args.model, overrides)  # unknown keys and bad values fail before any work
    world = torchrun_world()
    under_torchrun = world is not None
    if args.resume and args.nproc is None and not under_torchrun:
        raise CmrecError("--resume continues a multi-process run: give --nproc N as well")
    if args.nproc is not None and args.nproc < 1:
        raise CmrecError(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc is not None and not under_torchrun:
        options = ShardingOptions(args.sharding, args.embedding_optimizer, args.embedding_lr, args.lr)
        options.check_device("cuda" if torch.cuda.is_available() else "cpu")  # before any process starts
    final = args.out
    if world is None or world[0] == 0:  # the job's first process; repeating it is harmless
        check_output_folder(final, args.overwrite or args.resume, RUN_MARKERS, "cmrec run folder")
        _prepare_work_folder(final, args.resume)
    args.out = partial_folder(final)  # every output is written here, then swapped in whole
    if args.nproc is not None and not under_torchrun:
        os.environ[SWAP_BY_LAUNCHER] = "1"  # the processes leave the swap to this one
        try:
            code = launch(args.nproc, args.argv)
        finally:
            del os.environ[SWAP_BY_LAUNCHER]
        if code == 0:
            swap_in(args.out, final)
        return code if code in (0, 2) else 1
    try:
        return _train(args, config, overrides, final, under_torchrun)
    except BaseException:
        if not under_torchrun:  # a one-process run cannot be resumed: leave nothing behind
            shutil.rmtree(args.out, ignore_errors=True)
        raise


def _prepare_work_folder(final: Path, resume: bool) -> None:
    """The scratch run folder: empty for a new run; for --resume the interrupted one's, or a copy
    of the finished run at `final` (to train it further)."""
    work = partial_folder(final)
    if not resume:
        shutil.rmtree(work, ignore_errors=True)
        try:
            work.mkdir()
        except OSError as exc:
            raise CmrecError(f"{work}: cannot create the run's scratch folder ({exc.strerror})") from exc
        return
    if complete_checkpoint(work / DISTRIBUTED_DIR / "last") is not None:
        return  # an interrupted run: continue it where it stopped
    if complete_checkpoint(final / DISTRIBUTED_DIR / "last") is None:
        raise CmrecError(f"{final / DISTRIBUTED_DIR / 'last'}: nothing to resume")
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(final, work)


def _train(
    args: argparse.Namespace, config: Any, overrides: dict[str, Any], final: Path, under_torchrun: bool
) -> int:
    torch.manual_seed(args.seed)
    data, source = load_data(args)
    model = build_model(args.model, DataSpec.from_vocabs(data.vocabs), overrides)
    negatives = None
    if getattr(model, "needs_history_negatives", False):  # a capability the model declares
        negatives = HistoryNegatives(len(data.vocabs.items), data.vocabs.item_category, args.seed)
    dense = None
    request = getattr(model, "dense_targets", None)  # dense supervision, as the model's config asks
    if request is not None:
        sampler = NegativeSampler(len(data.vocabs.items))  # uniform, as the held-out targets' negatives
        dense = DenseSupervision(request, sampler, data.vocabs.item_category, args.seed)
    trainer: LocalTrainer | DistributedTrainer
    if under_torchrun:
        trainer = DistributedTrainer(args, data, model, negatives, dense, args.model, config)
        set_progress(trainer.is_main)
    else:
        trainer = LocalTrainer(args, data, model, negatives, dense, args.model, config)
    params = {
        "model": args.model,
        "label": args.label or args.model,
        "data": source,
        "seed": args.seed,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "max_len": args.max_len,
        "epochs": args.epochs,
        **{f"config.{k}": v for k, v in asdict(config).items()},
    }
    if isinstance(trainer, DistributedTrainer):
        params.update(
            {
                "processes": trainer.cluster.world_size,
                "backend": trainer.cluster.backend,
                "sharding": args.sharding,
                "embedding_optimizer": args.embedding_optimizer,
                "embedding_lr": args.embedding_lr,
                **{f"plan.{table}": placed for table, placed in trainer.plan.items()},
            }
        )
    tracker = None
    if trainer.is_main and not args.no_mlflow:
        tracker = RunTracker(args.experiment, f"{args.model}-seed{args.seed}", {"model": args.model})
    try:
        summary = _fit(args, data, trainer, tracker, params)
        trainer.finish()
    finally:
        if tracker is not None:
            tracker.__exit__(*sys.exc_info())
        trainer.close()
    if trainer.is_main and os.environ.get(SWAP_BY_LAUNCHER) != "1":
        swap_in(args.out, final)
    if trainer.is_main:
        test = summary["test"]
        print(
            f"{args.model} on {source} (seed {args.seed}): test AUC {test['auc']:.4f}, "
            f"GAUC {test['gauc']:.4f}, logloss {test['logloss']:.4f}; best epoch {summary['best_epoch']}; "
            f"{summary['train_samples_per_second']:.1f} training samples/s; run folder {final}"
            + ("" if args.no_mlflow else f"; MLflow store {tracking_uri()}")
        )
    return 0


def _fit(
    args: argparse.Namespace,
    data: ClickLogData,
    trainer: LocalTrainer | DistributedTrainer,
    tracker: RunTracker | None,
    params: dict[str, Any],
) -> dict[str, Any]:
    main = trainer.is_main
    if tracker is not None:
        tracker.log_params(params)
    loop: dict[str, Any] = {
        "next_epoch": 0,
        "epochs": [],
        "best_auc": -1.0,
        "best_epoch": 0,
        "waited": 0,
        "train_seconds": 0.0,
        "samples_seen": 0,
        "targets_seen": 0,
        "params": {k: str(v) for k, v in params.items() if not k.startswith(("plan.", "processes"))},
    }
    if args.resume:
        assert isinstance(trainer, DistributedTrainer)
        loop = _resumed(trainer.resume(), loop, args)
        if tracker is not None:
            for row in loop["epochs"]:
                tracker.log_metrics(_epoch_metrics(row), step=row["epoch"])
    # A resumed run that had already stopped early trains no further epoch.
    last = args.epochs if loop["waited"] < args.patience else loop["next_epoch"]
    for epoch in range(loop["next_epoch"], last):
        started = time.perf_counter()
        result = trainer.train_epoch(epoch)
        losses = result.losses
        loop["train_seconds"] += time.perf_counter() - started
        loop["samples_seen"] += result.samples
        loop["targets_seen"] += result.targets
        valid = _metrics(trainer.predict("valid"))
        row = {"epoch": epoch, "train": losses, "valid": valid}
        loop["epochs"].append(row)
        if tracker is not None:
            tracker.log_metrics(_epoch_metrics(row), step=epoch)
        if main:
            print(
                f"epoch {epoch}: "
                + ", ".join(f"{k} {v:.4f}" for k, v in losses.items())
                + f"; valid AUC {valid['auc']:.4f}",
                file=sys.stderr,
            )
        if valid["auc"] > loop["best_auc"]:
            loop.update(best_auc=valid["auc"], best_epoch=epoch, waited=0)
            trainer.keep_best(
                {"max_len": data.max_len, "epoch": epoch, "params": loop["params"]},
            )
        else:
            loop["waited"] += 1
        loop["next_epoch"] = epoch + 1
        trainer.end_epoch(loop)
        if loop["waited"] >= args.patience:
            break
    if not loop["epochs"]:
        raise CmrecError("no epoch was trained")
    trainer.restore_best()
    predictions = trainer.predict("test")  # every rank takes part; only rank 0 reports
    if not main:
        return {}
    test = _metrics(predictions)
    buckets = bucket_aucs(
        evidence_buckets(data.histories, data.test, data.max_len),
        predictions.labels,
        predictions.scores,
    )
    epochs = loop["epochs"]
    best_epoch = loop["best_epoch"]
    seconds = max(loop["train_seconds"], 1e-9)
    training_users = len(np.unique(data.histories.users[data.train.sequence]))
    summary = {
        "model": args.model,
        "data": params["data"],
        "seed": args.seed,
        "best_epoch": best_epoch,
        "test": test,
        "valid": next(row["valid"] for row in epochs if row["epoch"] == best_epoch),
        "forgetting": buckets,
        "train_samples_per_second": loop["samples_seen"] / seconds,
        # Labelled pairs (a positive and its negative) per training user and epoch: 1 for XLong's
        # one target, hundreds with dense supervision.
        "train_targets_per_user": loop["targets_seen"] / 2 / len(epochs) / max(training_users, 1),
        "train_targets_per_second": loop["targets_seen"] / seconds,
        "train_seconds_per_epoch": loop["train_seconds"] / len(epochs),
        "floors": heuristic_floors(data),
        "memory_bytes_per_user": _memory_bytes_per_user(trainer.config, data),
        "epochs": epochs,
    }
    if isinstance(trainer, DistributedTrainer):
        summary["distributed"] = {
            "processes": trainer.cluster.world_size,
            "backend": trainer.cluster.backend,
            "plan": trainer.plan,
            "embedding_optimizer": args.embedding_optimizer,
        }
    write_json(args.out / "metrics.json", summary)
    write_predictions(args.out / PREDICTIONS, predictions)
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
                name: summary[name]
                for name in (
                    "train_samples_per_second",
                    "train_targets_per_user",
                    "train_targets_per_second",
                    "train_seconds_per_epoch",
                    "memory_bytes_per_user",
                )
            }
        )
        tracker.log_metrics({f"floor_{name}": value for name, value in summary["floors"].items()})
        for name in ("metrics.json", "losses.png", "roc.png", "forgetting.png"):
            tracker.log_artifact(args.out / name)
        tracker.log_model(trainer.plain_model())
    return summary


def _resumed(saved: dict[str, Any], fresh: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The saved loop state, after checking that this run trains the same thing."""
    changed = sorted(
        key
        for key in set(saved.get("params", {})) | set(fresh["params"])
        if key not in ("epochs", "label") and saved.get("params", {}).get(key) != fresh["params"].get(key)
    )
    if changed:
        raise CmrecError(
            f"{args.out / DISTRIBUTED_DIR / 'last'}: saved by a run with other settings ("
            + ", ".join(f"{k}: {saved.get('params', {}).get(k)} -> {fresh['params'].get(k)}" for k in changed)
            + "); resume with the same settings (only --epochs may grow)"
        )
    loop = {key: saved.get(key, value) for key, value in fresh.items()}
    loop["params"] = fresh["params"]
    return loop


def _epoch_metrics(row: dict[str, Any]) -> dict[str, float]:
    return {
        **{f"train_{k}": v for k, v in row["train"].items()},
        **{f"valid_{k}": v for k, v in row["valid"].items()},
    }


def write_predictions(path: Path, predictions: Predictions) -> None:
    """Test predictions in sample-row order (label, probability, user index), for re-checking metrics."""
    frame = pd.DataFrame(
        {"label": predictions.labels, "probability": predictions.scores, "user": predictions.users}
    )
    write_file(path, lambda scratch: frame.to_parquet(scratch, index=False))


def _memory_bytes_per_user(config: Any, data: ClickLogData) -> int:
    """What serving stores per user: a memory of K x d_m float32, or the history's int32 ids."""
    if hasattr(config, "slots") and hasattr(config, "memory_dim"):
        return int(config.memory_rows * config.memory_dim * 4)
    ids_per_event = 1 if data.histories.categories is None else 2
    return int(data.max_len * ids_per_event * 4)


def _metrics(predictions: Predictions) -> dict[str, float]:
    return ctr_metrics(predictions.labels, predictions.scores, predictions.users)


def main(argv: list[str] | None = None) -> int:
    from cmrec.cli import run_pipeline

    return run_pipeline("train", argv)


if __name__ == "__main__":
    sys.exit(main())
