"""A refresh killed with SIGKILL at random points and rerun ends where an uninterrupted run does
(bookkeeping exactly, memories to float rounding); a reader scoring while a refresh writes only
ever sees whole users.

The refresh runs in forked children (the test process has torch and the pipelines imported, so a
child starts in milliseconds); each child uses one thread, as forked OpenMP pools would hang.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import sqlite3
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cmrec import cli
from cmrec.store import MemoryStore
from tests.serving.conftest import MEMORY_TOLERANCE, assert_same_store, bookkeeping, stream

FORK = multiprocessing.get_context("fork")


def _refresh_child(argv: list[str]) -> None:
    torch.set_num_threads(1)
    os._exit(cli.main(argv))


def _start(argv: list[str]) -> multiprocessing.process.BaseProcess:
    cli.build_parser()  # import every pipeline before forking
    child = FORK.Process(target=_refresh_child, args=(argv,))
    child.start()
    return child


def _finish(argv: list[str]) -> None:
    child = _start(argv)
    child.join(120)
    assert child.exitcode == 0, f"refresh child ended with {child.exitcode}"


def _committed_users(store: Path) -> int:
    part = store / "part-00000-of-00001.sqlite"
    try:
        with sqlite3.connect(part, timeout=5) as db:
            return int(db.execute("SELECT COUNT(*) FROM users").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_sigkill_at_random_points_then_rerun_equals_uninterrupted(tmp_path: Path, run_dir: Path) -> None:
    log = stream(users=150, length=24, seed=3)
    events = tmp_path / "events.parquet"
    log.to_parquet(events)
    users = log["user_id"].nunique()

    def argv(store: Path) -> list[str]:
        return ["refresh", "--run", str(run_dir), "--events", str(events), "--store", str(store)]

    flags = ["--batch-users", "3", "--no-progress"]
    _finish([*argv(tmp_path / "reference"), *flags])

    store = tmp_path / "killed"
    rng = np.random.default_rng(0)
    targets = np.sort(rng.choice(np.arange(users - 10), size=12, replace=False))
    kills: list[int] = []  # users committed when each kill landed
    for target in targets:
        child = _start([*argv(store), *flags])
        deadline = time.monotonic() + 60
        while child.is_alive() and _committed_users(store) < target and time.monotonic() < deadline:
            time.sleep(0.0005)
        time.sleep(float(rng.uniform(0, 0.002)))  # land anywhere: computing, mid-transaction, between
        if child.pid is not None and child.is_alive():
            os.kill(child.pid, signal.SIGKILL)
        child.join(30)
        if child.exitcode == -signal.SIGKILL:
            kills.append(_committed_users(store))
    print(f"SIGKILL landed with {kills} of {users} users committed")
    assert len(kills) >= 10, f"only {len(kills)} kills landed while the refresh ran: {kills}"
    assert len(set(kills)) >= 5  # at different points of the run
    _finish([*argv(store), *flags])  # the rerun completes the work

    assert_same_store(store, tmp_path / "reference")  # nothing lost, nothing applied twice
    with sqlite3.connect(store / "part-00000-of-00001.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with MemoryStore(store) as memories:
        consumed = {s.user_id: s.events for s in memories}
    assert consumed == log["user_id"].astype(str).value_counts().to_dict()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_sigint_mid_refresh_then_rerun_equals_uninterrupted(
    tmp_path: Path, run_dir: Path, signum: int, capfd: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C (or a SIGTERM from a scheduler) mid-refresh: one line, exit 128 + signal, the batches
    already committed stay, the one in flight is rolled back, and a rerun ends where an
    uninterrupted refresh does."""
    log = stream(users=150, length=24, seed=5)
    events = tmp_path / "events.parquet"
    log.to_parquet(events)

    def argv(store: Path) -> list[str]:
        base = ["refresh", "--run", str(run_dir), "--events", str(events), "--store", str(store)]
        return [*base, "--batch-users", "2", "--no-progress"]

    _finish(argv(tmp_path / "reference"))
    capfd.readouterr()
    store = tmp_path / "stopped"
    child = _start(argv(store))
    deadline = time.monotonic() + 60
    while child.is_alive() and _committed_users(store) < 40 and time.monotonic() < deadline:
        time.sleep(0.0005)
    assert child.is_alive() and child.pid is not None, "the refresh ended before the signal"
    os.kill(child.pid, signum)
    child.join(60)
    assert child.exitcode == 128 + signum
    committed = _committed_users(store)
    assert 40 <= committed < log["user_id"].nunique()
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines() == [
        f"cmrec refresh: stopped by {signal.Signals(signum).name}; every output is written whole or not "
        "at all (a store keeps the batches it finished), so run the command again to finish"
    ]
    _finish(argv(store))
    assert_same_store(store, tmp_path / "reference")


