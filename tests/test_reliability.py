"""The bad-input and fault sweep of docs/reliability.md, one case per row of its table.

Every case runs a real command line against one shared world of real files (a data folder, a
trained cm run, a refreshed store, request tables and broken files) and must end with exit
status 2 (the first line of every such message is ``cmrec COMMAND: error: ...``), exactly one
line on stderr that names the file, the column and the row, or the flag and what it allows, no
traceback, and the world exactly as it was: nothing written, nothing half-written, no store
touched. Signals get their own tests below; the faults that need a running process killed at a
random point are tested where their machinery lives (the table says where).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch

from cmrec import cli
from tests.tiny import TINY_YAML

FORK = multiprocessing.get_context("fork")
DOC = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"


@dataclass(frozen=True)
class Case:
    id: str
    argv: str  # the command line, {name} placeholders filled from the world's paths
    says: tuple[str, ...]  # fragments the one error line must hold (file, column, row, flag)


TRAIN = "train --model cm --config tiny.yaml --max-len 32 --epochs 1 --batch-size 16 --no-mlflow"
REFRESH = "refresh --run run --store new-store --no-progress"
SCORE = "score --run run --store store --out scores.csv"

CASES = [
    # generate
    Case("generate-zero-users", "generate --out g --users 0", ("--users must be >= 1, got 0",)),
    Case("generate-probability", "generate --out g --p-drift 1.5", ("--p-drift must be in [0, 1]",)),
    Case("generate-out-is-a-file", "generate --out events.csv", ("events.csv: exists and is not a folder",)),
    Case(
        "generate-out-under-a-file",
        "generate --out events.csv/g --users 4 --length 30",
        ("events.csv/g: cannot be written, events.csv is a file, not a folder",),
    ),
    Case("generate-unknown-dataset", "generate --out g --dataset x", ("argument --dataset: invalid choice",)),
    # train: the event log
    Case("train-empty-file", f"{TRAIN} --events empty.csv --out r", ("empty.csv: the file is empty",)),
    Case("train-header-only", f"{TRAIN} --events header.csv --out r", ("header.csv: no events",)),
    Case(
        "train-missing-column",
        f"{TRAIN} --events no-timestamp.csv --out r",
        ("no-timestamp.csv: missing required column(s) 'timestamp'",),
    ),
    Case(
        "train-float-ids",
        f"{TRAIN} --events float-ids.csv --out r",
        ("float-ids.csv: column 'item_id', row 1 (line 2)", "must be integers or strings"),
    ),
    Case(
        "train-bad-timestamp",
        f"{TRAIN} --events bad-time.csv --out r",
        ("bad-time.csv: column 'timestamp', row 8 (line 9)", "cannot parse 'yesterday'"),
    ),
    Case(
        "train-semicolon-csv",
        f"{TRAIN} --events semicolon.csv --out r",
        ("semicolon.csv: missing required column(s)", "'user_id;item_id;timestamp;category_id'"),
    ),
    Case(
        "train-missing-value",
        f"{TRAIN} --events missing-user.csv --out r",
        ("missing-user.csv: column 'user_id', row 6 (line 7): missing value",),
    ),
    Case(
        "train-not-parquet",
        f"{TRAIN} --events garbage.parquet --out r",
        ("garbage.parquet: cannot be read as an event log",),
    ),
    Case("train-binary-csv", f"{TRAIN} --events binary.csv --out r", ("binary.csv: cannot be read",)),
    Case("train-folder-for-file", f"{TRAIN} --events data --out r", ("data: is a folder, not a file",)),
    Case(
        "train-bad-xlong-line",
        f"{TRAIN} --xlong-train bad.txt --xlong-test bad.txt --out r",
        ("bad.txt, line 1: expected at least 5 tab-separated fields",),
    ),
    Case(
        "train-two-sources",
        f"{TRAIN} --events events.csv --dataset xlong-synthetic --out r",
        ("give exactly one data source",),
    ),
    # train: the config and the flags
    Case(
        "train-yaml-syntax",
        f"{TRAIN.replace('tiny.yaml', 'broken.yaml')} --events events.csv --out r",
        ("broken.yaml: not a YAML config", "at line 2, column 1"),
    ),
    Case(
        "train-yaml-folder",
        f"{TRAIN.replace('tiny.yaml', 'data')} --events events.csv --out r",
        ("data: cannot read the YAML config (Is a directory)",),
    ),
    Case(
        "train-unknown-config-key",
        f"{TRAIN.replace('tiny.yaml', 'unknown-key.yaml')} --events events.csv --out r",
        ("unknown config key(s) for 'cm': slot",),
    ),
    Case(
        "train-config-wrong-type",
        f"{TRAIN.replace('tiny.yaml', 'wrong-type.yaml')} --events events.csv --out r",
        ("config key 'dropout' of 'cm' must be a number, got '0.1' (str)",),
    ),
    Case("train-zero-epochs", f"{TRAIN} --events events.csv --epochs 0 --out r", ("--epochs",)),
    Case(
        "train-odd-batch",
        f"{TRAIN} --events events.csv --batch-size 3 --out r",
        ("--batch-size must be an even number >= 2", "got 3"),
    ),
    Case(
        "train-nan-lr", f"{TRAIN} --events events.csv --lr nan --out r", ("--lr must be a positive number",)
    ),
    Case(
        "train-zero-max-len",
        f"{TRAIN.replace('--max-len 32', '--max-len 0')} --events events.csv --out r",
        ("--max-len must be >= 1, got 0",),
    ),
    Case(
        "train-unknown-model",
        "train --model cmx --events events.csv --out r",
        ("argument --model: invalid choice: 'cmx'", "'cm'", "--help"),
    ),
    Case("train-epochs-not-a-number", f"{TRAIN} --events events.csv --epochs two --out r", ("--epochs",)),
    # train: the output
    Case(
        "train-out-under-a-file",
        f"{TRAIN} --events events.csv --out events.csv/r",
        ("events.csv/r: cannot be written, events.csv is a file, not a folder",),
    ),
    Case(
        "train-existing-run",
        f"{TRAIN} --events events.csv --out run",
        ("run: already holds a cmrec run folder; pass --overwrite",),
    ),
    Case(
        "train-foreign-folder",
        f"{TRAIN} --events events.csv --out data --overwrite",
        ("data: holds files that are not a cmrec run folder",),
    ),
    # evaluate
    Case("evaluate-no-run", "evaluate --run nothing --events events.csv", ("nothing: no such run folder",)),
    Case(
        "evaluate-folder-not-a-run",
        "evaluate --run data --events events.csv",
        ("data/checkpoint.pt: no checkpoint",),
    ),
    Case(
        "evaluate-truncated-checkpoint",
        "evaluate --run truncated --events events.csv",
        ("truncated/checkpoint.pt: cannot read a cmrec checkpoint", "damaged"),
    ),
    Case(
        "evaluate-out-is-a-folder",
        "evaluate --run run --events events.csv --out data",
        ("data: is a folder; give the name of a file to write",),
    ),
    Case(
        "evaluate-out-under-a-file",
        "evaluate --run run --events events.csv --out events.csv/e.json",
        ("events.csv/e.json: cannot be written, events.csv is a file, not a folder",),
    ),
    Case(
        "evaluate-odd-batch",
        "evaluate --run run --events events.csv --batch-size 0",
        ("--batch-size must be an even number >= 2",),
    ),
    Case(
        "evaluate-via-store-dtype",
        "evaluate --run run --events events.csv --via-store float8",
        ("argument --via-store: invalid choice: 'float8'",),
    ),
    Case(
        "evaluate-via-store-needs-events",
        "evaluate --run run --xlong-test bad.txt --via-store float32",
        ("--via-store needs --events",),
    ),
    # compare
    Case("compare-no-store", "compare --experiment nope", ("sqlite:///mlflow.db: no MLflow store there",)),
    Case("compare-format", "compare --format xml", ("argument --format: invalid choice: 'xml'",)),
    # refresh
    Case("refresh-missing-events", f"{REFRESH} --events nope.csv", ("nope.csv: no such file",)),
    Case(
        "refresh-float-ids",
        f"{REFRESH} --events float-ids.csv",
        ("float-ids.csv: column 'item_id', row 1 (line 2)",),
    ),
    Case(
        "refresh-time-order",
        f"{REFRESH} --events backwards.csv",
        ("backwards.csv: column 'timestamp', row 3 (line 4)", "new events must arrive in time order"),
    ),
    Case(
        "refresh-store-is-a-file",
        "refresh --run run --events day2.csv --store events.csv --no-progress",
        ("events.csv: a memory store is a folder of partitions, this is a file",),
    ),
    Case(
        "refresh-store-under-a-file",
        "refresh --run run --events day2.csv --store events.csv/s --no-progress",
        ("events.csv/s: cannot be written, events.csv is a file, not a folder",),
    ),
    Case(
        "refresh-zero-partitions",
        f"{REFRESH} --events day2.csv --partitions 0",
        ("--partitions must be >= 1",),
    ),
    Case(
        "refresh-negative-workers",
        f"{REFRESH} --events day2.csv --num-workers -1",
        ("--num-workers must be >= 1",),
    ),
    Case(
        "refresh-zero-batch", f"{REFRESH} --events day2.csv --batch-users 0", ("--batch-users must be >= 1",)
    ),
    Case(
        "refresh-dtype-mismatch",
        "refresh --run run --events day2.csv --store store --dtype float16 --no-progress",
        ("store: the store holds float32 memories; --dtype float16 needs --rebuild",),
    ),
    Case(
        "refresh-partitions-mismatch",
        "refresh --run run --events day2.csv --store store --partitions 4 --no-progress",
        ("store: the store has 1 partition(s); --partitions 4 needs --rebuild",),
    ),
    Case(
        "refresh-non-incremental-run",
        "refresh --run avg-pool --events day2.csv --store new-store --no-progress",
        ("avg-pool: model 'avg-pool' is end-to-end", "keeps no state a store could hold"),
    ),
    Case(
        "refresh-store-of-another-run",
        "refresh --run other-run --events day2.csv --store store --no-progress",
        ("store/part-00000-of-00001.sqlite: holds memories written by model 'cm'", "--rebuild"),
    ),
    Case(
        "refresh-damaged-partition",
        "refresh --run run --events day2.csv --store damaged-store --no-progress",
        (
            "damaged-store/part-00000-of-00001.sqlite: not a readable cmrec memory store partition",
            "--rebuild",
        ),
    ),
    Case(
        "refresh-redis-bad-port",
        "refresh --run run --events day2.csv --store redis://localhost:notaport/0 --no-progress",
        ("argument --store: bad port",),
    ),
    Case(
        "refresh-redis-no-host",
        "refresh --run run --events day2.csv --store redis:// --no-progress",
        ("argument --store: no host; the form is redis://HOST:PORT/DB/NAME",),
    ),
    Case(
        "refresh-redis-bad-db",
        "refresh --run run --events day2.csv --store redis://127.0.0.1:6379/abc --no-progress",
        ("argument --store: the database number must be an integer, got 'abc'",),
    ),
    Case(
        "refresh-redis-closed-port",
        "refresh --run run --events day2.csv --store redis://127.0.0.1:{closed_port}/0 --no-progress",
        ("cannot reach the Redis server", "is it running?"),
    ),
    # score
    Case(
        "score-missing-column",
        f"{SCORE} --requests requests-no-item.csv",
        ("requests-no-item.csv: missing required column(s) 'item_id'",),
    ),
    Case("score-no-rows", f"{SCORE} --requests requests-empty.csv", ("requests-empty.csv: no requests",)),
    Case(
        "score-float-ids",
        f"{SCORE} --requests requests-float.csv",
        ("requests-float.csv: column 'item_id', row 1 (line 2): ids must be integers or strings, got 2.5",),
    ),
    Case(
        "score-missing-value",
        f"{SCORE} --requests requests-missing.csv",
        ("requests-missing.csv: column 'user_id', row 2 (line 3): missing value",),
    ),
    Case(
        "score-no-store",
        "score --run run --store nowhere --requests requests.csv --out scores.csv",
        ("nowhere: no memory store here",),
    ),
    Case(
        "score-damaged-partition",
        "score --run run --store damaged-store --requests requests.csv --out scores.csv",
        ("damaged-store/part-00000-of-00001.sqlite: not a readable cmrec memory store partition",),
    ),
    Case(
        "score-store-of-another-run",
        "score --run other-run --store store --requests requests.csv --out scores.csv",
        ("store/part-00000-of-00001.sqlite: holds memories written by model 'cm'", "--rebuild"),
    ),
    Case(
        "score-out-type",
        "score --run run --store store --requests requests.csv --out scores.txt",
        ("scores.txt: the output must be a .parquet or .csv file",),
    ),
    Case(
        "score-out-under-a-file",
        "score --run run --store store --requests requests.csv --out events.csv/s.csv",
        ("events.csv/s.csv: cannot be written, events.csv is a file, not a folder",),
    ),
    Case(
        "score-pending",
        f"{SCORE} --requests requests.csv --pending maybe",
        ("argument --pending: invalid choice",),
    ),
    Case(
        "score-zero-batch", f"{SCORE} --requests requests.csv --batch-size 0", ("--batch-size must be >= 1",)
    ),
    Case(
        "score-redis-closed-port",
        "score --run run --store redis://127.0.0.1:{closed_port}/0 --requests requests.csv --out scores.csv",
        ("cannot reach the Redis server",),
    ),
    # convert
    Case(
        "convert-not-distributed",
        "convert --run run",
        ("run/distributed/best: no distributed checkpoint folder (was the run trained with --nproc?)",),
    ),
    Case(
        "convert-missing-folder",
        "convert --run run --checkpoint nowhere",
        ("nowhere: no distributed checkpoint",),
    ),
    # demo
    Case("demo-zero-users", "demo --users 0 --out d", ("--users must be >= 1, got 0",)),
    Case("demo-unknown-model", "demo --models cmx --out d", ("--models: unknown cmx",)),
    Case("demo-out-is-a-file", "demo --out events.csv", ("events.csv: exists and is not a folder",)),
    Case(
        "demo-out-under-a-file",
        "demo --out events.csv/d",
        ("events.csv/d: cannot be written, events.csv is a file, not a folder",),
    ),
    # ui
    Case("ui-port-range", "ui --port 99999", ("--port must be in [1, 65535], got 99999",)),
    Case("ui-port-not-a-number", "ui --port abc", ("argument --port: invalid int value: 'abc'",)),
    Case(
        "ui-bad-store",
        "ui --store notascheme://x --port {closed_port}",
        ("--store: 'notascheme://x' is not",),
    ),
    Case(
        "ui-port-busy",
        "ui --port {busy_port}",
        ("--port {busy_port}: cannot listen on 127.0.0.1:{busy_port}",),
    ),
]

# The faults tested with a process stopped mid-run (the tests below and in the files named).
SIGNAL_CASES = {
    "train-sigint": "test_sigint_or_sigterm_mid_train_is_one_line_and_leaves_nothing",
    "train-sigterm": "test_sigint_or_sigterm_mid_train_is_one_line_and_leaves_nothing",
    "refresh-sigint": "tests/serving/test_crash_safety.py",
    "refresh-sigterm": "tests/serving/test_crash_safety.py",
    "train-sigkill": "tests/test_cli_safety.py",
    "refresh-sigkill": "tests/serving/test_crash_safety.py",
    "refresh-redis-server-killed": "tests/serving/test_redis_store.py",
    "ui-ctrl-c": "tests/test_cli_ui.py",
    "convert-malicious-metadata": "tests/test_safe_loading.py",
    "evaluate-pickled-checkpoint": "tests/test_safe_loading.py",
}


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _cli(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exc:  # argparse's usage errors
        return int(exc.code or 0)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files every case is run against (its own folder is the working folder)."""
    root = tmp_path_factory.mktemp("world")
    cwd = Path.cwd()
    os.chdir(root)
    try:
        argv = ["generate", "--out", "data", "--users", "40", "--length", "32", "--items", "200"]
        assert _cli([*argv, "--categories", "8", "--day2-clicks", "8"]) == 0
        events = pd.read_parquet("data/events.parquet")
        events.to_csv("events.csv", index=False)
        pd.read_parquet("data/day2.parquet").to_csv("day2.csv", index=False)
        Path("tiny.yaml").write_text(TINY_YAML)
        common = [
            "--max-len",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--no-mlflow",
            "--events",
            "events.csv",
        ]
        cm = ["train", "--model", "cm", "--config", "tiny.yaml", *common]
        assert _cli([*cm, "--out", "run"]) == 0
        assert _cli([*cm, "--seed", "1", "--out", "other-run"]) == 0  # a store refreshed by `run` is not its
        assert _cli(["train", "--model", "avg-pool", *common, "--out", "avg-pool"]) == 0
        refresh = ["refresh", "--run", "run", "--events", "day2.csv", "--no-progress"]
        assert _cli([*refresh, "--store", "store"]) == 0
        shutil.copytree("store", "damaged-store")
        shutil.copy("store.lock", "damaged-store.lock")  # a refreshed store's lock file is beside it
        for part in Path("damaged-store").glob("*.sqlite"):
            part.write_bytes(b"not a database, " * 64)
        Path("truncated").mkdir()
        shutil.copy("run/metrics.json", "truncated/metrics.json")
        Path("truncated/checkpoint.pt").write_bytes(Path("run/checkpoint.pt").read_bytes()[:3000])

        Path("empty.csv").touch()
        events.head(0).to_csv("header.csv", index=False)
        events.drop(columns=["timestamp"]).to_csv("no-timestamp.csv", index=False)
        events.assign(item_id=events["item_id"] + 0.5).to_csv("float-ids.csv", index=False)
        bad_time = events.astype({"timestamp": object})
        bad_time.loc[7, "timestamp"] = "yesterday"
        bad_time.to_csv("bad-time.csv", index=False)
        events.to_csv("semicolon.csv", sep=";", index=False)
        missing = events.astype({"user_id": object})
        missing.loc[5, "user_id"] = None
        missing.to_csv("missing-user.csv", index=False)
        Path("garbage.parquet").write_bytes(b"PAR1 this is not parquet")
        Path("binary.csv").write_bytes(bytes(range(256)) * 4)
        Path("bad.txt").write_text("a line without tabs\n")
        Path("broken.yaml").write_text("item_dim: [1, 2\n")
        Path("unknown-key.yaml").write_text("slot: 3\n")
        Path("wrong-type.yaml").write_text('dropout: "0.1"\n')
        pd.DataFrame({"user_id": [1, 1, 1], "item_id": [5, 6, 7], "timestamp": [10, 30, 20]}).to_csv(
            "backwards.csv", index=False
        )

        requests = pd.read_parquet("data/day2.parquet").groupby("user_id").tail(1)[["user_id", "item_id"]]
        requests.to_csv("requests.csv", index=False)
        pd.DataFrame({"user_id": [1], "item": [2]}).to_csv("requests-no-item.csv", index=False)
        requests.head(0).to_csv("requests-empty.csv", index=False)
        pd.DataFrame({"user_id": [1], "item_id": [2.5]}).to_csv("requests-float.csv", index=False)
        pd.DataFrame({"user_id": [1, None], "item_id": [2, 3]}).to_csv("requests-missing.csv", index=False)
    finally:
        os.chdir(cwd)
    return root


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    case: Case,
    world: Path,
    busy_port: int,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(world)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")  # none there: compare must not make one
    ports = {"closed_port": _free_port(), "busy_port": busy_port}
    before = _hashes(world)
    code = _cli(case.argv.format(**ports).split())
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    command = case.argv.split()[0]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"cmrec {command}: error: "), lines[0]
    for fragment in case.says:
        assert fragment.format(**ports) in lines[0], lines[0]
    after = _hashes(world)
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    assert not changed, f"a refused command changed the files it was given: {changed}"


