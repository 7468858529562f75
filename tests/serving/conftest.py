"""A tiny CM run folder (random weights: the invariants hold for any weights), its event log, and
the comparison of two stores by what a store guarantees (docs/serving.md, "What equal means")."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from cmrec.data import SplitConfig, build_from_events, validate_events
from cmrec.data.synthetic import SyntheticConfig, generate
from cmrec.models.registry import DataSpec, build_model, model_config
from cmrec.serving import Scorer, ServedModel
from cmrec.store import StoreInfo, StoreLocation, UserState, memory_store, open_store
from cmrec.train.checkpoint import CHECKPOINT, save_checkpoint
from tests.models.conftest import TINY


def stream(users: int = 24, length: int = 30, seed: int = 0) -> pd.DataFrame:
    """A click stream in arrival (time) order, users interleaved, with some tied timestamps."""
    events = generate(
        SyntheticConfig(users=users, length=length, items=200, categories=8, seed=seed)
    ).events()
    events = events.copy()
    events["timestamp"] = events["timestamp"] // 300  # coarse clock: several clicks share a timestamp
    order = np.lexsort((np.arange(len(events)), events["timestamp"].to_numpy()))  # stable by time
    events = events.iloc[order].reset_index(drop=True)
    # The one case a watermark cannot tell apart (see refresh._already_applied): a user clicking
    # the same item twice within one timestamp, with a file boundary in between.
    repeated = events.duplicated(["user_id", "item_id", "timestamp"])
    return events[~repeated.to_numpy()].reset_index(drop=True)


def make_run(folder: Path, events: pd.DataFrame, seed: int = 0, name: str = "cm", **config: Any) -> Path:
    """An (untrained) run folder of model `name` over `events`; `config` overrides the tiny config."""
    data = build_from_events(validate_events(events), SplitConfig(max_len=10_000))
    torch.manual_seed(seed)
    overrides = {**(TINY if name.startswith("cm") else {"item_dim": 8}), **config}
    model = build_model(name, DataSpec.from_vocabs(data.vocabs), overrides)
    folder.mkdir(parents=True, exist_ok=True)
    config = model_config(name, overrides)
    save_checkpoint(folder / CHECKPOINT, name, config, model, data.vocabs, {"max_len": 10_000})
    return folder


@pytest.fixture(scope="session")
def log() -> pd.DataFrame:
    return stream()


@pytest.fixture(scope="session")
def log_file(tmp_path_factory: pytest.TempPathFactory, log: pd.DataFrame) -> Path:
    """`log` as an event file, written once."""
    path = tmp_path_factory.mktemp("log") / "events.parquet"
    log.to_parquet(path)
    return path


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory, log: pd.DataFrame) -> Path:
    return make_run(tmp_path_factory.mktemp("run"), log)


def refresh_argv(run: Path, events: Path, store: Path, *extra: str) -> list[str]:
    """`cmrec refresh` of `events` into `store` with `run`, without a progress bar."""
    return [
        "refresh",
        "--run",
        str(run),
        "--events",
        str(events),
        "--store",
        str(store),
        "--no-progress",
        *extra,
    ]


def dump(store: Path) -> list[tuple[Any, ...]]:
    """Every stored row of every partition but the update time, in a fixed order."""
    rows: list[tuple[Any, ...]] = []
    for part in sorted(store.glob("part-*.sqlite")):
        with sqlite3.connect(part) as db:
            rows += db.execute(
                "SELECT user_id, memory, pending, pending_count, watermark_time, watermark_items, events, "
                "fingerprint, checksum FROM users ORDER BY user_id"
            ).fetchall()
            rows += db.execute("SELECT key, value FROM meta ORDER BY key").fetchall()
    return rows


def open_scorer(run_dir: Path, store: Path) -> Scorer:
    """A scorer of a run over an existing store folder (the store's fingerprint is checked)."""
    served = ServedModel.load(run_dir)
    return Scorer(served, open_store(store, served.store_info))


# The same events give the same memories to float rounding: different batch compositions, thread
# counts or CPUs (AMD and Intel hosts differ) move the last bits of a float32, and a float16 or
# bfloat16 store can then round to the neighbouring value. Bit-equality holds only for the same
# batches on the same machine, so comparisons across runs allow this much, per stored precision.
MEMORY_TOLERANCE = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1.6e-2}


@dataclass(frozen=True)
class Snapshot:
    """Every user of a store, read through the store (so every checksum was verified): the
    exactly-once bookkeeping as exact values, the memories as float32 arrays."""

    info: StoreInfo
    bookkeeping: dict[str, tuple[Any, ...]]
    memories: dict[str, np.ndarray]

    def differences(self, other: Snapshot, same_partitions: bool = True) -> list[str]:
        """What differs beyond float rounding (MEMORY_TOLERANCE of the store's dtype); the number of
        partitions is compared only with `same_partitions`."""
        atol = MEMORY_TOLERANCE[self.info.dtype]
        found = []
        theirs = other.info if same_partitions else replace(other.info, partitions=self.info.partitions)
        if self.info != theirs:
            found.append(f"store info {self.info} != {other.info}")
        if sorted(self.bookkeeping) != sorted(other.bookkeeping):
            found.append(f"users differ: {sorted(set(self.bookkeeping) ^ set(other.bookkeeping))[:5]}")
        for user in sorted(set(self.bookkeeping) & set(other.bookkeeping)):
            if self.bookkeeping[user] != other.bookkeeping[user]:
                found.append(f"user {user}: {self.bookkeeping[user]} != {other.bookkeeping[user]}")
            gap = float(np.abs(self.memories[user] - other.memories[user]).max(initial=0.0))
            if not gap <= atol:  # NaN fails too
                found.append(f"user {user}: memories differ by {gap:.3g} > {atol:g}")
        return found

    def matches(self, other: Snapshot) -> bool:
        return not self.differences(other)


def snapshot(location: StoreLocation) -> Snapshot:
    """The `Snapshot` of the store at `location` (a folder or a Redis store)."""
    with memory_store(location) as store:
        states: list[UserState] = list(store)
        info = store.info
    return Snapshot(
        info,
        {s.user_id: bookkeeping(s) for s in states},
        {s.user_id: s.memory.numpy().astype(np.float32) for s in states},
    )


def bookkeeping(state: UserState) -> tuple[Any, ...]:
    """What exactly-once refresh keeps exact: pending clicks, watermark, event count, fingerprint."""
    return (
        state.pending_items.tolist(),
        None if state.pending_categories is None else state.pending_categories.tolist(),
        state.watermark_time,
        state.watermark_items,
        state.events,
        state.fingerprint,
    )


def assert_same_store(
    got: StoreLocation | Snapshot, expected: StoreLocation | Snapshot, same_partitions: bool = True
) -> None:
    """The two stores hold the same users with the same bookkeeping exactly and the same memories to
    float rounding (the guarantee across batch compositions, threads and CPUs)."""
    a = got if isinstance(got, Snapshot) else snapshot(got)
    b = expected if isinstance(expected, Snapshot) else snapshot(expected)
    differences = a.differences(b, same_partitions)
    assert not differences, "; ".join(differences[:5])
