from __future__ import annotations

import json
from pathlib import Path

import pytest

from cmrec import cli


def test_bench_writes_step_time_parts_and_flops(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench" / "cm.json"
    argv = [
        "bench",
        "--model",
        "cm",
        "--length",
        "40",
        "--batch-size",
        "8",
        "--steps",
        "1",
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["model"] == "cm" and result["length"] == 40 and result["batch_size"] == 8
    assert result["step_seconds"] > 0 and result["samples_per_second"] > 0
    assert set(result["parts"]) == {"embeddings", "encoder", "memory_update", "reason_head", "recall"}
    assert sum(part["share"] for part in result["parts"].values()) == pytest.approx(1.0, abs=0.01)
    assert (
        result["parts"]["encoder"]["flops_per_sample"]
        > result["parts"]["reason_head"]["flops_per_sample"]
        > 0
    )
    assert result["train_flops_per_sample"] > 0
    assert "s/step" in capsys.readouterr().out


def test_bench_refuses_bad_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "--steps", "0", "--out", str(tmp_path / "x.json")]) == 2
    assert "--steps >= 1" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
