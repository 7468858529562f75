"""`cmrec train --nproc 2` end to end: learning, gathered metrics, conversion, resume, MLflow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from cmrec import cli
from cmrec.data.batch import make_loader
from cmrec.data.dataset import SplitConfig, build_from_events
from cmrec.data.events import read_events
from cmrec.eval.metrics import ctr_metrics
from cmrec.tracking import runs_table
from cmrec.train.checkpoint import load_checkpoint
from cmrec.train.loop import predict

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

CONFIG = """
item_dim: 16
memory_dim: 16
model_dim: 16
slots: 4
segment_len: 10
subspaces: 2
encoder_layers: 1
decoder_layers: 1
heads: 2
ffn_dim: 32
sampled_items: 30
"""
MAX_LEN = 60
TARGETS = 8


def _train(root: Path, out: str, *extra: str) -> int:
    # cm-recall: the recall losses' gradients cross the processes too.
    argv = ["train", "--model", "cm-recall", "--events", str(root / "data" / "events.parquet")]
    argv += ["--max-len", str(MAX_LEN), "--train-targets-per-user", str(TARGETS), "--batch-size", "64"]
    argv += ["--lr", "1e-2", "--embedding-lr", "0.05", "--patience", "3", "--config", str(root / "cm.yaml")]
    return cli.main([*argv, "--out", str(root / out), *extra])


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Data, and a 2-process, 2-epoch run of tiny CM logged to a throw-away MLflow store."""
    root = tmp_path_factory.mktemp("distributed")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        patch.chdir(root)
        argv = ["generate", "--users", "300", "--length", "60", "--items", "300", "--categories", "12"]
        assert cli.main([*argv, "--seed", "1", "--out", str(root / "data")]) == 0
        (root / "cm.yaml").write_text(CONFIG)
        assert _train(root, "run", "--epochs", "2", "--nproc", "2", "--experiment", "dist") == 0
        yield root


def test_two_process_cm_learns_and_its_metrics_come_from_all_gathered_predictions(root: Path) -> None:
    run = root / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["auc"] > 0.6, metrics["test"]
    assert metrics["distributed"]["processes"] == 2 and metrics["distributed"]["backend"] == "gloo"
    assert (
        len(metrics["epochs"]) == 2
        and metrics["epochs"][1]["train"]["item"] < metrics["epochs"][0]["train"]["item"]
    )
    predictions = pd.read_parquet(run / "test_predictions.parquet")
    data = build_from_events(read_events(root / "data" / "events.parquet"), _split())
    assert len(predictions) == len(data.test) == 600  # every test sample once, in row order
    np.testing.assert_array_equal(predictions["label"].to_numpy(), data.test.label)
    recomputed = ctr_metrics(
        predictions["label"].to_numpy(), predictions["probability"].to_numpy(), predictions["user"].to_numpy()
    )
    assert recomputed == pytest.approx(metrics["test"], abs=1e-12)


def test_converted_checkpoint_scores_like_the_sharded_model(root: Path) -> None:
    model, vocabs, payload = load_checkpoint(root / "run" / "checkpoint.pt")
    assert payload["extra"]["epoch"] == json.loads((root / "run" / "metrics.json").read_text())["best_epoch"]
    data = build_from_events(read_events(root / "data" / "events.parquet"), _split(), vocabs)
    single = predict(model, make_loader(data.histories, data.test, 64, MAX_LEN))
    sharded = pd.read_parquet(root / "run" / "test_predictions.parquet")
    torch.testing.assert_close(
        torch.from_numpy(single.scores), torch.tensor(sharded["probability"].to_numpy()), rtol=0, atol=1e-6
    )


def test_resume_continues_exactly_where_the_interrupted_run_stopped(root: Path) -> None:
    assert _train(root, "cut", "--epochs", "1", "--nproc", "2", "--no-mlflow") == 0
    assert _train(root, "cut", "--epochs", "2", "--nproc", "2", "--no-mlflow", "--resume") == 0
    whole = json.loads((root / "run" / "metrics.json").read_text())
    resumed = json.loads((root / "cut" / "metrics.json").read_text())
    assert _flat(resumed["epochs"]) == pytest.approx(_flat(whole["epochs"]), rel=1e-6)
    assert resumed["test"] == pytest.approx(whole["test"], rel=1e-6)
    # The last epoch converts to a plain run folder that evaluate reads, and it scores exactly as
    # the uninterrupted run's last epoch does.
    events = str(root / "data" / "events.parquet")
    aucs = []
    for run, out in (("cut", "last"), ("run", "whole-last")):
        argv = ["convert", "--run", str(root / run), "--checkpoint", "last", "--out", str(root / out)]
        assert cli.main(argv) == 0
        argv = ["evaluate", "--run", str(root / out), "--events", events, "--max-len", str(MAX_LEN)]
        assert cli.main(argv) == 0
        aucs.append(json.loads((root / out / "evaluation-events.parquet.json").read_text())["test"]["auc"])
    assert aucs[0] == pytest.approx(aucs[1], abs=1e-6)
    if whole["best_epoch"] == len(whole["epochs"]) - 1:  # the best epoch is the last
        assert aucs[0] == pytest.approx(whole["test"]["auc"], abs=1e-6)


def test_only_rank_zero_logs_to_mlflow(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    runs = runs_table("dist")
    assert len(runs) == 1
    row = runs.iloc[0]
    assert row["params.processes"] == "2" and row["params.plan.item"].startswith(("table_wise", "row_wise"))
    assert row["metrics.test_auc"] == pytest.approx(
        json.loads((root / "run" / "metrics.json").read_text())["test"]["auc"]
    )


def test_bad_distributed_requests_fail_clearly(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _train(root, "run", "--epochs", "1", "--resume") == 2
    assert "--resume continues a multi-process run" in capsys.readouterr().err
    assert _train(root, "fresh", "--epochs", "1", "--resume", "--nproc", "2") == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert _train(root, "fresh", "--epochs", "1", "--nproc", "0") == 2
    assert _train(root, "fresh", "--epochs", "1", "--nproc", "2", "--embedding-optimizer", "adam") == 2
    assert "runs on GPU only" in capsys.readouterr().err
    assert cli.main(["convert", "--run", str(root / "data")]) == 2
    assert "no distributed checkpoint folder" in capsys.readouterr().err
    assert cli.main(["convert", "--run", str(root / "run")]) == 2  # checkpoint.pt exists
    assert "--overwrite" in capsys.readouterr().err


def _flat(epochs: list[dict[str, Any]]) -> dict[str, float]:
    return {
        f"{row['epoch']}/{part}/{k}": v
        for row in epochs
        for part in ("train", "valid")
        for k, v in row[part].items()
    }


def _split() -> SplitConfig:
    return SplitConfig(max_len=MAX_LEN, train_targets_per_user=TARGETS, seed=0)
