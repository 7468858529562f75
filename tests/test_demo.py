"""`cmrec demo` end to end on a tiny log: every step, the equality it promises, its folder rules."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cmrec import cli
from cmrec.pipelines.demo import duration

pytestmark = pytest.mark.usefixtures("mlflow_store")  # tests/conftest.py
TINY = ["--users", "60", "--length", "60", "--day2-clicks", "25", "--epochs", "1", "--chunks", "3"]


def test_demo_tells_the_whole_story(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert cli.main(["demo", *TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if line.startswith("[")]
    steps = ["generate", "train cm", "train dien", "train avg-pool", "compare", "refresh", "score"]
    assert [line.split(":")[0] for line in lines] == [f"[{i}/8] {s}" for i, s in enumerate(steps, 1)]
    assert all(line.endswith(" s)") for line in lines)
    assert "| floor: category in whole history |" in printed and "| floor: item popularity |" in printed
    assert "demo done in" in printed and "cmrec ui" in printed

    record = json.loads((out / "demo.json").read_text())
    assert [s["step"] for s in record["steps"]] == steps
    assert record["settings"]["models"] == ["cm", "dien", "avg-pool"]
    for model in ("cm", "dien", "avg-pool"):
        assert json.loads((out / model / "metrics.json").read_text())["data"] == "demo-60x60-seed0"
    # Three time-ordered chunks that together are the day-2 file; chunk 1 re-delivered applied none.
    day2 = pd.read_parquet(out / "data" / "day2.parquet")
    chunks = [pd.read_parquet(p) for p in sorted((out / "day2-chunks").glob("part-*.parquet"))]
    assert len(chunks) == 3 and sum(map(len, chunks)) == len(day2) == 60 * 25
    assert chunks[0]["timestamp"].max() <= chunks[1]["timestamp"].min()
    assert "chunk 1 re-delivered: 0 applied" in printed
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == 9 and set(scores["kind"]) == {"recent", "early", "never"}
    assert scores["difference"].max() <= 1e-5 and scores["store"].std() > 0


def test_demo_replaces_its_own_folder_and_refuses_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert cli.main(["demo", *TINY, "--out", str(other)]) == 2
    assert "holds files that are not a cmrec demo folder" in capsys.readouterr().err
    assert (other / "notes.txt").read_text() == "keep me"
    assert cli.main(["demo", *TINY, "--models", "dien", "avg-pool", "--out", str(tmp_path / "d")]) == 2
    assert "--models must include cm" in capsys.readouterr().err
    assert cli.main(["demo", *TINY, "--models", "cm", "nope", "--out", str(tmp_path / "d")]) == 2
    assert "--models: unknown nope" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()

    out = tmp_path / "demo"
    args = ["demo", *TINY, "--models", "cm", "--out", str(out)]
    assert cli.main(args) == 0
    assert cli.main([*args[:-2], "--seed", "1", "--out", str(out)]) == 0
    assert json.loads((out / "demo.json").read_text())["settings"]["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_duration_is_truncated_not_rounded() -> None:
    assert [duration(s) for s in (284.7, 59.9, 60.0, 359.99)] == [
        "4 min 44 s",
        "0 min 59 s",
        "1 min 0 s",
        "5 min 59 s",
    ]