def test_reader_sees_whole_users_while_a_refresh_writes(tmp_path: Path, run_dir: Path) -> None:
    log = stream(users=40, length=40, seed=4)
    bounds = np.linspace(0, len(log), 5).astype(int)
    chunks = []
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        chunks.append(tmp_path / f"chunk{i}.parquet")
        log.iloc[a:b].to_parquet(chunks[-1])

    def argv(store: Path, chunk: Path) -> list[str]:
        base = ["refresh", "--run", str(run_dir), "--events", str(chunk), "--store", str(store)]
        return [*base, "--batch-users", "2", "--no-progress"]

    # Every state a user may legitimately be in: after chunk 0, 1, 2, 3.
    allowed: dict[tuple[str, int], tuple[tuple[object, ...], torch.Tensor]] = {}
    for chunk in chunks:
        _finish(argv(tmp_path / "reference", chunk))
        with MemoryStore(tmp_path / "reference") as reference:
            allowed.update({(s.user_id, s.events): (bookkeeping(s), s.memory) for s in reference})
            atol = MEMORY_TOLERANCE[reference.info.dtype]

    def writer() -> None:
        torch.set_num_threads(1)
        for chunk in chunks:
            if cli.main(argv(tmp_path / "live", chunk)) != 0:
                os._exit(1)
        os._exit(0)

    cli.build_parser()
    child = FORK.Process(target=writer)
    child.start()
    ids = sorted(log["user_id"].astype(str).unique())
    seen: set[tuple[str, int]] = set()
    reads = 0
    while child.is_alive() or reads == 0:
        if not (tmp_path / "live" / "part-00000-of-00001.sqlite").exists():
            continue
        try:
            store = MemoryStore(tmp_path / "live")
        except Exception:  # the writer is still creating the file
            continue
        with store:
            for state in store.get_many(ids).values():  # checksums are verified on every read
                key = (state.user_id, state.events)
                assert key in allowed, f"user {key[0]} seen after {key[1]} events: not a whole refresh"
                assert bookkeeping(state) == allowed[key][0]
                torch.testing.assert_close(state.memory, allowed[key][1], rtol=0, atol=atol)
                seen.add(key)
        reads += 1
    child.join(60)
    assert child.exitcode == 0
    assert reads > 5 and len(seen) > len(ids)  # intermediate states were observed, not just the end


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_stored_precision_round_trip(tmp_path: Path, run_dir: Path, dtype: str) -> None:
    log = stream(users=6, length=20, seed=5)
    events = tmp_path / "e.csv"
    log.to_csv(events, index=False)
    argv = ["refresh", "--run", str(run_dir), "--events", str(events), "--store", str(tmp_path / "s")]
    assert cli.main([*argv, "--dtype", dtype, "--no-progress"]) == 0
    reference = tmp_path / "ref"
    assert cli.main([*argv[:-1], str(reference), "--no-progress"]) == 0
    with MemoryStore(tmp_path / "s") as low, MemoryStore(reference) as full:
        ids = sorted(s.user_id for s in full)
        a, b = low.get_many(ids), full.get_many(ids)
    tolerance = {"float32": 0.0, "float16": 2e-3, "bfloat16": 2e-2}[dtype]
    for user in ids:
        torch.testing.assert_close(a[user].memory, b[user].memory, atol=tolerance * 4, rtol=tolerance)
    assert pd.Series([a[u].events for u in ids]).tolist() == [b[u].events for u in ids]
