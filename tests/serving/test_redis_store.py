"""The Redis backend against a real redis-server, beside the folder store: the same states, the same
exactly-once refresh, crash safety (a killed refresh, a killed server), concurrent workers, clear
errors. See `tests/redis_server.py` for the server (`.ci/run` starts one; else one is started here).

Refresh children are forked (the test process has torch and the pipelines imported), one thread
each, as in test_crash_safety.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import redis
import torch

from cmrec import cli
from cmrec.data import validate_events
from cmrec.jobs import refresh_store, score_histories, score_requests
from cmrec.store import (
    RedisLocation,
    RedisStore,
    StoreError,
    StoreInfo,
    StoreLocation,
    UserState,
    memory_store,
    parse_store,
    partition_of,
)
from cmrec.store.redis_store import MAGIC
from tests.redis_server import RedisServer, free_port, store_url
from tests.serving.conftest import (
    MEMORY_TOLERANCE,
    assert_same_store,
    bookkeeping,
    make_run,
    refresh_argv,
    snapshot,
    stream,
)
from tests.serving.test_batch_path import requests_of

FORK = multiprocessing.get_context("fork")


def states(location: StoreLocation) -> dict[str, tuple[Any, ...]]:
    """Every stored user as comparable values, memory bytes exactly, by user id: what a store holds
    when nothing was written since (`assert_same_store` compares two computations of it)."""
    with memory_store(location) as store:
        return {s.user_id: (s.memory.numpy().tobytes(), *bookkeeping(s)) for s in store}


def _child(argv: list[str], report: Path | None = None) -> None:
    torch.set_num_threads(1)
    with open(report or os.devnull, "w") as out, contextlib.redirect_stdout(out):
        code = cli.main(argv)
    os._exit(code)


def _start(argv: list[str], report: Path | None = None) -> multiprocessing.process.BaseProcess:
    cli.build_parser()  # import every pipeline before forking
    child = FORK.Process(target=_child, args=(argv, report))
    child.start()
    return child


def _users_in(url: str) -> int:
    """Users committed so far in a one-partition Redis store (its user set's size)."""
    location = parse_store(url)
    assert not isinstance(location, Path)
    client = redis.Redis(host=location.host, port=location.port, db=location.db)
    try:
        return int(client.scard(f"cmrec:{{{location.name}:p00000}}:users"))
    except redis.exceptions.ConnectionError:
        return 0
    finally:
        client.close()


INFO = StoreInfo("f" * 40, "cm", 3, 4, 20, True, "float16", 4)


def _state(user: str, events: int, fingerprint: str = "f" * 40) -> UserState:
    return UserState(
        user_id=user,
        memory=torch.full((3, 4), float(events)),
        pending_items=np.array([1, 2], dtype=np.int32),
        pending_categories=np.array([3, 4], dtype=np.int32),
        watermark_time=17.5 + events,
        watermark_items=("a", "b"),
        events=events,
        fingerprint=fingerprint,
    )


def test_round_trip_update_delete_and_refusals(redis_address: str) -> None:
    location = parse_store(store_url(redis_address))
    assert isinstance(location, RedisLocation)
    with pytest.raises(StoreError, match="no memory store here"):
        RedisStore(location)
    with RedisStore(location, INFO, create=True) as store:
        store.put_many([_state("u1", 5), _state("u2", 0)])
        got = store.get_many(["u1", "u2", "nobody"])
        assert sorted(got) == ["u1", "u2"] and len(store) == 2
        assert got["u1"].watermark_time == 22.5 and got["u1"].pending_items.tolist() == [1, 2]
        assert torch.equal(got["u1"].memory, torch.full((3, 4), 5.0))  # float16 holds 5.0 exactly

        def apply(ids: list[str], found: dict[str, UserState]) -> list[UserState]:
            return [_state(u, found[u].events + 1 if u in found else 1) for u in ids]

        store.update_many(["u1", "u3"], apply)
        assert {u: s.events for u, s in store.get_many(["u1", "u2", "u3"]).items()} == {
            "u1": 6,
            "u2": 0,
            "u3": 1,
        }
        assert store.delete(["u1", "nobody"]) == 1 and len(store) == 2
        assert sorted(s.user_id for s in store) == ["u2", "u3"]
        with pytest.raises(StoreError, match="were not read were returned"):
            store.update_many(["u2"], lambda ids, found: [_state("u9", 1)])
    other = StoreInfo("e" * 40, "cm", 3, 4, 20, True, "float16", 4)
    with pytest.raises(StoreError, match="holds memories written by model 'cm'.*new store name"):
        RedisStore(location, other)
    with pytest.raises(StoreError, match="partitions is 4 in the store, 2 expected"):
        RedisStore(location, StoreInfo("f" * 40, "cm", 3, 4, 20, True, "float16", 2))
    with RedisStore(location) as store:
        assert store.drop() == 2
    with pytest.raises(StoreError, match="no memory store here"):
        RedisStore(location)


def test_foreign_keys_are_refused_and_nothing_is_written(redis_address: str) -> None:
    location = parse_store(store_url(redis_address))
    assert not isinstance(location, Path)
    client = redis.Redis(host=location.host, port=location.port)
    with RedisStore(location, INFO, create=True) as store:
        store.put_many([_state("u1", 1)])
        foreign = f"cmrec:{{{location.name}:p{partition_of('u2', 4):05d}}}:u:u2"
        client.set(foreign, b"somebody else's value")
        with pytest.raises(StoreError, match="holds something that is not a cmrec memory"):
            store.put_many([_state("u2", 1)])
        assert client.get(foreign) == b"somebody else's value"
        with pytest.raises(StoreError, match="not a cmrec memory value"):
            store.get_many(["u2"])
        client.delete(foreign)
        client.hset(foreign, "field", "value")  # another type of value
        with pytest.raises(StoreError, match="not a cmrec memory"):
            store.delete(["u2"])
        assert client.type(foreign) == b"hash"
        client.delete(foreign)
        store.put_many([_state("u2", 2)])
        assert store.get_many(["u2"])["u2"].events == 2
    meta = f"cmrec:{{{location.name}x}}:meta"
    client.set(meta, "not json")
    with pytest.raises(StoreError, match="not a cmrec store's meta"):
        RedisStore(location.with_name(location.name + "x"))
    client.delete(meta)
    client.close()


def test_refresh_into_foreign_keys_exits_2_and_writes_nothing(
    tmp_path: Path, redis_address: str, run_dir: Path, log: pd.DataFrame, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "events.parquet"
    log.to_parquet(events)
    url = store_url(redis_address)
    location = parse_store(url)
    assert isinstance(location, RedisLocation)
    client = redis.Redis(host=location.host, port=location.port)
    meta = f"cmrec:{{{location.name}}}:meta"
    client.hset(meta, "owner", "another application")  # the store's meta key, another type
    assert cli.main(refresh_argv(run_dir, events, url)) == 2
    assert "holds another type of value" in capsys.readouterr().err
    assert client.keys(f"cmrec:{{{location.name}*") == [meta.encode()]  # nothing else written
    client.delete(meta)
    assert cli.main(refresh_argv(run_dir, events, url, "--partitions", "1")) == 0
    user = str(log["user_id"].iloc[0])
    victim = f"cmrec:{{{location.name}:p00000}}:u:{user}"
    client.set(victim, b"not ours")
    before = states_without(location, user)
    assert cli.main(refresh_argv(run_dir, events, url)) == 2  # the check reads the user: refused
    assert "not a cmrec memory value" in capsys.readouterr().err
    assert client.get(victim) == b"not ours" and states_without(location, user) == before
    client.close()


def states_without(location: RedisLocation, user: str) -> dict[str, tuple[Any, ...]]:
    """`states` of every user but `user` (whose key holds a foreign value)."""
    with RedisStore(location) as store:
        ids = [u for u in store._members(0) if u != user]
        return {u: (s.memory.numpy().tobytes(), s.events) for u, s in store.get_many(ids).items()}


def test_damaged_value_is_one_clear_error(redis_address: str) -> None:
    location = parse_store(store_url(redis_address))
    assert not isinstance(location, Path)
    client = redis.Redis(host=location.host, port=location.port)
    with RedisStore(location, INFO, create=True) as store:
        store.put_many([_state("u1", 1)])
        key = next(k for k in client.scan_iter(f"cmrec:{{{location.name}:*}}:u:u1"))
        value = client.get(key)
        assert value is not None and value.startswith(MAGIC)
        client.set(key, value[:-6] + bytes([value[-6] ^ 0xFF]) + value[-5:])  # a flipped pending byte
        with pytest.raises(StoreError, match="user 'u1': damaged value \\(checksum mismatch\\)"):
            store.get_many(["u1"])
    client.close()


def test_addresses_credentials_and_unreachable_servers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], run_dir: Path
) -> None:
    assert parse_store("runs/store") == Path("runs/store")
    assert (
        str(parse_store("rediss://cache.internal:6380/2/cm-prod")) == "rediss://cache.internal:6380/2/cm-prod"
    )
    assert str(parse_store("redis://h")) == "redis://h:6379/0/memories"
    for bad, message in [
        ("redis://:secret@h:6379/0/x", "do not put credentials"),
        ("redis://h:6379/zero/x", "database number must be an integer"),
        ("redis://h:6379/0/a b", "store name"),
        ("redis://h:6379/0/x/y", "the path is /DB/NAME"),
        ("memcached://h/x", "a folder or a redis://"),
    ]:
        with pytest.raises(StoreError, match=message):
            parse_store(bad)
    events = tmp_path / "e.csv"
    stream(users=3, length=8).to_csv(events, index=False)
    argv = ["refresh", "--run", str(run_dir), "--events", str(events), "--no-progress", "--store"]
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, "redis://:secret@127.0.0.1:1/0/x"])
    assert exit_.value.code == 2
    assert "secret" not in capsys.readouterr().err  # the usage error does not echo the password

    port = free_port()
    assert cli.main([*argv, f"redis://127.0.0.1:{port}/0/x"]) == 2
    assert "cannot reach the Redis server" in capsys.readouterr().err

    server = RedisServer(tmp_path / "locked", password="right-password")
    try:
        url = f"redis://{server.address}/0/x"
        assert cli.main([*argv, url]) == 2
        assert "needs a password" in capsys.readouterr().err
        monkeypatch.setenv("CMREC_REDIS_PASSWORD", "wrong-password")
        assert cli.main([*argv, url]) == 2
        err = capsys.readouterr().err
        assert "refused the credentials" in err and "wrong-password" not in err
        monkeypatch.setenv("CMREC_REDIS_PASSWORD", "right-password")
        assert cli.main([*argv, url]) == 0
        assert "right-password" not in capsys.readouterr().out
        assert len(states(parse_store(url))) == 3
    finally:
        server.stop()


