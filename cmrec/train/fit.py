"""`fit`: one training run, from a registered model name and data to a finished run folder.

    from cmrec.train import TrainSettings, fit
    result = fit("cm", data, Path("runs/cm"), TrainSettings(epochs=3))
    result.summary["test"]["auc"]

The run folder (built beside `out`, swapped in whole): checkpoint.pt (best validation epoch),
metrics.json (`TrainResult.summary`), test_predictions.parquet and the plots. Early stopping on
validation AUC; deterministic for a seed on CPU. `sharding` runs the same loop as one of several
torchrun processes (`ShardedRunner`).
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmrec.atomic import partial_folder, swap_in
from cmrec.data.dataset import ClickLogData
from cmrec.errors import CmrecError
from cmrec.models.registry import DataSpec, build_model, model_config
from cmrec.progress import set_progress
from cmrec.tracking import RunTracker
from cmrec.train.distributed.checkpoints import DISTRIBUTED_DIR
from cmrec.train.distributed.cluster import torchrun_world
from cmrec.train.distributed.runner import ShardedRunner
from cmrec.train.distributed.sharding import ShardingOptions
from cmrec.train.evaluation import score_split
from cmrec.train.loop import EpochResult
from cmrec.train.report import log_run, run_summary, write_run_files
from cmrec.train.run_folder import check_run_folder, prepare_run_folder
from cmrec.train.runner import LocalRunner, Runner, RunSpec
from cmrec.train.settings import TrainSettings


@dataclass
class TrainState:
    """The epoch loop's state; a sharded run saves it every epoch and `resume` continues from it."""

    next_epoch: int = 0
    epochs: list[dict[str, Any]] = field(default_factory=list)  # {"epoch", "train", "valid"} rows
    best_auc: float = -1.0
    best_epoch: int = 0
    waited: int = 0  # epochs since the best
    train_seconds: float = 0.0
    samples_seen: int = 0
    targets_seen: int = 0
    params: dict[str, str] = field(default_factory=dict)  # what a resumed run must share

    def record(self, result: EpochResult, seconds: float, valid: dict[str, float]) -> bool:
        """Add one trained epoch; True when its validation AUC is the best so far."""
        epoch = self.next_epoch
        self.train_seconds += seconds
        self.samples_seen += result.samples
        self.targets_seen += result.targets
        self.epochs.append({"epoch": epoch, "train": result.losses, "valid": valid})
        self.next_epoch = epoch + 1
        if valid["auc"] > self.best_auc:
            self.best_auc, self.best_epoch, self.waited = valid["auc"], epoch, 0
            return True
        self.waited += 1
        return False

    def resumed(self, saved: Mapping[str, Any], where: Path) -> TrainState:
        """The saved state, after checking that this (fresh) run trains the same thing."""
        before = saved.get("params", {})
        changed = sorted(
            key
            for key in set(before) | set(self.params)
            if key not in ("epochs", "label") and before.get(key) != self.params.get(key)
        )
        if changed:
            raise CmrecError(
                f"{where}: saved by a run with other settings ("
                + ", ".join(f"{k}: {before.get(k)} -> {self.params.get(k)}" for k in changed)
                + "); resume with the same settings (only --epochs may grow)"
            )
        known = {key: saved[key] for key in asdict(self) if key in saved and key != "params"}
        return TrainState(**known, params=self.params)


@dataclass(frozen=True)
class TrainResult:
    """A finished run: its folder and (on the main process; {} elsewhere) metrics.json's content."""

    run_dir: Path
    is_main: bool
    summary: dict[str, Any]


def fit(
    model: str,
    data: ClickLogData,
    out: Path,
    settings: TrainSettings | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    source: str = "data",
    label: str | None = None,
    experiment: str | None = "cmrec",
    sharding: ShardingOptions | None = None,
    replace: bool = False,
    resume: bool = False,
    swap: bool = True,
) -> TrainResult:
    """Train registered model `model` on `data` and write the run folder `out`.

    Args:
        model, overrides: the registered name and config values to change (`cmrec.models`).
        data: the splits (`cmrec.data.build_from_events`, `load_movielens_1m`, ...).
        out: the run folder; refused when it exists, unless `replace`.
        settings: epochs, patience, batch size, learning rate, seed (`TrainSettings()`).
        source, label: the data's and the run's names in MLflow and `cmrec compare`.
        experiment: the MLflow experiment to track the run in; None tracks nothing.
        sharding: run as one of the torchrun processes (TorchRec sharding, `ShardingOptions`);
            None: one process.
        resume: continue a sharded run from RUN/distributed/last.
        swap: put the finished folder in place (False: the process that launched the workers does).
    """
    settings = settings or TrainSettings()
    config = model_config(model, overrides)  # unknown keys and bad values fail before any work
    if resume and sharding is None:
        raise CmrecError("resume continues a multi-process run: give the sharding options as well")
    if (torchrun_world() or (0, 1))[0] == 0:  # the first process prepares the folder
        check_run_folder(out, replace or resume)
        prepare_run_folder(out, resume)
    work = partial_folder(out)  # every output is written here, then swapped in whole
    torch.manual_seed(settings.seed)
    built = build_model(model, DataSpec.from_vocabs(data.vocabs), overrides)
    spec = RunSpec(model, config, built, data, settings, work)
    try:
        runner: Runner = LocalRunner(spec) if sharding is None else ShardedRunner(spec, sharding)
        if sharding is not None:
            set_progress(runner.is_main)
        params = _run_params(spec, source, label, runner)
        summary = _tracked(spec, runner, params, experiment, resume)
    except BaseException:
        if sharding is None:  # a one-process run cannot be resumed: leave nothing behind
            shutil.rmtree(work, ignore_errors=True)
        raise
    if runner.is_main and swap:
        swap_in(work, out)
    return TrainResult(out, runner.is_main, summary)


