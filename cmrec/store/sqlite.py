"""One partition of the memory store: an SQLite file in WAL mode.

Each `put_many` is one transaction, so a reader (another connection, another process) sees every
user either before or after a batch, never half-written; a process killed mid-batch leaves the
previous state, which SQLite restores on the next open.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cmrec.store.state import (
    MEMORY_DTYPES,
    MemoryDtype,
    StoreError,
    UserState,
    checksum,
    decode_memory,
    decode_pending,
    decode_watermark_items,
    encode_memory,
    encode_pending,
    encode_watermark_items,
)

FORMAT = 1
PAGE_SIZE = 16_384
_CHUNK = 500  # ids per SELECT ... IN (...), below SQLite's variable limit
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY NOT NULL,
    memory BLOB NOT NULL,
    pending BLOB NOT NULL,
    pending_count INTEGER NOT NULL,
    watermark_time NUMERIC,
    watermark_items TEXT NOT NULL,
    events INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    updated_at REAL NOT NULL,
    checksum INTEGER NOT NULL
);
"""
_COLUMNS = (
    "user_id, memory, pending, pending_count, watermark_time, watermark_items, events, fingerprint, "
    "updated_at, checksum"
)


@dataclass(frozen=True)
class StoreInfo:
    """What every partition records about the memories it holds.

    Args:
        fingerprint: hash of the model weights, config and vocabularies (`model_fingerprint`).
        model: registered model name, for messages.
        slots, memory_dim: K and d_m.
        segment_len: N.
        has_categories: whether pending clicks carry category indices.
        dtype: precision of the stored memories.
        partitions: how many partitions the store has.
    """

    fingerprint: str
    model: str
    slots: int
    memory_dim: int
    segment_len: int
    has_categories: bool
    dtype: MemoryDtype = "float32"
    partitions: int = 1

    def __post_init__(self) -> None:
        if self.dtype not in MEMORY_DTYPES:
            raise StoreError(f"memory dtype must be one of {', '.join(MEMORY_DTYPES)}, got {self.dtype!r}")
        if self.partitions < 1:
            raise StoreError(f"partitions must be >= 1, got {self.partitions}")