def test_redis_equals_folder_chunks_equal_whole_and_reruns_change_nothing(
    tmp_path: Path, redis_address: str, run_dir: Path, log: pd.DataFrame, capsys: pytest.CaptureFixture[str]
) -> None:
    whole_file = tmp_path / "whole.parquet"
    log.to_parquet(whole_file)
    folder, url = tmp_path / "folder", store_url(redis_address)
    assert cli.main(refresh_argv(run_dir, whole_file, folder, "--partitions", "3")) == 0
    assert cli.main(refresh_argv(run_dir, whole_file, url, "--partitions", "3")) == 0
    assert f"store {url} (3 partition(s)" in capsys.readouterr().out
    assert_same_store(parse_store(url), folder)  # the same bookkeeping, the same memories
    workers = store_url(redis_address)  # two worker processes, each owning its partitions
    two = ["--partitions", "3", "--num-workers", "2"]
    assert cli.main(refresh_argv(run_dir, whole_file, workers, *two)) == 0
    assert_same_store(parse_store(workers), folder)  # worker processes: other threads, other batches

    chunks = tmp_path / "chunks"
    bounds = np.linspace(0, len(log), 4).astype(int)
    chunked = store_url(redis_address)
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        log.iloc[a:b].to_parquet(chunks.with_name(f"chunk{i}.parquet"))
        assert cli.main(refresh_argv(run_dir, chunks.with_name(f"chunk{i}.parquet"), chunked)) == 0
    # Bookkeeping exactly, memories to 1e-5 (one partition against three).
    assert_same_store(parse_store(chunked), parse_store(url), same_partitions=False)
    before = states(parse_store(chunked))
    for i in (0, 2):  # re-delivered files, and the whole log again
        assert cli.main(refresh_argv(run_dir, chunks.with_name(f"chunk{i}.parquet"), chunked)) == 0
    assert cli.main(refresh_argv(run_dir, whole_file, chunked)) == 0
    assert "0 applied" in capsys.readouterr().out.splitlines()[-1]
    assert states(parse_store(chunked)) == before

    # Scores from the Redis store == the batch path over the same clicks.
    requests = requests_of(log)
    stored = score_requests(run_dir, parse_store(chunked), requests).frame["score"].to_numpy()
    batch = score_histories(run_dir, validate_events(log), requests)
    np.testing.assert_allclose(stored, batch, rtol=0, atol=1e-5)
    requests.to_csv(tmp_path / "requests.csv", index=False)
    out = tmp_path / "scores.csv"
    score = ["score", "--run", str(run_dir), "--store", chunked, "--requests", str(tmp_path / "requests.csv")]
    assert cli.main([*score, "--out", str(out)]) == 0
    np.testing.assert_allclose(pd.read_csv(out)["score"].to_numpy(), stored, rtol=1e-6)

    # Another model's run is refused by refresh and score; the store is unchanged.
    other = make_run(tmp_path / "other", log, seed=7)
    capsys.readouterr()
    assert cli.main(refresh_argv(other, whole_file, chunked)) == 2
    assert "new store name" in capsys.readouterr().err
    assert cli.main(["score", "--run", str(other), *score[3:], "--out", str(tmp_path / "x.csv")]) == 2
    assert not (tmp_path / "x.csv").exists()
    assert cli.main([*refresh_argv(run_dir, whole_file, chunked), "--rebuild"]) == 2
    assert "--rebuild of a Redis store" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    log.drop(columns="timestamp").to_csv(bad, index=False)
    assert cli.main(refresh_argv(run_dir, bad, chunked)) == 2
    assert states(parse_store(chunked)) == before

    # forget: one user, then the whole store.
    user = str(log["user_id"].iloc[0])
    assert cli.main(["forget", "--store", chunked, "--user", user, "nobody"]) == 0
    assert "deleted 1 of 2" in capsys.readouterr().out
    assert user not in states(parse_store(chunked)) and len(states(parse_store(chunked))) == len(before) - 1
    assert cli.main(["forget", "--store", chunked, "--all"]) == 0
    assert f"deleted all {len(before) - 1} user(s)" in capsys.readouterr().out
    with pytest.raises(StoreError, match="no memory store here"):
        RedisStore(parse_store(chunked))


