"""bench/logit_parts.py: the test AUC of a trained cm run with one logit addend held at zero."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cmrec import cli
from tests.bench_scripts import bench_script
from tests.tiny import TINY_YAML, tiny_data_args

pytestmark = pytest.mark.usefixtures("mlflow_store")  # tests/conftest.py


def test_logit_parts_hold_each_addend_and_restore_the_model(tmp_path: Path) -> None:
    config = tmp_path / "cm.yaml"
    config.write_text(TINY_YAML)
    data = tiny_data_args(users=60, batch_size=32)
    run = tmp_path / "run"
    argv = ["train", "--model", "cm", *data, "--epochs", "1", "--seed", "0", "--no-mlflow"]
    assert cli.main([*argv, "--config", str(config), "--out", str(run)]) == 0
    trained = json.loads((run / "metrics.json").read_text())["test"]["auc"]
    parts = bench_script("logit_parts")
    out = tmp_path / "parts.json"
    data_args = [a for a in data if a not in ("--batch-size", "32")]
    rows = parts.main(["--run", str(run), *data_args, "--seed", "0", "--out", str(out)])
    # The `cm` preset's addends: the slots, the recurrent row (beside the mean) and the mean.
    assert set(rows) == {
        "all parts",
        *(f"{how} {part}" for how in ("without", "only") for part in ("slots", "recurrent", "mean")),
    }
    assert rows["all parts"] == pytest.approx(trained, abs=1e-9)  # the run's own test AUC
    assert json.loads(out.read_text())["test_auc"] == rows
    assert len({round(v, 6) for v in rows.values()}) > 2  # holding a part changes the ranking
    # The model is restored after each setting: the same figure again at the end.
    again = parts.main(["--run", str(run), *data_args, "--seed", "0"])
    assert again["all parts"] == rows["all parts"]
