"""`cmrec train`, `evaluate` and `compare` end to end on tiny data, with a throw-away MLflow store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from cmrec import cli
from cmrec.data import SplitConfig, build_from_events, read_events
from cmrec.train import evaluate_split
from cmrec.train.checkpoint import load_checkpoint
from tests.tiny import TINY, TINY_YAML, tiny_data_args

TINY_DATA = tiny_data_args(users=60, batch_size=32)
CM_CONFIG = TINY_YAML


def _generate(out: Path, users: int) -> None:
    argv = ["generate", "--users", str(users), "--length", "24", "--items", "300", "--categories", "12"]
    assert cli.main([*argv, "--out", str(out)]) == 0


pytestmark = pytest.mark.usefixtures("mlflow_store")  # tests/conftest.py


def test_train_writes_a_run_folder_evaluate_and_compare_read_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "cm.yaml"
    config.write_text(CM_CONFIG)
    for seed in (0, 1):
        argv = ["train", "--model", "cm", *TINY_DATA, "--epochs", "2", "--seed", str(seed)]
        assert cli.main([*argv, "--config", str(config), "--out", str(tmp_path / f"run{seed}")]) == 0
    assert "test AUC" in capsys.readouterr().out
    run = tmp_path / "run0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"] == "cm" and set(metrics["test"]) == {"auc", "gauc", "logloss"}
    predictions = pd.read_parquet(run / "test_predictions.parquet")
    assert metrics["test"]["auc"] == roc_auc_score(predictions["label"], predictions["probability"])
    assert [row["epoch"] for row in metrics["epochs"]] == [0, 1]
    assert set(metrics["epochs"][0]["train"]) == {"reason", "mean", "total"}  # `cm` has no recall losses
    # K slots, the recurrent row, the history-mean and profile rows, the 256-entry category sketch
    # and the item sketch's 2 x 1,024 entries.
    # Then the pending clicks' mean and profile sums and the recurrent row after them (3 + 1 rows).
    assert metrics["memory_bytes_per_user"] == (3 + 1 + 2 + 2 + (256 + 2 * 1024) // 8 + 3 + 1) * 8 * 4
    for plot in ("losses.png", "roc.png", "forgetting.png"):
        assert (run / plot).stat().st_size > 1000
    payload = torch.load(run / "checkpoint.pt", weights_only=True)
    assert payload["model"] == "cm" and payload["config"]["slots"] == 3

    _generate(tmp_path / "other", users=20)
    events = tmp_path / "other" / "events.parquet"
    assert cli.main(["evaluate", "--run", str(run), "--events", str(events), "--max-len", "24"]) == 0
    evaluation = json.loads((run / "evaluation-events.parquet.json").read_text())
    assert evaluation["samples"] == 40
    model, vocabs, _ = load_checkpoint(run / "checkpoint.pt")  # the library call evaluate makes
    data = build_from_events(read_events(events), SplitConfig(max_len=24), vocabs)
    assert evaluation["test"] == evaluate_split(model, data, "test").metrics

    capsys.readouterr()
    assert cli.main(["compare", "--format", "csv"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("model,data,runs,auc,gauc,logloss,samples/s,targets/user,s/epoch,bytes/user")
    assert table[1].startswith("cm,xlong-synthetic-60x24,2,") and "±" in table[1]
    # The floors of the data set, computed on the same test targets, as rows below its models.
    floors = [json.loads((tmp_path / f"run{seed}" / "metrics.json").read_text())["floors"] for seed in (0, 1)]
    assert set(floors[0]) == {"recent_auc", "whole_auc", "popularity_auc"}
    names = ["floor: category in last 50", "floor: category in whole history", "floor: item popularity"]
    for row, name, key in zip(table[2:5], names, ["recent_auc", "whole_auc", "popularity_auc"], strict=True):
        cells = row.split(",")
        assert cells[:3] == [name, "xlong-synthetic-60x24", "2"]  # one value per seed (its negatives)
        mean, spread = (floors[0][key] + floors[1][key]) / 2, abs(floors[0][key] - floors[1][key]) / 2**0.5
        assert cells[3] == f"{mean:.4f} ± {spread:.4f}"
        assert cells[4:] == [""] * 11
    # Dense supervision: the cm preset labels clicks inside each 24-click history (segments of 4:
    # from the 5 segments after the first, every click up to dense_per_segment = 5 of 4), besides
    # the two training targets.
    assert metrics["train_targets_per_user"] > 2.0
    assert metrics["train_seconds_per_epoch"] > 0


@pytest.mark.parametrize("model", ["cm", "dien", "gru4rec", "avg-pool"])
def test_same_seed_same_result(tmp_path: Path, model: str) -> None:
    """Two runs of one seed agree on every loss, metric and prediction (the README's claim)."""
    config = tmp_path / "config.yaml"
    config.write_text(CM_CONFIG if model == "cm" else "item_dim: 8\n")
    runs = []
    for name in ("a", "b"):
        argv = [
            "train",
            "--model",
            model,
            *TINY_DATA,
            "--epochs",
            "2",
            "--no-mlflow",
            "--config",
            str(config),
        ]
        assert cli.main([*argv, "--out", str(tmp_path / name)]) == 0
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        predictions = pd.read_parquet(tmp_path / name / "test_predictions.parquet")
        runs.append((metrics["test"], [row["train"] for row in metrics["epochs"]], predictions))
    (test_a, losses_a, predictions_a), (test_b, losses_b, predictions_b) = runs
    assert test_a == test_b and losses_a == losses_b and len(losses_a) == 2
    pd.testing.assert_frame_equal(predictions_a, predictions_b, check_exact=True)


def test_dien_trains_with_pipeline_negatives(tmp_path: Path) -> None:
    argv = [
        "train",
        "--model",
        "dien",
        *TINY_DATA,
        "--epochs",
        "1",
        "--no-mlflow",
        "--out",
        str(tmp_path / "d"),
    ]
    assert cli.main(argv) == 0
    metrics = json.loads((tmp_path / "d" / "metrics.json").read_text())
    assert {"ctr", "aux"} <= set(metrics["epochs"][0]["train"])


def test_bad_inputs_fail_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("slot: 3\n")
    argv = ["train", "--model", "cm", *TINY_DATA, "--no-mlflow", "--out", str(tmp_path / "r")]
    assert cli.main([*argv, "--config", str(bad)]) == 2
    assert "unknown config key(s) for 'cm': slot" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert cli.main(["train", "--model", "cm", "--no-mlflow", "--out", str(tmp_path / "r")]) == 2
    assert "exactly one data source" in capsys.readouterr().err
    assert cli.main(["evaluate", "--run", str(tmp_path / "nothing"), "--events", "x.parquet"]) == 2
    assert "no such run folder" in capsys.readouterr().err
    assert cli.main(["compare", "--experiment", "empty"]) == 2  # no store yet: reading creates none
    assert "no MLflow store there" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])  # this test's store (conftest.py)
    mlflow.set_experiment("other")  # the store exists now, without a run of "empty"
    assert cli.main(["compare", "--experiment", "empty"]) == 2
    assert "no finished runs in experiment 'empty'" in capsys.readouterr().err


