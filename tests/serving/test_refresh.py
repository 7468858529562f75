"""Refresh invariants: chunked == whole == training path; reruns change nothing; bad input is refused."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from cmrec import cli
from cmrec.data import validate_events
from cmrec.precision import autocast
from cmrec.serving import Refresher, ServedModel, UserEvents
from cmrec.serving.refresh import _already_applied
from cmrec.serving.scorer import Scorer
from cmrec.store import MemoryStore, StoreError, partition_of
from tests.serving.conftest import dump, make_run, open_scorer


def refresh_frames(run_dir: Path, store: Path, frames: list[pd.DataFrame], batch_users: int = 5) -> None:
    served = ServedModel.load(run_dir)
    with MemoryStore(store, served.store_info(), create=True) as memories:
        refresher = Refresher(served, memories, batch_users=batch_users)
        for frame in frames:
            events = validate_events(frame, require_time_order=True)
            refresher.refresh(UserEvents.from_events(events, served.vocabs, "chunk"), show_progress=False)


def training_memories(run_dir: Path, log: pd.DataFrame) -> tuple[list[str], torch.Tensor]:
    """The training forward's memories over each user's full history (max_len >= every history):
    after every click for a model that writes its pending clicks, after the last whole segment for
    one that reads them (`cm`: `reads_recent`), as the store keeps them: then with the pending
    rows (`ContinualMemoryModel.pending_rows`) the training path reads for a target after the
    last click (its prefix sums of the clicks' values and the recurrent GRU's output)."""
    served = ServedModel.load(run_dir)
    events = validate_events(log)
    users = events["user_id"].astype(str)
    ids = list(dict.fromkeys(users))
    lengths = torch.tensor([int((users == u).sum()) for u in ids])
    items = torch.from_numpy(served.vocabs.items.encode(events["item_id"]))
    assert served.vocabs.categories is not None
    categories = torch.from_numpy(served.vocabs.categories.encode(events["category_id"]))
    history = KeyedJaggedTensor.from_lengths_sync(
        keys=["item", "category"],
        values=torch.cat([items, categories]),
        lengths=torch.cat([lengths, lengths]),
    )
    model = served.model
    with torch.no_grad():
        if not model.reads_recent:
            memory, *_ = model.build_memory(history)
            return ids, memory
        grid = model.history_grid(history)
        users = torch.arange(len(ids))
        pending = model.machine.target_pending(
            grid.trajectory, grid.initial, grid.mask, grid.keys, users, lengths
        )
    memories = torch.cat([grid.initial[:, None], grid.trajectory.states], dim=1)
    memory = memories[users, lengths // model.config.segment_len]
    assert pending.sums is not None and pending.recurrent is not None
    return ids, torch.cat([memory, pending.sums, pending.recurrent[:, None]], dim=1)


def memory_rows(scorer: Scorer) -> int:
    """R: the rows of the memory before a stored state's pending rows."""
    return int(scorer.served.state_shape[0] - getattr(scorer.model, "pending_rows", 0))


@pytest.mark.parametrize("reads_pending", [False, True], ids=["pending-written", "pending-read"])
def test_chunked_refresh_equals_whole_equals_training_path(
    tmp_path: Path, log: pd.DataFrame, reads_pending: bool
) -> None:
    run_dir = make_run(tmp_path / "run", log, recent_clicks=reads_pending)
    refresh_frames(run_dir, tmp_path / "whole", [log])
    ids, expected = training_memories(run_dir, log)
    whole = open_scorer(run_dir, tmp_path / "whole")
    memory, known = whole.memories(ids)
    assert known.all()
    torch.testing.assert_close(memory, expected, rtol=1e-5, atol=1e-5)

    items = log.groupby("user_id")["item_id"].first().reindex([int(u) for u in ids]).to_numpy()
    states = whole.store.get_many(ids)
    recent = whole._recent(ids, states) if reads_pending else None
    assert recent is None or recent[1].any()  # some users have pending clicks the head reads
    candidates = torch.from_numpy(whole.served.vocabs.items.encode(items))
    # From the memory rows alone the model computes the pending clicks' running form itself.
    reference = torch.sigmoid(whole.model.score(expected[:, : memory_rows(whole)], candidates, recent=recent))
    scores = whole.score(ids, items).probabilities
    np.testing.assert_allclose(scores, reference.detach().numpy(), rtol=1e-5, atol=1e-6)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(min_value=1, max_value=730), min_size=1, max_size=5, unique=True))