class SqlitePartition:
    """One SQLite file holding the users of one partition.

    Args:
        path: the file.
        info: what the caller's model expects; a new file is created with it, an existing one must
            match it (same fingerprint, shapes and partition count) or `StoreError` is raised.
            None opens an existing file as it is (`forget`, inspection).
        index: this partition's number, recorded in a new file and checked in an existing one.
    """

    def __init__(self, path: Path, info: StoreInfo | None, index: int) -> None:
        self.path = path
        exists = path.is_file()
        if not exists and info is None:
            raise StoreError(f"{path}: no such store partition")
        try:
            self._db = sqlite3.connect(path, isolation_level=None, timeout=60.0)
            if not exists:
                # Rows of ~5 KB (K x d_m float32 plus bookkeeping) spill into overflow pages of
                # SQLite's default 4 KB page; 16 KB pages hold three rows each. Set before WAL.
                self._db.execute(f"PRAGMA page_size={PAGE_SIZE}")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # durable against a killed process
            meta = self._read_meta() if exists else {}
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path}: not a cmrec memory store: {exc}") from exc
        if not meta:
            if info is None:
                raise StoreError(f"{path}: not a cmrec memory store (no meta table)")
            self._create(info, index)
            meta = self._read_meta()
        self.info = self._check_meta(meta, info, index)
        self.index = index
        self._shape = (self.info.slots, self.info.memory_dim)

    def _create(self, info: StoreInfo, index: int) -> None:
        values = {**asdict(info), "format": FORMAT, "partition": index}
        self._db.executescript(_SCHEMA)  # idempotent; the meta rows below mark the file complete
        self._db.execute("BEGIN IMMEDIATE")
        self._db.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            [(key, json.dumps(value)) for key, value in values.items()],
        )
        self._db.execute("COMMIT")

    def _read_meta(self) -> dict[str, Any]:
        tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "meta" not in tables:
            return {}
        return {key: json.loads(value) for key, value in self._db.execute("SELECT key, value FROM meta")}

    def _check_meta(self, meta: dict[str, Any], expected: StoreInfo | None, index: int) -> StoreInfo:
        if meta.get("format") != FORMAT:
            raise StoreError(f"{self.path}: store format {meta.get('format')!r}, this cmrec reads {FORMAT}")
        try:
            info = StoreInfo(**{k: meta[k] for k in StoreInfo.__dataclass_fields__})
        except (KeyError, TypeError) as exc:
            raise StoreError(f"{self.path}: damaged store meta table ({exc})") from exc
        if meta.get("partition") != index:
            raise StoreError(f"{self.path}: holds partition {meta.get('partition')}, expected {index}")
        if expected is None:
            return info
        if info.fingerprint != expected.fingerprint:
            raise StoreError(
                f"{self.path}: holds memories written by model {info.model!r} (fingerprint "
                f"{info.fingerprint[:12]}), not by this run ({expected.model!r}, fingerprint "
                f"{expected.fingerprint[:12]}). Memories of another model cannot be reused: rebuild them "
                "from the full event log with `cmrec refresh --run RUN_DIR --events FULL_LOG --store "
                "STORE --rebuild`"
            )
        mismatched = [
            name
            for name in ("slots", "memory_dim", "segment_len", "has_categories", "partitions")
            if getattr(info, name) != getattr(expected, name)
        ]
        if mismatched:
            name = mismatched[0]
            raise StoreError(
                f"{self.path}: {name} is {getattr(info, name)!r} in the store, {getattr(expected, name)!r} "
                "expected; rebuild the store with `cmrec refresh ... --rebuild`"
            )
        return info

    # -- reads ---------------------------------------------------------------------------------
    def get_many(self, user_ids: Sequence[str]) -> dict[str, UserState]:
        """States of the users that exist, read in one snapshot (one read transaction)."""
        found: dict[str, UserState] = {}
        self._db.execute("BEGIN")
        try:
            for start in range(0, len(user_ids), _CHUNK):
                chunk = list(user_ids[start : start + _CHUNK])
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(f"SELECT {_COLUMNS} FROM users WHERE user_id IN ({marks})", chunk)
                for row in rows:
                    state = self._decode(row)
                    found[state.user_id] = state
        finally:
            self._db.execute("COMMIT")
        return found

    def __iter__(self) -> Iterator[UserState]:
        """Every user, in user id order (for backfills and inspection)."""
        for row in self._db.execute(f"SELECT {_COLUMNS} FROM users ORDER BY user_id"):
            yield self._decode(row)

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM users").fetchone()[0])

    def _decode(self, row: tuple[Any, ...]) -> UserState:
        user_id, memory, pending, count, wm_time, wm_items, events, fingerprint, updated, crc = row
        remedy = (
            "rebuild the store (`cmrec refresh --rebuild`) "
            f"or drop the user (`cmrec forget --user {user_id}`)"
        )
        if fingerprint != self.info.fingerprint:
            raise StoreError(
                f"{self.path}: user {user_id!r} holds a memory of model fingerprint {fingerprint[:12]}, "
                f"the store is {self.info.fingerprint[:12]}; {remedy}"
            )
        if checksum(memory, pending, wm_items, events) != crc:
            raise StoreError(f"{self.path}: user {user_id!r}: damaged row (checksum mismatch); {remedy}")
        try:
            tensor = decode_memory(memory, self._shape, self.info.dtype)
            items, categories = decode_pending(pending, count, self.info.has_categories)
            watermark_items = decode_watermark_items(wm_items)
        except ValueError as exc:
            raise StoreError(f"{self.path}: user {user_id!r}: damaged row ({exc}); {remedy}") from exc
        return UserState(
            user_id=user_id,
            memory=tensor,
            pending_items=items,
            pending_categories=categories,
            watermark_time=wm_time,
            watermark_items=watermark_items,
            events=events,
            fingerprint=fingerprint,
            updated_at=updated,
        )

    # -- writes --------------------------------------------------------------------------------
    def put_many(self, states: Sequence[UserState]) -> None:
        """Insert or replace users, all in one transaction."""
        now = time.time()
        rows = []
        for state in states:
            memory = encode_memory(state.memory, self.info.dtype)
            pending = encode_pending(state.pending_items, state.pending_categories)
            wm_items = encode_watermark_items(state.watermark_items)
            rows.append(
                (
                    state.user_id,
                    memory,
                    pending,
                    len(state.pending_items),
                    state.watermark_time,
                    wm_items,
                    state.events,
                    state.fingerprint,
                    now,
                    checksum(memory, pending, wm_items, state.events),
                )
            )
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                f"INSERT OR REPLACE INTO users ({_COLUMNS}) VALUES ({','.join('?' * 10)})", rows
            )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def delete(self, user_ids: Sequence[str]) -> int:
        """Delete users in one transaction; returns how many existed."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            deleted = 0
            for start in range(0, len(user_ids), _CHUNK):
                chunk = list(user_ids[start : start + _CHUNK])
                marks = ",".join("?" * len(chunk))
                deleted += self._db.execute(f"DELETE FROM users WHERE user_id IN ({marks})", chunk).rowcount
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return deleted

    def checkpoint(self) -> None:
        """Fold the write-ahead log into the database file and truncate it."""
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        self._db.close()
