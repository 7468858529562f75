"""One partition of the memory store: an SQLite file in WAL mode.

Each `put_many` is one transaction, so a reader (another connection, another process) sees every
user either before or after a batch, never half-written; a process killed mid-batch leaves the
previous state, which SQLite restores on the next open. `update_many` reads, computes and writes a
batch inside one write transaction (``BEGIN IMMEDIATE``: SQLite's one writer lock per file), so two
refresh jobs on one partition take turns batch by batch and each reads what the other committed:
no update is lost.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cmrec.store.state import (
    StoreError,
    StoreInfo,
    UserState,
    check_info,
    checksum,
    decode_memory,
    decode_pending,
    decode_watermark_items,
    encode_memory,
    encode_pending,
    encode_watermark_items,
)

FORMAT = 2  # 2: the row checksum covers the watermark time; format-1 partitions stay readable
READABLE_FORMATS = (1, 2)
PAGE_SIZE = 16_384
_CHUNK = 500  # ids per SELECT ... IN (...), below SQLite's variable limit
LOCK_TIMEOUT_S = 60.0  # how long a writer waits for another writer's transaction on the same file
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


def _meta_rows(info: StoreInfo, index: int) -> list[tuple[str, str]]:
    values = {**asdict(info), "format": FORMAT, "partition": index}
    return [(key, json.dumps(value)) for key, value in values.items()]


def _create_file(path: Path, info: StoreInfo, index: int) -> None:
    """Create a complete partition file (schema and meta rows) under a scratch name, then link it
    into place: another process never sees a partition without its meta, and of two processes
    creating one partition at once the first link wins and the other uses that file."""
    scratch = path.with_name(f".{path.name}.{os.getpid()}.creating")
    db = sqlite3.connect(scratch, isolation_level=None)
    try:
        # Rows of ~5 KB (K x d_m float32 plus bookkeeping) spill into overflow pages of SQLite's
        # default 4 KB page; 16 KB pages hold three rows each. Set before WAL (kept in the file).
        db.execute(f"PRAGMA page_size={PAGE_SIZE}")
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(_SCHEMA)
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", _meta_rows(info, index))
        db.execute("COMMIT")
    finally:
        db.close()
    try:
        os.link(scratch, path)
    except FileExistsError:
        pass  # created by another process meanwhile: its meta is checked like any existing file's
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{scratch}{suffix}").unlink(missing_ok=True)


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
        if not path.is_file():
            if info is None:
                raise StoreError(f"{path}: no such store partition")
            _create_file(path, info, index)
        self._db = sqlite3.connect(path, isolation_level=None, timeout=LOCK_TIMEOUT_S)
        try:
            self._open(info, index)
        except BaseException:
            self._db.close()  # a refused file is left as it was: no connection (and WAL files) kept open
            raise
        self.index = index
        self._shape = (self.info.slots, self.info.memory_dim)

    def _open(self, info: StoreInfo | None, index: int) -> None:
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # durable against a killed process
            meta = self._read_meta()
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"{self.path}: not a readable cmrec memory store partition ({exc}); rebuild the store "
                "from the full event log (`cmrec refresh --run RUN_DIR --events FULL_LOG --store STORE "
                "--rebuild`)"
            ) from exc
        if not meta:
            if info is None:
                raise StoreError(f"{self.path}: not a cmrec memory store (no meta table)")
            self._initialise(info, index)  # an empty database file (e.g. a bare sqlite3.connect's)
            meta = self._read_meta()
        self.info = self._check_meta(meta, info, index)

    def _initialise(self, info: StoreInfo, index: int) -> None:
        """Make an existing empty database a partition; idempotent, so two processes may race."""
        try:
            self._db.executescript(_SCHEMA)
            with self._transaction("BEGIN IMMEDIATE"):
                self._db.executemany(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", _meta_rows(info, index)
                )
        except sqlite3.DatabaseError as exc:
            raise self._damaged(exc) from exc

    def _read_meta(self) -> dict[str, Any]:
        tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "meta" not in tables:
            return {}
        return {key: json.loads(value) for key, value in self._db.execute("SELECT key, value FROM meta")}

    def _check_meta(self, meta: dict[str, Any], expected: StoreInfo | None, index: int) -> StoreInfo:
        if meta.get("format") not in READABLE_FORMATS:
            raise StoreError(
                f"{self.path}: store format {meta.get('format')!r}, this cmrec reads "
                + " and ".join(str(f) for f in READABLE_FORMATS)
            )
        self.format = int(meta["format"])
        try:
            info = StoreInfo(**{k: meta[k] for k in StoreInfo.__dataclass_fields__})
        except (KeyError, TypeError) as exc:
            raise StoreError(f"{self.path}: damaged store meta table ({exc})") from exc
        if meta.get("partition") != index:
            raise StoreError(f"{self.path}: holds partition {meta.get('partition')}, expected {index}")
        if expected is None:
            return info
        check_info(
            str(self.path),
            info,
            expected,
            "rebuild them from the full event log with `cmrec refresh --run RUN_DIR --events FULL_LOG "
            "--store STORE --rebuild`",
        )
        return info

    # -- reads ---------------------------------------------------------------------------------
    def get_many(self, user_ids: Sequence[str]) -> dict[str, UserState]:
        """States of the users that exist, read in one snapshot (one read transaction)."""
        with self._transaction("BEGIN"):
            return self._select(user_ids)

    def _select(self, user_ids: Sequence[str]) -> dict[str, UserState]:
        found: dict[str, UserState] = {}
        for start in range(0, len(user_ids), _CHUNK):
            chunk = list(user_ids[start : start + _CHUNK])
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM users WHERE user_id IN ({marks})", chunk)
            for row in rows.fetchall():
                state = self._decode(row)
                found[state.user_id] = state
        return found

    def __iter__(self) -> Iterator[UserState]:
        """Every user, in user id order (for backfills and inspection)."""
        try:
            for row in self._db.execute(f"SELECT {_COLUMNS} FROM users ORDER BY user_id"):
                yield self._decode(row)
        except sqlite3.DatabaseError as exc:
            raise self._damaged(exc) from exc

    def __len__(self) -> int:
        try:
            return int(self._db.execute("SELECT COUNT(*) FROM users").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            raise self._damaged(exc) from exc

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
        if checksum(memory, pending, wm_time, wm_items, events, self.format) != crc:
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
        with self._transaction("BEGIN IMMEDIATE"):
            self._insert(states)

    def update_many(
        self,
        user_ids: Sequence[str],
        apply: Callable[[list[str], dict[str, UserState]], Sequence[UserState]],
    ) -> None:
        """Read `user_ids`, write ``apply(user_ids, found)``, all inside one write transaction.

        No other writer can change these users between the read and the write (it waits for the
        file's lock, up to `LOCK_TIMEOUT_S`); an exception in `apply` writes nothing.
        """
        with self._transaction("BEGIN IMMEDIATE"):
            self._insert(apply(list(user_ids), self._select(user_ids)))

    def _insert(self, states: Sequence[UserState]) -> None:
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
                    checksum(memory, pending, state.watermark_time, wm_items, state.events, self.format),
                )
            )
        self._db.executemany(f"INSERT OR REPLACE INTO users ({_COLUMNS}) VALUES ({','.join('?' * 10)})", rows)

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[None]:
        """One transaction; a busy or damaged file becomes a `StoreError` that names it."""
        try:
            self._db.execute(begin)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise StoreError(
                    f"{self.path}: another process held this partition's write lock for over "
                    f"{LOCK_TIMEOUT_S:.0f} s ({exc}); is another refresh still running on this store?"
                ) from exc
            raise self._damaged(exc) from exc
        try:
            yield
        except sqlite3.DatabaseError as exc:
            self._db.execute("ROLLBACK")
            raise self._damaged(exc) from exc
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _damaged(self, exc: sqlite3.Error) -> StoreError:
        return StoreError(
            f"{self.path}: the partition file is damaged ({exc}); rebuild the store from the full event "
            "log (`cmrec refresh --run RUN_DIR --events FULL_LOG --store STORE --rebuild`), or remove "
            "the users you can re-create (`cmrec forget`)"
        )

    def delete(self, user_ids: Sequence[str]) -> int:
        """Delete users in one transaction; returns how many existed."""
        deleted = 0
        with self._transaction("BEGIN IMMEDIATE"):
            for start in range(0, len(user_ids), _CHUNK):
                chunk = list(user_ids[start : start + _CHUNK])
                marks = ",".join("?" * len(chunk))
                deleted += self._db.execute(f"DELETE FROM users WHERE user_id IN ({marks})", chunk).rowcount
        return deleted

    def checkpoint(self) -> None:
        """Fold the write-ahead log into the database file and truncate it."""
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.DatabaseError as exc:
            raise self._damaged(exc) from exc

    def close(self) -> None:
        self._db.close()
