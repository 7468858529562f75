from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cmrec import cli
from cmrec.data.xlong import build_from_xlong
from cmrec.pipelines import generate

TINY = ["--users", "30", "--length", "40", "--items", "300", "--categories", "12"]


def test_generate_writes_consistent_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "data"
    assert cli.main(["generate", *TINY, "--seed", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "xlong-synthetic: 30 users" in printed and "heuristic test AUC" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["events"] == 30 * 42 and summary["config"]["seed"] == 3
    assert set(summary["heuristic_test_auc"]) == {"last_50", "all_40"}
    events = pd.read_parquet(out / "events.parquet")
    assert list(events.columns) == ["user_id", "item_id", "timestamp", "category_id"]
    data = build_from_xlong(out / "xlong_train.txt", out / "xlong_test.txt", valid_fraction=0.0)
    # The XLong test line of user 1 is its clicks 1..40 and its click 41 as the positive.
    user_one = events[events["user_id"] == 1]["item_id"].to_numpy()
    decoded_history = data.vocabs.items.encode(user_one[1:41])
    assert data.histories.sequence(30).tolist() == decoded_history.tolist()
    assert not list(out.glob(".cmrec-tmp-*"))


def test_day2_file_holds_later_clicks_of_the_same_users(tmp_path: Path) -> None:
    out = tmp_path / "data"
    assert cli.main(["generate", *TINY, "--day2-clicks", "7", "--out", str(out)]) == 0
    events, day2 = pd.read_parquet(out / "events.parquet"), pd.read_parquet(out / "day2.parquet")
    assert len(day2) == 30 * 7 and set(day2["user_id"]) == set(events["user_id"])
    last = events.groupby("user_id")["timestamp"].max()
    assert (day2.groupby("user_id")["timestamp"].min() > last).all()
    assert json.loads((out / "summary.json").read_text())["day2_clicks_per_user"] == 7
    assert cli.main(["generate", *TINY, "--day2-clicks", "-1", "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


def test_existing_outputs_are_kept_without_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "data"
    assert generate.main([*TINY, "--out", str(out)]) == 0
    before = (out / "events.parquet").read_bytes()
    assert generate.main([*TINY, "--seed", "9", "--out", str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert (out / "events.parquet").read_bytes() == before
    assert generate.main([*TINY, "--seed", "9", "--out", str(out), "--overwrite"]) == 0
    assert (out / "events.parquet").read_bytes() != before


def test_bad_knob_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "data"
    assert generate.main([*TINY, "--p-return", "1.5", "--out", str(out)]) == 2
    assert "--p-return must be in [0, 1]" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_movielens_export(tmp_path: Path) -> None:
    out = tmp_path / "ml"
    assert generate.main(["--dataset", "movielens-1m", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["users"], summary["items"], summary["events"]) == (6040, 3706, 1_000_209)
    assert summary["sequence_length"]["p50"] == 96.0


def test_console_help_lists_commands_and_knobs() -> None:
    top = subprocess.run(
        [sys.executable, "-m", "cmrec.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "generate" in top.stdout
    sub = subprocess.run(
        [sys.executable, "-m", "cmrec.cli", "generate", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--p-return" in sub.stdout and "--dataset" in sub.stdout and "dormant" in sub.stdout