def test_refresh_in_any_chunks_equals_one_run(
    tmp_path_factory: pytest.TempPathFactory, run_dir: Path, log: pd.DataFrame, cuts: list[int]
) -> None:
    folder = tmp_path_factory.mktemp("chunks")
    bounds = [0, *sorted(cuts), len(log)]
    refresh_frames(run_dir, folder / "whole", [log])
    refresh_frames(run_dir, folder / "chunks", [log.iloc[a:b] for a, b in itertools.pairwise(bounds)])
    with MemoryStore(folder / "whole") as whole, MemoryStore(folder / "chunks") as chunked:
        ids = sorted(s.user_id for s in whole)
        a, b = whole.get_many(ids), chunked.get_many(ids)
    for user in ids:
        torch.testing.assert_close(b[user].memory, a[user].memory, rtol=1e-5, atol=1e-5)
        assert b[user].events == a[user].events == int((log["user_id"].astype(str) == user).sum())
        np.testing.assert_array_equal(b[user].pending_items, a[user].pending_items)
        assert (b[user].watermark_time, b[user].watermark_items) == (
            a[user].watermark_time,
            a[user].watermark_items,
        )


def test_rerun_and_redelivery_change_nothing(tmp_path: Path, run_dir: Path, log: pd.DataFrame) -> None:
    store = tmp_path / "store"
    first, second = log.iloc[:400], log.iloc[400:]
    refresh_frames(run_dir, store, [first, second])
    before = dump(store)
    # The same input again, an older file re-delivered, and an overlapping window of both.
    refresh_frames(run_dir, store, [log, first, log.iloc[350:450]])
    assert dump(store) == before


def test_ties_split_across_files_are_applied_once(tmp_path: Path, run_dir: Path) -> None:
    """Three clicks share a timestamp; the first file holds one of them, re-delivered with the rest."""
    frame = pd.DataFrame(
        {
            "user_id": [7] * 6,
            "item_id": [11, 12, 13, 14, 15, 16],
            "timestamp": [1, 2, 3, 3, 3, 4],
            "category_id": [3] * 6,
        }
    )
    refresh_frames(run_dir, tmp_path / "a", [frame.iloc[:3], frame.iloc[2:]])
    refresh_frames(run_dir, tmp_path / "b", [frame])
    with MemoryStore(tmp_path / "a") as a, MemoryStore(tmp_path / "b") as b:
        left, right = a.get_many(["7"])["7"], b.get_many(["7"])["7"]
    assert left.events == right.events == 6
    assert left.watermark_time == 4 and left.watermark_items == ("16",)
    torch.testing.assert_close(left.memory, right.memory)
    np.testing.assert_array_equal(left.pending_items, right.pending_items)


@pytest.mark.parametrize(
    ("group", "seen", "applied"),
    [
        (["a", "b", "c"], ("a", "b"), 2),  # re-delivered from the start of the timestamp, then new
        (["b", "c"], ("a", "b"), 1),  # re-delivered from inside it
        (["a"], ("a", "b"), 1),  # an older file that ended inside it
        (["c", "a"], ("a", "b"), 0),  # a continuation
        (["b", "x", "b"], ("b",), 1),
        (["x", "b"], ("b",), 0),
        (["a"], (), 0),
    ],
)
def test_watermark_ties(group: list[str], seen: tuple[str, ...], applied: int) -> None:
    assert _already_applied(group, seen) == applied


def test_new_users_start_from_the_initial_memory_and_pending_is_kept(tmp_path: Path, run_dir: Path) -> None:
    frame = pd.DataFrame(
        {"user_id": ["new"] * 3, "item_id": [11, 12, 13], "timestamp": [1, 2, 3], "category_id": [3] * 3}
    )
    refresh_frames(run_dir, tmp_path / "s", [frame])
    served = ServedModel.load(run_dir)
    with MemoryStore(tmp_path / "s") as store:
        state = store.get_many(["new"])["new"]
    # Three clicks: less than one segment (N = 4), so the memory is still the initial one ...
    rows = served.model.config.memory_rows  # type: ignore[attr-defined]
    torch.testing.assert_close(state.memory[:rows], served.model.initial_memory(1)[0])
    assert len(state.pending_items) == 3 and state.events == 3
    # ... and the pending rows hold the three clicks, as holding them on a new user's state does.
    assert served.vocabs.categories is not None
    items = served.vocabs.items.encode(pd.Series([11, 12, 13]))
    categories = served.vocabs.categories.encode(pd.Series([3, 3, 3]))
    held = served.hold_clicks(served.initial_state()[None], [items], [categories])[0]
    torch.testing.assert_close(state.memory, held)
    assert not torch.equal(held[rows:], served.initial_state()[rows:])


