"""`cmrec refresh`, `score` and `forget` end to end; bad input exits 2 and leaves the store unchanged."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cmrec import cli
from cmrec.store import StoreError
from tests.serving.conftest import dump, make_run, open_scorer

PART = "part-00000-of-00001.sqlite"


@pytest.fixture
def refreshed(tmp_path: Path, run_dir: Path, log: pd.DataFrame) -> Path:
    events = tmp_path / "events.parquet"
    log.iloc[:600].to_parquet(events)
    store = tmp_path / "store"
    assert cli.main(["refresh", "--run", str(run_dir), "--events", str(events), "--store", str(store)]) == 0
    return store


def test_score_writes_requests_with_scores(
    tmp_path: Path, run_dir: Path, refreshed: Path, log: pd.DataFrame, capsys: pytest.CaptureFixture[str]
) -> None:
    requests = pd.DataFrame(
        {
            "user_id": [*log["user_id"].iloc[:5], 123456],
            "item_id": [*log["item_id"].iloc[:5], 999_999],  # an item the run never saw
            "tag": list("abcdef"),
        }
    )
    requests.to_csv(tmp_path / "requests.csv", index=False)
    out = tmp_path / "out" / "scores.parquet"
    argv = [
        "score",
        "--run",
        str(run_dir),
        "--store",
        str(refreshed),
        "--requests",
        str(tmp_path / "requests.csv"),
    ]
    assert cli.main([*argv, "--out", str(out)]) == 0
    report = capsys.readouterr().out
    assert "1 unknown users" in report and "1 requests for items the run never saw" in report
    scored = pd.read_parquet(out)
    assert list(scored.columns) == ["user_id", "item_id", "tag", "score"]
    assert scored["score"].between(0, 1).all() and scored["tag"].tolist() == list("abcdef")
    api = open_scorer(run_dir, refreshed).score(requests["user_id"].tolist(), requests["item_id"])
    np.testing.assert_allclose(scored["score"].to_numpy(), api.probabilities, rtol=1e-6)
    assert api.unknown_users == ("123456",) and api.unknown_items == 1
    # An unknown user scores from the initial memory: the same as a forgotten one.
    user = str(log["user_id"].iloc[0])
    assert cli.main(["forget", "--store", str(refreshed), "--user", user, "nobody"]) == 0
    assert "deleted 1 of 2" in capsys.readouterr().out
    after = open_scorer(run_dir, refreshed).score([user, "123456"], [3, 3]).probabilities
    assert after[0] == pytest.approx(after[1])


def _expect_refusal(argv: list[str], store: Path, capsys: pytest.CaptureFixture[str], message: str) -> None:
    before = dump(store)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert dump(store) == before


def test_bad_input_is_refused_and_the_store_is_unchanged(
    tmp_path: Path, run_dir: Path, refreshed: Path, log: pd.DataFrame, capsys: pytest.CaptureFixture[str]
) -> None:
    def refresh(events: Path, run: Path = run_dir) -> list[str]:
        return ["refresh", "--run", str(run), "--events", str(events), "--store", str(refreshed)]

    good = log.iloc[600:]
    no_time = tmp_path / "no_time.csv"
    good.drop(columns="timestamp").to_csv(no_time, index=False)
    _expect_refusal(refresh(no_time), refreshed, capsys, "missing required column(s) 'timestamp'")

    empty = tmp_path / "empty.csv"
    empty.write_text("")
    _expect_refusal(refresh(empty), refreshed, capsys, "the file is empty")
    header_only = tmp_path / "header.csv"
    header_only.write_text("user_id,item_id,timestamp,category_id\n")
    _expect_refusal(refresh(header_only), refreshed, capsys, "no events")

    backwards = good.copy()
    user = backwards["user_id"].iloc[0]
    rows = np.flatnonzero(backwards["user_id"].to_numpy() == user)
    backwards.iloc[rows[2], backwards.columns.get_loc("timestamp")] = backwards["timestamp"].iloc[rows[0]] - 5
    backwards_file = tmp_path / "backwards.csv"
    backwards.to_csv(backwards_file, index=False)
    _expect_refusal(
        refresh(backwards_file),
        refreshed,
        capsys,
        f"column 'timestamp', row {rows[2] + 1} (line {rows[2] + 2})",
    )

    good_file = tmp_path / "good.parquet"
    good.to_parquet(good_file)
    _expect_refusal(refresh(good_file, tmp_path / "nowhere"), refreshed, capsys, "no such run folder")
    other = make_run(tmp_path / "other", log, seed=7)
    _expect_refusal(refresh(good_file, other), refreshed, capsys, "--rebuild")

    # A damaged memory blob: same length (caught by the checksum), and truncated.
    with sqlite3.connect(refreshed / PART) as db:
        victim = str(good["user_id"].iloc[0])
        blob = db.execute("SELECT memory FROM users WHERE user_id = ?", (victim,)).fetchone()[0]
        db.execute("UPDATE users SET memory = ? WHERE user_id = ?", (bytes(reversed(blob)), victim))
    _expect_refusal(
        refresh(good_file), refreshed, capsys, f"user '{victim}': damaged row (checksum mismatch)"
    )
    requests = tmp_path / "requests.csv"
    pd.DataFrame({"user_id": [victim], "item_id": [1]}).to_csv(requests, index=False)
    score = ["score", "--run", str(run_dir), "--store", str(refreshed), "--requests", str(requests)]
    _expect_refusal([*score, "--out", str(tmp_path / "s.csv")], refreshed, capsys, "damaged row")
    assert not (tmp_path / "s.csv").exists()


def test_score_refuses_bad_requests_and_non_memory_runs(
    tmp_path: Path, run_dir: Path, refreshed: Path, log: pd.DataFrame, capsys: pytest.CaptureFixture[str]
) -> None:
    requests = tmp_path / "requests.csv"
    pd.DataFrame({"user_id": [1, 2, None], "item_id": [1, 2, 3]}).to_csv(requests, index=False)
    score = [
        "score",
        "--store",
        str(refreshed),
        "--requests",
        str(requests),
        "--out",
        str(tmp_path / "o.csv"),
    ]
    _expect_refusal([*score, "--run", str(run_dir)], refreshed, capsys, "column 'user_id', row 3 (line 4)")
    pd.DataFrame({"user_id": [1]}).to_csv(requests, index=False)
    _expect_refusal(
        [*score, "--run", str(run_dir)], refreshed, capsys, "missing required column(s) 'item_id'"
    )
    baseline = make_run(tmp_path / "dien", log, name="dien")
    pd.DataFrame({"user_id": [1], "item_id": [2]}).to_csv(requests, index=False)
    _expect_refusal([*score, "--run", str(baseline)], refreshed, capsys, "model 'dien' is end-to-end")
    assert not (tmp_path / "o.csv").exists()


def test_rebuild_replaces_memories_of_a_retrained_model(
    tmp_path: Path, run_dir: Path, refreshed: Path, log: pd.DataFrame
) -> None:
    full = tmp_path / "full.parquet"
    log.to_parquet(full)
    retrained = make_run(tmp_path / "retrained", log, seed=9)
    argv = ["refresh", "--run", str(retrained), "--events", str(full), "--store", str(refreshed)]
    assert cli.main([*argv, "--rebuild", "--no-progress"]) == 0
    assert not refreshed.with_name("store.rebuild").exists() and not refreshed.with_name("store.old").exists()
    scorer = open_scorer(retrained, refreshed)  # the store now belongs to the retrained run
    _, known = scorer.memories(sorted(log["user_id"].astype(str).unique()))
    assert known.all()
    with pytest.raises(StoreError, match="--rebuild"):
        open_scorer(run_dir, refreshed)


def test_evaluate_via_store_reproduces_the_batch_path(tmp_path: Path, run_dir: Path, log_file: Path) -> None:
    out = tmp_path / "evaluation.json"
    argv = ["evaluate", "--run", str(run_dir), "--events", str(log_file), "--max-len", "1000"]
    assert cli.main([*argv, "--via-store", "float32", "float16", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    full, half = result["via_store"]["float32"], result["via_store"]["float16"]
    assert full["max_abs_probability_difference"] < 1e-5
    # The AUCs agree within what that difference can move them (float rounding of two paths).
    assert abs(full["auc"] - result["test"]["auc"]) <= full["auc_sensitivity"] < 1e-3
    assert 0 < half["max_abs_probability_difference"] < 1e-2
    xlong = ["evaluate", "--run", str(run_dir), "--xlong-test", str(log_file), "--via-store", "float32"]
    assert cli.main(xlong) == 2