def test_evaluate_via_a_redis_scratch_store(
    tmp_path: Path, redis_address: str, run_dir: Path, log_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["evaluate", "--run", str(run_dir), "--events", str(log_file), "--via-store", "float32"]
    assert cli.main([*base, "--out", str(tmp_path / "folder.json")]) == 0
    url = store_url(redis_address)
    assert cli.main([*base, "--scratch-store", url, "--out", str(tmp_path / "redis.json")]) == 0
    folder = pd.read_json(tmp_path / "folder.json", typ="series")["via_store"]["float32"]
    remote = pd.read_json(tmp_path / "redis.json", typ="series")["via_store"]["float32"]
    for result in (folder, remote):
        assert result["max_abs_probability_difference"] <= 1e-5
    bound = remote["auc_sensitivity"] + folder["auc_sensitivity"]  # both against the batch path
    assert abs(remote["auc"] - folder["auc"]) <= bound < 1e-3
    with pytest.raises(StoreError, match="no memory store here"):
        RedisStore(parse_store(url + ".float32"))  # dropped afterwards


def test_sigkill_at_random_points_then_rerun_equals_uninterrupted(
    tmp_path: Path, redis_address: str, run_dir: Path
) -> None:
    log = stream(users=150, length=24, seed=3)
    events = tmp_path / "events.parquet"
    log.to_parquet(events)
    users = log["user_id"].nunique()
    flags = ["--batch-users", "3"]
    reference = store_url(redis_address, "reference")
    refresh_store(run_dir, events, parse_store(reference), batch_users=3, progress=False)

    url = store_url(redis_address, "killed")
    rng = np.random.default_rng(0)
    targets = np.sort(rng.choice(np.arange(users - 10), size=12, replace=False))
    kills: list[int] = []
    for target in targets:
        child = _start([*refresh_argv(run_dir, events, url, *flags)])
        deadline = time.monotonic() + 60
        while child.is_alive() and _users_in(url) < target and time.monotonic() < deadline:
            time.sleep(0.0005)
        time.sleep(float(rng.uniform(0, 0.002)))  # computing, inside the script call, between batches
        if child.pid is not None and child.is_alive():
            os.kill(child.pid, signal.SIGKILL)
        child.join(30)
        if child.exitcode == -signal.SIGKILL:
            kills.append(_users_in(url))
    print(f"SIGKILL landed with {kills} of {users} users committed")
    assert len(kills) >= 10, f"only {len(kills)} kills landed while the refresh ran: {kills}"
    assert len(set(kills)) >= 5
    assert all(k % 3 == 0 for k in kills)  # whole 3-user batches only: a batch is one script
    rerun = _start(refresh_argv(run_dir, events, url, *flags))
    rerun.join(120)
    assert rerun.exitcode == 0
    assert_same_store(parse_store(url), parse_store(reference))  # nothing lost, nothing twice
    assert {u: s[5] for u, s in states(parse_store(url)).items()} == (
        log["user_id"].astype(str).value_counts().to_dict()
    )


def test_server_killed_mid_refresh_then_rerun_completes(tmp_path: Path, run_dir: Path) -> None:
    """SIGKILL the Redis server (append-only file, fsync always) while a refresh writes, start it
    again: the refresh either finishes (the client reconnects) or fails with a clear error, and a
    rerun ends where an uninterrupted run does."""
    server = RedisServer(tmp_path / "server", appendonly=True)
    try:
        log = stream(users=120, length=24, seed=8)
        events = tmp_path / "events.parquet"
        log.to_parquet(events)
        reference = store_url(server.address, "reference")
        refresh_store(run_dir, events, parse_store(reference), batch_users=3, progress=False)
        expected = snapshot(parse_store(reference))
        outcomes = []
        for round_, target in enumerate((15, 45, 90)):
            url = store_url(server.address, f"crash{round_}")
            report = tmp_path / f"report{round_}.txt"
            err = tmp_path / f"err{round_}.txt"
            child = _start_with_stderr(refresh_argv(run_dir, events, url, "--batch-users", "3"), report, err)
            deadline = time.monotonic() + 60
            while child.is_alive() and _users_in(url) < target and time.monotonic() < deadline:
                time.sleep(0.0005)
            server.kill()
            time.sleep(0.2)
            server.start()
            child.join(120)
            outcomes.append(child.exitcode)
            if child.exitcode != 0:
                assert child.exitcode == 2
                assert "Redis server" in err.read_text(), err.read_text()
                rerun = _start(refresh_argv(run_dir, events, url, "--batch-users", "3"))
                rerun.join(120)
                assert rerun.exitcode == 0
            assert_same_store(parse_store(url), expected)
        print(f"refresh exit codes after the server was killed: {outcomes}")
    finally:
        server.stop()


def _stderr_child(argv: list[str], report: Path, err: Path) -> None:
    torch.set_num_threads(1)
    with open(report, "w") as out, open(err, "w") as error:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(error):
            code = cli.main(argv)
    os._exit(code)


def _start_with_stderr(argv: list[str], report: Path, err: Path) -> multiprocessing.process.BaseProcess:
    cli.build_parser()
    child = FORK.Process(target=_stderr_child, args=(argv, report, err))
    child.start()
    return child


def _applied(report: Path) -> int:
    text = report.read_text()
    return int(text.split(" applied")[0].rsplit(": ", 1)[1].replace(",", ""))


@pytest.mark.parametrize("overlap", [False, True])
def test_concurrent_workers_and_a_reader_see_whole_users(
    tmp_path: Path, redis_address: str, run_dir: Path, overlap: bool
) -> None:
    """Two refresh jobs at once, on disjoint users, or both on every user from opposite ends (the
    same events, users in opposite orders: they meet in the middle, and each user's events must be
    applied exactly once between them), while this process reads every user in a loop: each read
    is a user's state before or after a whole batch, never between."""
    log = stream(users=200, length=30, seed=9)
    users = sorted(log["user_id"].astype(str).unique())
    by_user = log.assign(key=log["user_id"].astype(str))
    if overlap:  # each user's rows stay in time order; the users come in opposite orders
        frames = [
            by_user.sort_values("key", kind="stable").drop(columns="key"),
            by_user.sort_values("key", kind="stable", ascending=False).drop(columns="key"),
        ]
    else:
        frames = [log[log["user_id"].astype(str).isin(users[i::2])] for i in (0, 1)]
    files = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    for frame, file in zip(frames, files, strict=True):
        frame.to_parquet(file)
    reference = store_url(redis_address, "reference")
    whole = tmp_path / "whole.parquet"
    log.to_parquet(whole)
    refresh_store(run_dir, whole, parse_store(reference), batch_users=2, progress=False)
    expected = snapshot(parse_store(reference))
    atol = MEMORY_TOLERANCE[expected.info.dtype]

    def same(user: str, state: UserState) -> None:
        got = bookkeeping(state)
        assert got == expected.bookkeeping[user], f"{user}: {got}: half a refresh"
        memory = expected.memories[user]  # other threads, batches of other users: to float rounding
        np.testing.assert_allclose(state.memory.numpy(), memory, rtol=0, atol=atol)

    url = store_url(redis_address, "live")
    reports = [tmp_path / "a.txt", tmp_path / "b.txt"]
    # Create the store first, so that the reader can open it while the jobs write.
    with RedisStore(parse_store(reference)) as existing:
        with RedisStore(parse_store(url), existing.info, create=True):
            pass
    children = [
        _start(refresh_argv(run_dir, file, url, "--batch-users", "2"), report)
        for file, report in zip(files, reports, strict=True)
    ]
    reads, partial = 0, 0
    with RedisStore(parse_store(url)) as reader:
        while any(c.is_alive() for c in children) or reads == 0:
            found = reader.get_many(users)  # checksums are verified on every read
            for user, state in found.items():
                same(user, state)
            partial += 0 < len(found) < len(users)
            reads += 1
        for child in children:
            child.join(120)
            assert child.exitcode == 0
        final = reader.get_many(users)
    assert sorted(final) == users
    for user, state in final.items():
        same(user, state)
    applied = [_applied(r) for r in reports]
    assert sum(applied) == len(log)  # every event applied once, by one job or the other
    if overlap:
        assert min(applied) > 0  # they met: each job applied some users, the other dropped them
    else:
        assert applied == [len(frame) for frame in frames]
    assert_same_store(parse_store(url), expected)  # as one job, to float rounding (other batches)
    print(f"overlap={overlap}: {reads} reads, {partial} while some users were written; applied {applied}")
    assert reads > 3 and partial > 0
