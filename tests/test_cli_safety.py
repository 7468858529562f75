"""What a hostile but realistic user can do to a job: replace a run, kill it mid-way, spell ids
differently, pass nonsense. Each gets a clear one-line error with exit 2 and nothing written, or a
result that is whole: the old run or the new one, never a mix."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import socket
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from cmrec import cli
from cmrec.atomic import partial_folder, swap_in
from cmrec.tracking import OWNER_HOST, OWNER_PID, RunTracker
from tests.tiny import tiny_data_args

FORK = multiprocessing.get_context("fork")
TINY = [*tiny_data_args(users=40, batch_size=16), "--epochs", "1"]


pytestmark = pytest.mark.usefixtures("mlflow_store")  # tests/conftest.py


def _train(out: Path, *extra: str) -> list[str]:
    return ["train", "--model", "avg-pool", *TINY, "--no-mlflow", "--out", str(out), *extra]


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _assert_one_run(run: Path, seed: int) -> None:
    """The metrics and the predictions of `run` come from one run of `seed`."""
    from sklearn.metrics import roc_auc_score

    metrics = json.loads((run / "metrics.json").read_text())
    predictions = pd.read_parquet(run / "test_predictions.parquet")
    assert metrics["seed"] == seed
    assert roc_auc_score(predictions["label"], predictions["probability"]) == pytest.approx(
        metrics["test"]["auc"]
    )


def _train_child(argv: list[str]) -> None:
    torch.set_num_threads(1)
    os._exit(cli.main(argv))


def test_an_existing_run_is_replaced_only_whole_and_only_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert cli.main(_train(run)) == 0
    # The kills are timed as shares of how long one (warm) run takes on this machine: fixed
    # delays missed every run once the run took under a second.
    # The faster of two timed runs: one slowed down by a noisy neighbour would stretch every delay
    # past the end of the run it is meant to interrupt.
    durations = []
    for name in ("timed", "timed-again"):
        started = time.perf_counter()
        assert cli.main(_train(tmp_path / name)) == 0
        durations.append(time.perf_counter() - started)
    duration = min(durations)
    old = _hashes(run)
    assert cli.main(_train(run, "--seed", "7")) == 2
    assert "already holds a cmrec run folder; pass --overwrite" in capsys.readouterr().err
    assert _hashes(run) == old

    # Killed at random moments while replacing the run: the folder is the old run, whole.
    cli.build_parser()
    rng = np.random.default_rng(0)
    finished, kills = None, 0
    for delay in rng.uniform(0.05, 0.7, size=6) * duration:
        child = FORK.Process(target=_train_child, args=(_train(run, "--seed", "7", "--overwrite"),))
        child.start()
        child.join(float(delay))
        if child.is_alive() and child.pid is not None:
            os.kill(child.pid, signal.SIGKILL)
            child.join(30)
            now = _hashes(run)
            if now != old:  # the kill landed after the swap: the new run, whole
                assert set(now) == set(old), f"a kill after {delay:.2f} s left a mixed run folder"
                _assert_one_run(run, seed=7)
                finished = 0
                break
            kills += 1
        else:
            finished = child.exitcode
            break
    assert kills >= 3, f"only {kills} kills landed before the run finished"
    if finished is None:  # no run finished within the kills: let one finish
        assert cli.main(_train(run, "--seed", "7", "--overwrite")) == 0
    else:
        assert finished == 0
    new = _hashes(run)
    assert set(new) == set(old) and new != old
    _assert_one_run(run, seed=7)
    assert not partial_folder(run).exists()


def test_a_folder_that_is_not_a_run_is_never_replaced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert cli.main(_train(mine, "--overwrite")) == 2
    assert "holds files that are not a cmrec run folder (notes.txt)" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep me"
    blocked = tmp_path / "file"
    blocked.write_text("a file where a folder is needed")
    assert cli.main(_train(blocked / "run")) == 2
    err = capsys.readouterr().err
    assert str(blocked) in err and "Traceback" not in err


def test_swap_in_exchanges_whole_folders(tmp_path: Path) -> None:
    old, new = tmp_path / "out", tmp_path / "new"
    for folder, text in ((old, "old"), (new, "new")):
        folder.mkdir()
        (folder / "a.txt").write_text(text)
    (old / "only-old.txt").write_text("old")
    swap_in(new, old)
    assert sorted(p.name for p in old.iterdir()) == ["a.txt"] and (old / "a.txt").read_text() == "new"
    assert not new.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--lr", "-1"], "--lr must be a positive number, got -1.0"),
        (["--lr", "nan"], "--lr must be a positive number, got nan"),
        (["--batch-size", "3"], "--batch-size must be an even number >= 2"),
        (["--epochs", "0"], "--epochs and --patience must be >= 1"),
    ],
)
def test_bad_training_options_are_one_line_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    run = tmp_path / "run"
    assert cli.main(_train(run, *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # not even an empty run folder


def test_a_config_value_of_the_wrong_type_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text('dropout: "0.1"\n')
    argv = [
        "train",
        "--model",
        "cm",
        *TINY,
        "--no-mlflow",
        "--config",
        str(config),
        "--out",
        str(tmp_path / "r"),
    ]
    assert cli.main(argv) == 2
    assert "config key 'dropout' of 'cm' must be a number, got '0.1' (str)" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_an_unusable_mlflow_store_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{blocked}/mlflow.db")
    argv = ["train", "--model", "avg-pool", *TINY, "--out", str(tmp_path / "r")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot start a run" in err and "--no-mlflow" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists() and not partial_folder(tmp_path / "r").exists()


def test_a_killed_runs_mlflow_status_is_ended_by_the_next_run(tmp_path: Path, mlflow_store: str) -> None:
    dead = FORK.Process(target=os._exit, args=(0,))
    dead.start()
    dead.join()
    mlflow.set_tracking_uri(mlflow_store)
    mlflow.set_experiment("e")
    orphan = mlflow.start_run(tags={OWNER_HOST: socket.gethostname(), OWNER_PID: str(dead.pid)})
    mlflow.end_run(status="RUNNING")  # leave it as a SIGKILLed process would
    alive = mlflow.start_run(tags={OWNER_HOST: socket.gethostname(), OWNER_PID: str(os.getpid())})
    mlflow.end_run(status="RUNNING")
    with RunTracker("e", "next") as tracker:
        assert tracker.killed == [orphan.info.run_id]
    client = mlflow.MlflowClient()
    assert client.get_run(orphan.info.run_id).info.status == "KILLED"
    assert client.get_run(alive.info.run_id).info.status == "RUNNING"  # its process still exists


def test_ids_keep_their_spelling(tmp_path: Path) -> None:
    from cmrec.data.events import read_events

    rows = [(user, item, t) for t, (user, item) in enumerate([("007", 1), ("07", 2), ("7", 3), ("7", 4)])]
    path = tmp_path / "events.csv"
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).astype(str).to_csv(path, index=False)
    events = read_events(path)
    assert sorted(events["user_id"].unique()) == ["007", "07", "7"]
    plain = tmp_path / "plain.csv"
    plain.write_text("user_id,item_id,timestamp\n7,1,1\n8,2,2\n")
    assert read_events(plain)["user_id"].tolist() == [7, 8]  # CSV "7" is Parquet's 7, as before


def test_suspicious_rows_are_warned_about_with_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = pd.DataFrame(
        {"user_id": [1, 1, 1, 2, 2] * 8, "item_id": list(range(40)), "timestamp": list(range(40))}
    )
    log.loc[3, "timestamp"] = -5
    log = pd.concat([log, log.iloc[[10, 11]]], ignore_index=True)
    path = tmp_path / "events.csv"
    log.to_csv(path, index=False)
    run = tmp_path / "run"
    argv = ["train", "--model", "avg-pool", "--events", str(path), "--max-len", "30", "--epochs", "1"]
    assert cli.main([*argv, "--no-mlflow", "--out", str(run)]) == 0
    err = capsys.readouterr().err
    assert "warning: " + str(path) + ": 1 event(s) have a negative timestamp (first: row 4)" in err
    assert "2 row(s) repeat an earlier row exactly (first: row 41)" in err


def test_evaluate_on_a_log_without_test_targets_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert cli.main(_train(run)) == 0
    capsys.readouterr()
    short = tmp_path / "short.csv"
    short.write_text("user_id,item_id,timestamp,category_id\n1,1,1,1\n2,2,1,1\n")
    assert cli.main(["evaluate", "--run", str(run), "--events", str(short)]) == 2
    err = capsys.readouterr().err
    assert "no user has a test target" in err and err.count("\n") == 1, err


def test_a_train_that_fails_after_starting_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "--model", "avg-pool", "--events", str(tmp_path / "missing.parquet")]
    assert cli.main([*argv, "--no-mlflow", "--out", str(tmp_path / "r")]) == 2
    assert "missing.parquet: no such file" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