def _run_params(spec: RunSpec, source: str, label: str | None, runner: Runner) -> dict[str, Any]:
    settings = spec.settings
    return {
        "model": spec.name,
        "label": label or spec.name,
        "data": source,
        "seed": settings.seed,
        "lr": settings.lr,
        "batch_size": settings.batch_size,
        "max_len": spec.data.max_len,
        "epochs": settings.epochs,
        **{f"config.{k}": v for k, v in asdict(spec.config).items()},
        **runner.describe(),
    }


def _tracked(
    spec: RunSpec, runner: Runner, params: dict[str, Any], experiment: str | None, resume: bool
) -> dict[str, Any]:
    """Train, report and log with an MLflow run open on the main process; close both at the end."""
    tracker = None
    if runner.is_main and experiment is not None:
        tracker = RunTracker(experiment, f"{spec.name}-seed{spec.settings.seed}", {"model": spec.name})
    try:
        if tracker is not None:
            tracker.log_params(params)
        state = TrainState(
            params={k: str(v) for k, v in params.items() if not k.startswith(("plan.", "processes"))}
        )
        if resume:
            state = state.resumed(runner.resume(), spec.out / DISTRIBUTED_DIR / "last")
            if tracker is not None:
                for row in state.epochs:
                    tracker.log_metrics(epoch_metrics(row), step=row["epoch"])
        _train_epochs(spec, runner, state, tracker)
        summary = _test(spec, runner, state, params, tracker)
        runner.finish()
        return summary
    finally:
        if tracker is not None:
            tracker.__exit__(*sys.exc_info())
        runner.close()


def _train_epochs(spec: RunSpec, runner: Runner, state: TrainState, tracker: RunTracker | None) -> None:
    """Epochs until `settings.epochs` or `patience` epochs without a better validation AUC."""
    settings = spec.settings
    # A resumed run that had already stopped early trains no further epoch.
    last = settings.epochs if state.waited < settings.patience else state.next_epoch
    for epoch in range(state.next_epoch, last):
        started = time.perf_counter()
        result = runner.train_epoch(epoch)
        seconds = time.perf_counter() - started
        valid = score_split(spec.data, "valid", runner.predict("valid")).metrics
        improved = state.record(result, seconds, valid)
        if tracker is not None:
            tracker.log_metrics(epoch_metrics(state.epochs[-1]), step=epoch)
        if runner.is_main:
            print(
                f"epoch {epoch}: "
                + ", ".join(f"{k} {v:.4f}" for k, v in result.losses.items())
                + f"; valid AUC {valid['auc']:.4f}",
                file=sys.stderr,
            )
        if improved:
            runner.keep_best({"max_len": spec.data.max_len, "epoch": epoch, "params": state.params})
        runner.end_epoch(asdict(state))
        if state.waited >= settings.patience:
            break
    if not state.epochs:
        raise CmrecError("no epoch was trained")


def _test(
    spec: RunSpec, runner: Runner, state: TrainState, params: dict[str, Any], tracker: RunTracker | None
) -> dict[str, Any]:
    """The best epoch's test evaluation, written to the run folder and logged ({} off the main)."""
    runner.restore_best()
    predictions = runner.predict("test")  # every rank takes part; only the main process reports
    if not runner.is_main:
        return {}
    test = score_split(spec.data, "test", predictions)
    data = spec.data
    training_users = len(np.unique(data.histories.users[data.train.sequence]))
    summary = {**run_summary(spec, asdict(state), params, test, training_users), **runner.report()}
    if tracker is not None:  # where the run's MLflow copy lives
        summary["mlflow"] = {"uri": tracker.uri, "experiment": tracker.experiment, "run_id": tracker.run_id}
    write_run_files(spec.out, spec.name, summary, test)
    if tracker is not None:
        log_run(tracker, summary, spec.out)
    return summary


def epoch_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """An epoch row's losses and validation metrics, as MLflow metric names."""
    return {
        **{f"train_{k}": v for k, v in row["train"].items()},
        **{f"valid_{k}": v for k, v in row["valid"].items()},
    }
