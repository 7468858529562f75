"""Experiment tracking with MLflow: the only module that imports mlflow.

The tracking store is MLflow's default, ``sqlite:///mlflow.db`` in the working directory, unless
``MLFLOW_TRACKING_URI`` says otherwise; telemetry is disabled (this machine has no network).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow
import pandas as pd

from cmrec.errors import CmrecError

DEFAULT_URI = "sqlite:///mlflow.db"
OWNER_HOST, OWNER_PID = "cmrec.host", "cmrec.pid"  # who started a run, to end it if it was killed
DEFAULT_EXPERIMENT = "cmrec"
# Logged with the model so that `mlflow.pytorch.log_model` never resolves requirements itself.
MODEL_REQUIREMENTS = ["torch==2.13.0", "torchrec==1.8.0", "fbgemm-gpu-cpu==1.8.0", "cmrec"]
LOADER_MODULE = "cmrec.mlflow_model"  # the logged model's code: installed cmrec, never the artifact


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` tracking URI (relative to the working folder, or
    absolute with four slashes); None for any other kind of store or an in-memory database."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri[len(prefix) :] in ("", ":memory:"):
        return None
    return Path(uri[len(prefix) :].split("?", 1)[0])


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
        uri = tracking_uri()
        owner = {OWNER_HOST: socket.gethostname(), OWNER_PID: str(os.getpid())}
        try:
            mlflow.set_tracking_uri(uri)
            found = mlflow.set_experiment(experiment)
            self.killed = _end_orphans(found.experiment_id)
            self._run = mlflow.start_run(run_name=run_name, tags={**dict(tags or {}), **owner})
        except Exception as exc:  # sqlalchemy, OS and MLflow errors all mean the same to a user
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CmrecError(
                f"MLflow store {uri}: cannot start a run ({type(exc).__name__}: {first[:300]}); set "
                "MLFLOW_TRACKING_URI to a store you can write, or pass --no-mlflow"
            ) from exc
        self.run_id: str = self._run.info.run_id
        self.experiment = experiment
        self.uri = uri

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

    def log_model(self, checkpoint: Path) -> None:
        """Log the run's model: its weights-only `checkpoint` loaded by `cmrec.mlflow_model` (an
        `mlflow.pyfunc` model with no pickle in it; see that module)."""
        import mlflow.pyfunc

        if not checkpoint.is_file():
            raise CmrecError(f"{checkpoint}: no checkpoint to log with the MLflow run")
        mlflow.pyfunc.log_model(
            name="model",
            loader_module=LOADER_MODULE,
            data_path=str(checkpoint),
            pip_requirements=MODEL_REQUIREMENTS,
        )


def load_logged_model(model_uri: str) -> Any:
    """The `cmrec.mlflow_model.LoggedModel` that `cmrec train` logged at `model_uri` (e.g.
    ``runs:/RUN_ID/model``), loaded only if the artifact is one cmrec wrote: its MLmodel file names
    no flavor but `python_function` with cmrec's loader, so loading runs no code from the artifact
    (`mlflow.pyfunc.load_model` would import whatever loader an edited MLmodel file names)."""
    import yaml
    from mlflow.artifacts import download_artifacts

    from cmrec import mlflow_model

    mlflow.set_tracking_uri(tracking_uri())
    try:
        local = Path(download_artifacts(artifact_uri=model_uri))
        meta = yaml.safe_load((local / "MLmodel").read_text())
    except Exception as exc:  # MLflow, OS and YAML errors all mean the same to a user
        raise CmrecError(f"{model_uri}: cannot read the logged model ({type(exc).__name__}: {exc})") from exc
    flavors = meta.get("flavors") if isinstance(meta, dict) else None
    pyfunc = flavors.get("python_function") if isinstance(flavors, dict) else None
    if (
        not isinstance(flavors, dict)
        or set(flavors) != {"python_function"}
        or not isinstance(pyfunc, dict)
        or pyfunc.get("loader_module") != LOADER_MODULE
        or pyfunc.get("code")
    ):
        raise CmrecError(
            f"{model_uri}: not a model cmrec logged (its MLmodel file names other flavors or another "
            f"loader than {LOADER_MODULE}); not loaded"
        )
    data = (local / str(pyfunc.get("data", ""))).resolve()
    if not data.is_relative_to(local.resolve()):
        raise CmrecError(f"{model_uri}: the model's data path leaves the artifact; not loaded")
    return mlflow_model._load_pyfunc(str(data))


def _end_orphans(experiment_id: str) -> list[str]:
    """Mark KILLED the RUNNING runs this machine started from processes that no longer exist (a
    `cmrec train` killed with SIGKILL cannot end its own run); returns their ids."""
    client = mlflow.MlflowClient()
    host = socket.gethostname()
    running = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'")
    killed = []
    for run in running:
        tags = run.data.tags
        if tags.get(OWNER_HOST) != host or not tags.get(OWNER_PID, "").isdigit():
            continue
        try:
            os.kill(int(tags[OWNER_PID]), 0)
        except ProcessLookupError:
            client.set_terminated(run.info.run_id, status="KILLED")
            killed.append(run.info.run_id)
        except PermissionError:
            pass  # alive, another user's process
    return killed


def runs_table(experiment: str = DEFAULT_EXPERIMENT) -> pd.DataFrame:
    """All finished runs of an experiment: one row per run, params and metrics as columns.

    Reading creates nothing: a SQLite store that does not exist yet is refused before MLflow would
    create an empty database there."""
    uri = tracking_uri()
    database = sqlite_file(uri)
    if database is not None and not database.is_file():
        raise CmrecError(
            f"{uri}: no MLflow store there ({database} does not exist); run `cmrec train` first, or set "
            "MLFLOW_TRACKING_URI to the store it logged to"
        )
    mlflow.set_tracking_uri(uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        return pd.DataFrame()
    runs = mlflow.search_runs(
        experiment_ids=[found.experiment_id], filter_string="attributes.status = 'FINISHED'"
    )
    assert isinstance(runs, pd.DataFrame)
    return runs
