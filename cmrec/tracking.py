"""Experiment tracking with MLflow: the only module that imports mlflow.

The tracking store is MLflow's default, ``sqlite:///mlflow.db`` in the working directory, unless
``MLFLOW_TRACKING_URI`` says otherwise; telemetry is disabled (this machine has no network).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow
import pandas as pd
from torch import nn

DEFAULT_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "cmrec"
# Logged with the model so that `mlflow.pytorch.log_model` never resolves requirements itself.
MODEL_REQUIREMENTS = ["torch==2.13.0", "torchrec==1.8.0", "fbgemm-gpu-cpu==1.8.0", "cmrec"]


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)


class RunTracker:
    """One MLflow run: params, per-epoch metrics, artifacts and the model.

    Example::

        with RunTracker("cmrec", run_name="cm-seed0", tags={"model": "cm"}) as tracker:
            tracker.log_params({"lr": 1e-3})
            tracker.log_metrics({"valid_auc": 0.71}, step=0)
    """

    def __init__(
        self,
        experiment: str = DEFAULT_EXPERIMENT,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        mlflow.set_tracking_uri(tracking_uri())
        mlflow.set_experiment(experiment)
        self._run = mlflow.start_run(run_name=run_name, tags=dict(tags or {}))
        self.run_id: str = self._run.info.run_id

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        mlflow.end_run(status="FINISHED" if exc_type is None else "FAILED")

    def log_params(self, params: Mapping[str, Any]) -> None:
        mlflow.log_params({key: str(value)[:500] for key, value in params.items()})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        mlflow.log_metrics({key: float(value) for key, value in metrics.items()}, step=step)

    def log_artifact(self, path: Path) -> None:
        mlflow.log_artifact(str(path))

    def log_model(self, model: nn.Module) -> None:
        import mlflow.pytorch

        mlflow.pytorch.log_model(
            model, name="model", pip_requirements=MODEL_REQUIREMENTS, serialization_format="pickle"
        )


def runs_table(experiment: str = DEFAULT_EXPERIMENT) -> pd.DataFrame:
    """All finished runs of an experiment: one row per run, params and metrics as columns."""
    mlflow.set_tracking_uri(tracking_uri())
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        return pd.DataFrame()
    runs = mlflow.search_runs(
        experiment_ids=[found.experiment_id], filter_string="attributes.status = 'FINISHED'"
    )
    assert isinstance(runs, pd.DataFrame)
    return runs
