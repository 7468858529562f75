"""Row checksums: every field a reader trusts is covered, and older store formats stay readable."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from cmrec.store import MemoryStore, StoreError, StoreInfo, UserState
from cmrec.store.state import checksum

INFO = StoreInfo(fingerprint="f" * 64, model="cm", slots=3, memory_dim=4, segment_len=5, has_categories=False)
PART = "part-00000-of-00001.sqlite"


def _state(user: str, watermark: float | int | None) -> UserState:
    return UserState(
        user_id=user,
        memory=torch.arange(12, dtype=torch.float32).view(3, 4),
        pending_items=np.array([4, 7], dtype=np.int32),
        pending_categories=None,
        watermark_time=watermark,
        watermark_items=("i9",),
        events=7,
        fingerprint=INFO.fingerprint,
    )


@pytest.mark.parametrize("watermark", [1_700_000_000_000_000_123, 3.0, 2.5])
def test_a_changed_watermark_time_is_a_damaged_row(tmp_path: Path, watermark: float | int) -> None:
    with MemoryStore(tmp_path, INFO, create=True) as store:
        store.put_many([_state("u1", watermark)])
        assert store.get_many(["u1"])["u1"].watermark_time == watermark  # 3.0 comes back as 3: same text
    with sqlite3.connect(tmp_path / PART) as db:
        db.execute("UPDATE users SET watermark_time = watermark_time + 1 WHERE user_id = 'u1'")
    with MemoryStore(tmp_path, INFO) as store, pytest.raises(StoreError, match="checksum mismatch"):
        store.get_many(["u1"])


def test_a_format_1_store_stays_readable_and_writable(tmp_path: Path) -> None:
    with MemoryStore(tmp_path, INFO, create=True) as store:
        store.put_many([_state("old", 10)])
    with sqlite3.connect(tmp_path / PART) as db:  # as cmrec wrote it before the watermark time was covered
        memory, pending = db.execute("SELECT memory, pending FROM users").fetchone()
        db.execute(
            "UPDATE users SET checksum = ?", (checksum(memory, pending, 10, '["i9"]', 7, store_format=1),)
        )
        db.execute("UPDATE meta SET value = ? WHERE key = 'format'", (json.dumps(1),))
    with MemoryStore(tmp_path, INFO) as store:
        old = store.get_many(["old"])["old"]
        assert (old.watermark_time, old.watermark_items, old.events) == (10, ("i9",), 7)
        torch.testing.assert_close(old.memory, _state("old", 10).memory)
        store.put_many([_state("new", 11)])  # rows of a format-1 partition keep its checksum rule
        assert set(store.get_many(["old", "new"])) == {"old", "new"}
    with sqlite3.connect(tmp_path / PART) as db:
        memory, pending, crc = db.execute(
            "SELECT memory, pending, checksum FROM users WHERE user_id = 'new'"
        ).fetchone()
    assert crc == checksum(memory, pending, 11, '["i9"]', 7, store_format=1)