def test_the_doc_table_lists_every_case_with_its_verdict() -> None:
    rows = {
        found.group(1): found.group(2)
        for found in re.finditer(r"^\| `([a-z0-9-]+)` \|.*\| (\w+) \|$", DOC.read_text(), re.MULTILINE)
    }
    assert sorted(rows) == sorted([case.id for case in CASES] + list(SIGNAL_CASES))
    assert set(rows.values()) == {"GOOD"}
    for where in SIGNAL_CASES.values():  # a test of this file, or the test file that holds it
        assert where in globals() or (DOC.parents[1] / where).is_file(), where


def _child(argv: list[str]) -> None:
    torch.set_num_threads(1)
    os._exit(cli.main(argv))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_sigint_or_sigterm_mid_train_is_one_line_and_leaves_nothing(
    tmp_path: Path, world: Path, signum: int, capfd: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r"
    argv = [
        "train",
        "--model",
        "cm",
        "--config",
        str(world / "tiny.yaml"),
        "--events",
        str(world / "events.csv"),
    ]
    argv += ["--max-len", "32", "--batch-size", "16", "--no-mlflow", "--out", str(out)]
    cli.build_parser()  # every pipeline imported before forking
    child = FORK.Process(target=_child, args=([*argv, "--epochs", "1000", "--patience", "1000"],))
    child.start()
    scratch = tmp_path / ".r.partial"
    deadline = time.monotonic() + 60
    while not scratch.exists() and time.monotonic() < deadline:  # training has begun
        time.sleep(0.01)
    time.sleep(1.0)
    assert child.is_alive() and child.pid is not None
    os.kill(child.pid, signum)
    child.join(60)
    assert child.exitcode == 128 + signum
    err = capfd.readouterr().err
    assert "Traceback" not in err
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith(f"cmrec train: stopped by {signal.Signals(signum).name}; ")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no run folder, no scratch folder
    assert cli.main([*argv, "--epochs", "1"]) == 0  # run again: it finishes
    assert (out / "checkpoint.pt").is_file()
