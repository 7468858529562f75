"""TorchRec sharding on 2 gloo processes: forward equality per sharding type, gathered predictions,
checkpoint resume, optimiser choice. One torchrun launch runs every scenario (worker.py)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

WORKER = Path(__file__).with_name("worker.py")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("sharding") / "results.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run(
        [*command, str(WORKER), str(out)], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    loaded: dict[str, Any] = json.loads(out.read_text())
    return loaded


@pytest.mark.parametrize("model", ["cm", "dien", "gru4rec", "avg-pool"])
@pytest.mark.parametrize("sharding", ["table-wise", "row-wise", "column-wise", "auto"])
def test_sharded_forward_equals_unsharded(results: dict[str, Any], model: str, sharding: str) -> None:
    """Same weights, each rank its own batch (8 and 6 samples): logits and training loss agree."""
    diffs = results["forward"][f"{model}/{sharding}"]
    assert diffs["eval_logits"] <= 1e-6 and diffs["train_loss"] <= 1e-5, diffs


def test_each_sharding_type_places_the_tables_as_asked(results: dict[str, Any]) -> None:
    plans = results["plans"]
    assert plans["cm/table-wise"] == {
        "item": "table_wise on ranks [0]",
        "category": "table_wise on ranks [1]",
    }
    assert plans["cm/row-wise"]["item"] == "row_wise on ranks [0, 1]"
    assert plans["cm/column-wise"]["item"] == "column_wise on ranks [0, 1]"
    assert plans["cm/auto"]["item"].split()[0] in {"table_wise", "row_wise", "column_wise"}


def test_gathered_predictions_cover_every_sample_once_in_row_order(results: dict[str, Any]) -> None:
    gather = results["gather"]
    assert gather["rows"] == gather["expected_rows"] == 80 and gather["local_rows"] < 80
    assert gather["labels_equal"] and gather["users_equal"]
    assert gather["max_score_diff"] <= 1e-6


@pytest.mark.parametrize("sharding", ["row-wise", "table-wise"])
def test_save_load_then_next_steps_match_the_uninterrupted_run(
    results: dict[str, Any], sharding: str
) -> None:
    run = results["resume"][sharding]
    assert run["note"] == "after 2 steps"
    assert run["resumed"] == run["uninterrupted"]  # bit-identical steps 3 and 4
    assert run["no_load"][0] != run["uninterrupted"][0]  # the test can fail: weights matter
    # Weights restored but optimiser state fresh: step 3 equal, step 4 not (the state is restored).
    assert run["fresh_optimizer"][0] == run["uninterrupted"][0]
    assert abs(run["fresh_optimizer"][1] - run["uninterrupted"][1]) > 1e-4
    assert run["dense_spread"] == 0.0  # DDP kept the dense parameters identical on both ranks


@pytest.mark.parametrize("optimizer", ["rowwise-adagrad", "adagrad", "sgd"])
def test_each_cpu_table_optimizer_updates_the_sharded_tables(results: dict[str, Any], optimizer: str) -> None:
    run = results["optimizers"][optimizer]
    assert run["table_change"] > 1e-4 and all(math.isfinite(v) for v in run["losses"]), run


def test_fused_adam_for_tables_is_refused_on_cpu(results: dict[str, Any]) -> None:
    assert "runs on GPU only" in results["adam_on_cpu"]
