"""Two refresh jobs on one store: nothing lost, each job's report its own; a rebuild is never run
beside a refresh; a structurally damaged partition is one clear error.

The jobs run in forked children started together, with 2-user batches so that their batches
interleave if nothing serialises them (before the writer locks, the second job overwrote the
first's users and both exited 0). ``CMREC_STRESS_ROUNDS`` sets the rounds (CI: 2; the closing note
of the concurrency issue ran 20).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cmrec import cli
from cmrec.store import MemoryStore, store_lock
from tests.serving.conftest import Snapshot, dump, refresh_argv, snapshot, stream

FORK = multiprocessing.get_context("fork")
ROUNDS = int(os.environ.get("CMREC_STRESS_ROUNDS", "2"))


def _child(argv: list[str], report: Path) -> None:
    torch.set_num_threads(1)
    with open(report, "w") as out, contextlib.redirect_stdout(out):  # the job's one-line report
        code = cli.main(argv)
    os._exit(code)


def _split(log: pd.DataFrame, first: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each user's first `first` clicks, and the rest (a later delivery)."""
    rank = log.groupby("user_id").cumcount().to_numpy()
    return log[rank < first], log[rank >= first]


def _applied(report: Path) -> int:
    text = report.read_text()
    return int(text.split(" applied")[0].rsplit(": ", 1)[1].replace(",", ""))


def test_two_concurrent_refreshes_lose_nothing(tmp_path: Path, run_dir: Path) -> None:
    log = stream(users=40, length=40, seed=6)
    base, later = _split(log, 25)
    files = {"base": tmp_path / "base.parquet", "later": tmp_path / "later.parquet"}
    base.to_parquet(files["base"])
    later.to_parquet(files["later"])

    def argv(store: Path, name: str) -> list[str]:
        return refresh_argv(run_dir, files[name], store, "--batch-users", "2")

    # The two orders the jobs may take the store in: base then later (every click kept), or
    # later then base (base's clicks are older than the watermark: dropped as late, and reported).
    # The jobs run in children on one thread each, these in this process: compared as a store
    # guarantees across thread counts (bookkeeping exactly, memories to float rounding).
    sequential: dict[str, Snapshot] = {}
    for order in (("base", "later"), ("later", "base")):
        store = tmp_path / f"sequential-{order[0]}"
        for name in order:
            assert cli.main(argv(store, name)) == 0
        sequential[order[0]] = snapshot(store)
    assert sequential["base"].bookkeeping != sequential["later"].bookkeeping

    cli.build_parser()  # import every pipeline before forking
    orders = []
    for round_ in range(ROUNDS):
        store = tmp_path / f"live-{round_}"
        reports = {name: tmp_path / f"{name}-{round_}.txt" for name in files}
        children = [FORK.Process(target=_child, args=(argv(store, n), reports[n])) for n in files]
        for child in children:
            child.start()
        for child in children:
            child.join(120)
            assert child.exitcode == 0
        final = snapshot(store)
        matches = [name for name, result in sequential.items() if final.matches(result)]
        assert len(matches) == 1, "events lost: not a sequential result"
        first = matches[0]
        orders.append(first)
        applied = {name: _applied(report) for name, report in reports.items()}
        assert applied["later"] == len(later)  # later's clicks are newer: applied in either order
        assert applied["base"] == (len(base) if first == "base" else 0)
        with MemoryStore(store) as memories:
            consumed = sum(state.events for state in memories)
        assert consumed == applied["base"] + applied["later"]  # each job reported what it applied
    print(f"{ROUNDS} rounds, first job per round: {orders}")


@pytest.fixture
def refreshed(tmp_path: Path, run_dir: Path, log_file: Path) -> tuple[Path, list[str]]:
    """A store refreshed with the whole log, and the refresh's command line."""
    store = tmp_path / "store"
    argv = refresh_argv(run_dir, log_file, store)
    assert cli.main(argv) == 0
    return store, argv


def test_a_rebuild_is_refused_while_a_refresh_holds_the_store(
    refreshed: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    store, argv = refreshed
    before = dump(store)
    with store_lock(store, exclusive=False):  # a refresh running in another process
        assert cli.main([*argv, "--rebuild"]) == 2
    assert "another refresh or rebuild is using this store" in capsys.readouterr().err
    assert dump(store) == before
    assert not store.with_name("store.rebuild").exists()
    with store_lock(store, exclusive=True):  # a rebuild running in another process
        assert cli.main(argv) == 2
    assert "being rebuilt by another process" in capsys.readouterr().err


def test_a_damaged_partition_file_is_one_clear_error(
    tmp_path: Path, run_dir: Path, refreshed: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    store, refresh = refreshed
    part = store / "part-00000-of-00001.sqlite"
    with sqlite3.connect(part) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = part.stat().st_size
    assert size >= 4 * 16_384
    with open(part, "r+b") as handle:  # overwrite pages 2.. (the users table's b-tree) with noise
        handle.seek(16_384)
        handle.write(np.random.default_rng(0).integers(0, 256, size - 16_384, dtype=np.uint8).tobytes())
    requests = tmp_path / "requests.csv"
    pd.DataFrame({"user_id": ["1", "2"], "item_id": [1, 2]}).to_csv(requests, index=False)
    commands = {
        "refresh": refresh,
        "score": ["score", "--run", str(run_dir), "--store", str(store), "--requests", str(requests),
                  "--out", str(tmp_path / "scores.csv")],
        "forget": ["forget", "--store", str(store), "--user", "1"],
    }  # fmt: skip
    for name, argv in commands.items():
        assert cli.main(argv) == 2, name
        err = capsys.readouterr().err
        assert str(part) in err and "--rebuild" in err, (name, err)
        assert "Traceback" not in err and err.count("\n") == 1, (name, err)
    assert not (tmp_path / "scores.csv").exists()