def test_mlflow_run_and_evaluate_reproduce_train(tmp_path: Path, mlflow_store: str) -> None:

    _generate(tmp_path / "data", users=60)
    events = tmp_path / "data" / "events.parquet"
    run = tmp_path / "run"
    argv = ["train", "--model", "gru4rec", "--events", str(events), "--max-len", "24", "--epochs", "1"]
    assert cli.main([*argv, "--experiment", "t", "--out", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    trained = metrics["test"]

    assert cli.main(["evaluate", "--run", str(run), "--events", str(events), "--max-len", "24"]) == 0
    evaluated = json.loads((run / "evaluation-events.parquet.json").read_text())["test"]
    assert evaluated == pytest.approx(trained, abs=1e-9)

    mlflow.set_tracking_uri(mlflow_store)
    experiment = mlflow.get_experiment_by_name("t")
    assert experiment is not None
    runs = mlflow.search_runs(experiment_ids=[experiment.experiment_id], output_format="list")
    assert len(runs) == 1
    logged = runs[0]
    assert metrics["mlflow"] == {"uri": mlflow_store, "experiment": "t", "run_id": logged.info.run_id}
    assert logged.data.params["model"] == "gru4rec" and logged.data.params["config.hidden"] == "64"
    assert logged.data.metrics["test_auc"] == pytest.approx(trained["auc"])
    assert "train_ctr" in logged.data.metrics and "valid_auc" in logged.data.metrics
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(logged.info.run_id)}
    assert {"metrics.json", "losses.png", "roc.png", "forgetting.png"} <= artifacts


def test_checkpoint_round_trip_gives_identical_logits(tmp_path: Path) -> None:
    from cmrec.data import SplitConfig, build_from_events, make_loader, validate_events
    from cmrec.data.synthetic import SyntheticConfig, generate
    from cmrec.models import DataSpec, build_model, model_config
    from cmrec.train.checkpoint import load_checkpoint, save_checkpoint

    log = generate(SyntheticConfig(users=20, length=24, items=200, categories=8))
    data = build_from_events(validate_events(log.events()), SplitConfig(max_len=24))
    overrides = TINY
    model = build_model("cm", DataSpec.from_vocabs(data.vocabs), overrides).eval()
    save_checkpoint(tmp_path / "c.pt", "cm", model_config("cm", overrides), model, data.vocabs, {})
    loaded, vocabs, payload = load_checkpoint(tmp_path / "c.pt")
    batch = next(iter(make_loader(data.histories, data.test, 16, 24)))
    torch.testing.assert_close(loaded(batch).logits, model(batch).logits, rtol=0, atol=0)
    assert vocabs.items == data.vocabs.items and payload["model"] == "cm"


def test_missing_data_file_writes_no_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "never"
    argv = ["train", "--model", "avg-pool", "--events", str(tmp_path / "missing.parquet"), "--out", str(out)]
    assert cli.main(argv) == 2
    assert "missing.parquet: no such file" in capsys.readouterr().err
    assert not out.exists()
