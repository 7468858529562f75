"""A tiny CM run folder (random weights: the invariants hold for any weights) and its event log."""

from __future__ import annotations

import sqlite3
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
from cmrec.store import open_store
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


def make_run(folder: Path, events: pd.DataFrame, seed: int = 0, name: str = "cm") -> Path:
    data = build_from_events(validate_events(events), SplitConfig(max_len=10_000))
    torch.manual_seed(seed)
    overrides = TINY if name.startswith("cm") else {"item_dim": 8}
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