def test_workers_partition_users_and_match_one_process(tmp_path: Path, run_dir: Path, log_file: Path) -> None:
    base = ["refresh", "--run", str(run_dir), "--events", str(log_file), "--no-progress"]
    assert cli.main([*base, "--store", str(tmp_path / "one")]) == 0
    assert cli.main([*base, "--store", str(tmp_path / "two"), "--num-workers", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "two").iterdir() if p.suffix == ".sqlite") == [
        "part-00000-of-00002.sqlite",
        "part-00001-of-00002.sqlite",
    ]
    with MemoryStore(tmp_path / "one") as one, MemoryStore(tmp_path / "two") as two:
        ids = sorted(s.user_id for s in one)
        assert len(two) == len(ids) and two.owned == [0, 1]
        a, b = one.get_many(ids), two.get_many(ids)
    for part in (0, 1):
        with MemoryStore(tmp_path / "two", owned=[part]) as only:
            users = [state.user_id for state in only]
            assert users and all(partition_of(user, 2) == part for user in users)
    for user in ids:
        torch.testing.assert_close(b[user].memory, a[user].memory, rtol=1e-5, atol=1e-5)


def test_partition_hash_is_stable() -> None:
    """CRC-32 of the id: every machine and every Python process agrees (no salted hash())."""
    assert [partition_of(u, 8) for u in ("0", "1", "u-42", "ümlaut")] == [1, 7, 6, 0]


def test_float16_store_halves_memory_bytes_and_scores_closely(
    tmp_path: Path, run_dir: Path, log: pd.DataFrame, log_file: Path
) -> None:
    base = ["refresh", "--run", str(run_dir), "--events", str(log_file), "--no-progress"]
    assert cli.main([*base, "--store", str(tmp_path / "fp32")]) == 0
    assert cli.main([*base, "--store", str(tmp_path / "fp16"), "--dtype", "float16"]) == 0
    with sqlite3.connect(tmp_path / "fp16" / "part-00000-of-00001.sqlite") as db:
        assert {len(row[0]) for row in db.execute("SELECT memory FROM users")} == {
            (3 + 1 + 2 + 2 + (256 + 2 * 1024) // 8 + 3 + 1) * 8 * 2
        }  # K slots, the recurrent row, the history-mean and profile rows, the category and item
    # sketches, then the pending rows: the pending clicks' mean and profile sums and recurrent row
    ids = sorted(log["user_id"].astype(str).unique())
    items = np.full(len(ids), log["item_id"].iloc[0])
    full = open_scorer(run_dir, tmp_path / "fp32").score(ids, items).probabilities
    half = open_scorer(run_dir, tmp_path / "fp16").score(ids, items).probabilities
    np.testing.assert_allclose(half, full, atol=5e-3)
    with autocast("cpu", "bfloat16"):  # scoring in bf16 autocast still returns float32 probabilities
        autocast_scores = open_scorer(run_dir, tmp_path / "fp32").score(ids, items).probabilities
    assert autocast_scores.dtype == np.float32
    np.testing.assert_allclose(autocast_scores, full, atol=3e-2)
    assert cli.main([*base, "--store", str(tmp_path / "fp16"), "--dtype", "float32"]) == 2  # needs --rebuild


def test_store_refuses_another_models_memories(tmp_path: Path, run_dir: Path, log: pd.DataFrame) -> None:
    refresh_frames(run_dir, tmp_path / "s", [log.iloc[:100]])
    other = make_run(tmp_path / "other", log, seed=1)
    with pytest.raises(StoreError, match="--rebuild"):
        open_scorer(other, tmp_path / "s")


def test_torchrun_style_workers_each_write_their_own_partitions(
    tmp_path: Path, run_dir: Path, log_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RANK / WORLD_SIZE (as torchrun sets them) make each process one worker of the partitioning."""
    argv = [
        "refresh",
        "--run",
        str(run_dir),
        "--events",
        str(log_file),
        "--store",
        str(tmp_path / "s"),
        "--no-progress",
    ]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert cli.main(argv) == 0
    assert [p.name for p in (tmp_path / "s").iterdir() if p.suffix == ".sqlite"] == [
        "part-00001-of-00002.sqlite"
    ]
    monkeypatch.setenv("RANK", "0")
    assert cli.main(argv) == 0
    assert cli.main([*argv, "--rebuild"]) == 2  # a shared store cannot be swapped by one process
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    assert cli.main([*argv[:-2], str(tmp_path / "one"), "--no-progress"]) == 0
    with MemoryStore(tmp_path / "s") as two, MemoryStore(tmp_path / "one") as one:
        ids = sorted(s.user_id for s in one)
        assert sorted(s.user_id for s in two) == ids
        a, b = one.get_many(ids), two.get_many(ids)
    for user in ids:
        torch.testing.assert_close(b[user].memory, a[user].memory, rtol=1e-5, atol=1e-5)
