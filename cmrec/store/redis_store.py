"""The memory store on a Redis server: the same `MemoryStoreProtocol` and guarantees as the SQLite
folder, for a fleet of scorers and refresh workers on many machines.

Keys of store NAME (``--store redis://HOST:PORT/DB/NAME``; ``{...}`` is the Redis Cluster hash tag):

* ``cmrec:{NAME}:meta``: the store's `StoreInfo` (model fingerprint, shapes, dtype, partition count)
  and format, JSON, written once (SET NX) and checked by every opener;
* ``cmrec:{NAME:p00003}:u:<user_id>``: one user's state, one string value (`encode_state`): a magic,
  a version token, the bookkeeping (fingerprint, pending count, watermark, events, checksum) and the
  memory and pending clicks in the store's precision;
* ``cmrec:{NAME:p00003}:users``: the set of user ids of partition 3 (for iteration and counts).

Users are routed to partitions by the same CRC-32 as the folder store (`partition_of`), and every
key of one partition carries that partition's hash tag, so they live in one cluster slot. A refresh
batch never spans partitions, so each batch is written by **one server-side script over one slot**:
the script checks that every user of the batch still holds the version the batch was computed from
and then writes them all, or writes nothing. That is SQLite's per-batch transaction, made
optimistic: two workers on different users never wait for each other, and of two workers racing on
the same user the loser finds a changed version, re-reads and recomputes its batch (`update_many`
retries; the refresh's per-call counts are replaced, not added). Readers (GET / MGET) see a user
before or after a batch, never between. A refresh killed anywhere leaves whole batches, and its
rerun recomputes exactly the missing ones with the same composition as an uninterrupted run.

What is not atomic: a `get_many` over several partitions reads them one after another (each
partition's users in one MGET), as the folder store does.
"""

from __future__ import annotations

import json
import random
import secrets
import struct
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from typing import Any

from cmrec.store.location import PASSWORD_ENV, RedisLocation
from cmrec.store.routing import partition_of
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

FORMAT = 1
MAGIC = b"CMRS"
VERSION_BYTES = 16
_HEAD = len(MAGIC) + VERSION_BYTES
# A Redis store is rebuilt beside the old one (no folder to swap): what a refusal tells the user.
REBUILD_HINT = (
    "refresh the full event log into a new store name (`cmrec refresh --run RUN_DIR --events FULL_LOG "
    "--store redis://HOST:PORT/DB/NEW_NAME`), point scoring at it, then drop the old one "
    "(`cmrec forget --store OLD --all`)"
)
MAX_ATTEMPTS = 50  # optimistic retries of one batch before giving up (a hot user under heavy races)
_CHUNK = 1_000  # keys per MGET

# KEYS[1]: the partition's user set, KEYS[2..]: user keys. ARGV[1]: the magic; then per user i:
# ARGV[3i-1] id, ARGV[3i] the expected version ('' = absent, '*' = any), ARGV[3i+1] the new value
# ('' = leave as is). Every check runs before the first write: the script writes all or nothing.
_WRITE = """
local magic = ARGV[1]
local function version(key)
  local kind = redis.call('TYPE', key)['ok']
  if kind == 'none' then return '' end
  if kind ~= 'string' then return nil end
  local head = redis.call('GETRANGE', key, 0, 19)
  if string.sub(head, 1, 4) ~= magic then return nil end
  return string.sub(head, 5, 20)
end
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'none' and kind ~= 'set' then return redis.error_reply('CMREC_FOREIGN ' .. KEYS[1]) end
for i = 1, #KEYS - 1 do
  local found = version(KEYS[i + 1])
  if found == nil then return redis.error_reply('CMREC_FOREIGN ' .. KEYS[i + 1]) end
  local expected = ARGV[3 * i]
  if expected ~= '*' and found ~= expected then return 0 end
end
for i = 1, #KEYS - 1 do
  local value = ARGV[3 * i + 1]
  if value ~= '' then
    redis.call('SET', KEYS[i + 1], value)
    redis.call('SADD', KEYS[1], ARGV[3 * i - 1])
  end
end
return 1
"""

# KEYS as _WRITE's; ARGV[1]: the magic, ARGV[i + 1]: the id of KEYS[i + 1]. Returns how many existed.
_DELETE = """
local magic = ARGV[1]
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'none' and kind ~= 'set' then return redis.error_reply('CMREC_FOREIGN ' .. KEYS[1]) end
for i = 2, #KEYS do
  local kind = redis.call('TYPE', KEYS[i])['ok']
  if kind ~= 'none' then
    if kind ~= 'string' or string.sub(redis.call('GETRANGE', KEYS[i], 0, 3), 1, 4) ~= magic then
      return redis.error_reply('CMREC_FOREIGN ' .. KEYS[i])
    end
  end
end
local deleted = 0
for i = 2, #KEYS do
  deleted = deleted + redis.call('DEL', KEYS[i])
  redis.call('SREM', KEYS[1], ARGV[i])
end
return deleted
"""


class NoStoreError(StoreError):
    """No store exists under this name yet (its meta key is absent)."""


def _redis() -> Any:
    try:
        import redis
    except ImportError as exc:  # pragma: no cover - the lock installs it
        raise StoreError(
            "a redis:// store needs the `redis` Python package (pinned in requirements/cpu.lock)"
        ) from exc
    return redis


def connect(location: RedisLocation) -> Any:
    """A client of `location`'s server, checked with a PING; clear errors for an unreachable
    server, a wrong password or a missing one."""
    redis = _redis()
    client = redis.Redis(
        host=location.host,
        port=location.port,
        db=location.db,
        username=location.username,
        password=location.password,
        ssl=location.tls,
        socket_connect_timeout=5,
        socket_timeout=60,
        decode_responses=False,
    )
    try:
        client.ping()
    except redis.exceptions.AuthenticationError as exc:
        client.close()
        if location.password is None:
            raise StoreError(
                f"{location}: the Redis server needs a password ({exc}); set ${PASSWORD_ENV}"
            ) from exc
        raise StoreError(
            f"{location}: the Redis server refused the credentials ({exc}); check ${PASSWORD_ENV}"
        ) from exc
    except redis.exceptions.ResponseError as exc:
        client.close()
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise StoreError(
                f"{location}: the Redis server needs a password ({exc}); set ${PASSWORD_ENV}"
            ) from exc
        raise StoreError(f"{location}: the Redis server answered {exc}") from exc
    except redis.exceptions.RedisError as exc:
        client.close()
        raise StoreError(f"{location}: cannot reach the Redis server ({exc}); is it running?") from exc
    return client


class RedisStore:
    """`MemoryStoreProtocol` over one store NAME of a Redis server (see the module docstring).

    Args:
        location: server, database and store name.
        info: the model's expectations; a new store is created with it (``create``), an existing
            one must match it (fingerprint, shapes, partitions) or `StoreError` is raised. None
            opens the store as it is.
        owned: the partitions this process may touch (all when None); others' users are refused.
        create: create the store's meta key when the store does not exist yet (needs `info`).

    Example::

        store = RedisStore(parse_store("redis://127.0.0.1:6379/0/cm"), info, create=True)
        store.put_many([state])          # one atomic script per partition
        store.get_many(["u1", "u2"])     # {"u1": UserState(...)}, one MGET per partition
    """

    def __init__(
        self,
        location: RedisLocation,
        info: StoreInfo | None = None,
        owned: Sequence[int] | None = None,
        create: bool = False,
    ) -> None:
        self.location = location
        self.root = location  # what messages and callers name the store by, as MemoryStore.root
        self._client = connect(location)
        self._errors = _redis().exceptions
        self._meta_key = f"cmrec:{{{location.name}}}:meta"
        meta = self._read_meta()
        if meta is None:
            if not create:
                self._client.close()
                raise NoStoreError(f"{location}: no memory store here (run `cmrec refresh` to build one)")
            if info is None:
                self._client.close()
                raise StoreError(f"{location}: creating a store needs the model's StoreInfo")
            document = json.dumps({**asdict(info), "format": FORMAT}, sort_keys=True)
            self._call(lambda: self._client.set(self._meta_key, document, nx=True))  # first creator wins
            meta = self._read_meta()
            assert meta is not None
        stored = self._parse_meta(meta)
        if info is not None:
            try:
                check_info(str(location), stored, info, REBUILD_HINT)
            except StoreError:
                self._client.close()
                raise
        self.info = stored
        self.partitions = stored.partitions
        indices = list(range(self.partitions)) if owned is None else sorted(set(owned))
        bad = [i for i in indices if not 0 <= i < self.partitions]
        if bad:
            self._client.close()
            raise StoreError(f"{location}: partitions {bad} do not exist (the store has {self.partitions})")
        self._owned = set(indices)
        self._shape = (stored.slots, stored.memory_dim)
        self._write_script = self._client.register_script(_WRITE)
        self._delete_script = self._client.register_script(_DELETE)

    # -- keys and errors -------------------------------------------------------------------------
    def _tag(self, index: int) -> str:
        return f"cmrec:{{{self.location.name}:p{index:05d}}}"

    def _user_key(self, index: int, user_id: str) -> bytes:
        return f"{self._tag(index)}:u:{user_id}".encode()

    def _set_key(self, index: int) -> bytes:
        return f"{self._tag(index)}:users".encode()

    def _call(self, operation: Callable[[], Any]) -> Any:
        """Run one Redis operation; a server error or a lost connection is a `StoreError`."""
        try:
            return operation()
        except self._errors.ResponseError as exc:
            text = str(exc)
            if "CMREC_FOREIGN" in text:
                key = text.split("CMREC_FOREIGN", 1)[1].strip()
                raise StoreError(
                    f"{self.location}: key {key} holds something that is not a cmrec memory (another "
                    "application's data under this store name?); nothing was written. Use another store "
                    "name or remove that key"
                ) from exc
            if "WRONGTYPE" in text:
                raise StoreError(
                    f"{self.location}: a key of this store holds another type of value ({text}); "
                    "nothing was written. Use another store name"
                ) from exc
            raise StoreError(f"{self.location}: the Redis server answered {text}") from exc
        except self._errors.RedisError as exc:
            raise StoreError(
                f"{self.location}: lost the connection to the Redis server ({exc}); every batch committed "
                "before stays whole: rerun the job once the server is back to complete it"
            ) from exc

    def _read_meta(self) -> Any:
        raw = self._call(lambda: self._client.get(self._meta_key))
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StoreError(
                f"{self.location}: key {self._meta_key} holds something that is not a cmrec store's meta "
                "(another application's data under this store name?); use another store name"
            ) from exc

    def _parse_meta(self, meta: Any) -> StoreInfo:
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else None
            raise StoreError(
                f"{self.location}: key {self._meta_key}: store format {found!r}, this cmrec reads {FORMAT}"
            )
        try:
            return StoreInfo(**{k: meta[k] for k in StoreInfo.__dataclass_fields__})
        except (KeyError, TypeError) as exc:
            raise StoreError(f"{self.location}: damaged store meta ({exc})") from exc

    # -- routing ---------------------------------------------------------------------------------
    @property
    def owned(self) -> list[int]:
        return sorted(self._owned)

    def _index(self, user_id: str) -> int:
        index = partition_of(user_id, self.partitions)
        if index not in self._owned:
            raise StoreError(
                f"{self.location}: user {user_id!r} belongs to partition {index}, not opened here"
            )
        return index

    def _group(self, user_ids: Sequence[str]) -> dict[int, list[str]]:
        groups: dict[int, list[str]] = defaultdict(list)
        for user_id in user_ids:
            groups[self._index(user_id)].append(user_id)
        return groups

    # -- reads -----------------------------------------------------------------------------------
    def _fetch(self, groups: dict[int, list[str]]) -> dict[str, bytes]:
        """The stored values of the users that exist: every partition's MGETs in one pipeline."""
        requests: list[list[str]] = []
        pipe = self._client.pipeline(transaction=False)
        for index, ids in groups.items():
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                pipe.mget([self._user_key(index, u) for u in chunk])
                requests.append(chunk)
        replies = self._call(pipe.execute) if requests else []
        return {
            user_id: value
            for chunk, values in zip(requests, replies, strict=True)
            for user_id, value in zip(chunk, values, strict=True)
            if value is not None
        }

    def get_many(self, user_ids: Sequence[str]) -> dict[str, UserState]:
        values = self._fetch(self._group(user_ids))
        return {user_id: self._decode(user_id, value) for user_id, value in values.items()}

    def __iter__(self) -> Iterator[UserState]:
        """Every user of the opened partitions, partition by partition, in user id order."""
        for index in self.owned:
            ids = self._members(index)
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                for user_id, value in self._fetch({index: chunk}).items():
                    yield self._decode(user_id, value)

    def __len__(self) -> int:
        pipe = self._client.pipeline(transaction=False)
        for index in self.owned:
            pipe.scard(self._set_key(index))
        return int(sum(self._call(pipe.execute)))

    def _decode(self, user_id: str, value: bytes) -> UserState:
        remedy = (
            f"rebuild the store (`cmrec refresh --rebuild`) or drop the user (`cmrec forget --store "
            f"{self.location} --user {user_id}`)"
        )
        try:
            state, _ = decode_state(value, self._shape, self.info)
        except ValueError as exc:
            raise StoreError(f"{self.location}: user {user_id!r}: damaged value ({exc}); {remedy}") from exc
        if state.user_id != user_id:
            raise StoreError(
                f"{self.location}: the key of user {user_id!r} holds user {state.user_id!r}; {remedy}"
            )
        if state.fingerprint != self.info.fingerprint:
            raise StoreError(
                f"{self.location}: user {user_id!r} holds a memory of model fingerprint "
                f"{state.fingerprint[:12]}, the store is {self.info.fingerprint[:12]}; {remedy}"
            )
        return state

    # -- writes ----------------------------------------------------------------------------------
    def put_many(self, states: Sequence[UserState]) -> None:
        """Insert or replace users: one atomic script per partition touched."""
        groups: dict[int, list[UserState]] = defaultdict(list)
        for state in states:
            groups[self._index(state.user_id)].append(state)
        for index, part in groups.items():
            ids = [s.user_id for s in part]
            written = self._write(index, ids, dict.fromkeys(ids, b"*"), part)
            assert written  # unconditional writes never conflict

    def update_many(
        self,
        user_ids: Sequence[str],
        apply: Callable[[list[str], dict[str, UserState]], Sequence[UserState]],
    ) -> None:
        """Per partition: read the users, write ``apply(ids, found)`` if none of them changed in
        between (one script), else re-read and call `apply` again (up to `MAX_ATTEMPTS` times)."""
        for index, ids in self._group(user_ids).items():
            for attempt in range(MAX_ATTEMPTS):
                values = self._fetch({index: ids})
                versions = {u: values[u][len(MAGIC) : _HEAD] if u in values else b"" for u in ids}
                found = {u: self._decode(u, v) for u, v in values.items()}
                if self._write(index, ids, versions, apply(list(ids), found)):
                    break
                time.sleep(random.uniform(0, 0.002 * (attempt + 1)))  # another writer won: back off
            else:
                raise StoreError(
                    f"{self.location}: partition {index}: {MAX_ATTEMPTS} attempts in a row lost a race with "
                    "other writers of the same users; nothing of this batch was written, rerun the job"
                )

    def _write(
        self, index: int, ids: Sequence[str], versions: dict[str, bytes], states: Sequence[UserState]
    ) -> bool:
        """Write `states` if every user of `ids` still holds its expected version; False if not."""
        new = {state.user_id: state for state in states}
        strays = sorted(set(new) - set(ids))
        if strays:
            raise StoreError(
                f"{self.location}: states of users {strays[:3]} that were not read were returned"
            )
        now = time.time()
        keys: list[bytes] = [self._set_key(index)]
        args: list[bytes] = [MAGIC]
        for user_id in ids:
            keys.append(self._user_key(index, user_id))
            state = new.get(user_id)
            token = secrets.token_hex(VERSION_BYTES // 2).encode()
            value = b"" if state is None else encode_state(state, self.info, token, now)
            args += [user_id.encode(), versions[user_id], value]
        return bool(self._call(lambda: self._write_script(keys=keys, args=args)))

    def delete(self, user_ids: Sequence[str]) -> int:
        """Delete users, one atomic script per partition; returns how many existed."""
        return sum(self._delete(index, ids) for index, ids in self._group(user_ids).items())

    def _delete(self, index: int, ids: Sequence[str]) -> int:
        keys = [self._set_key(index), *(self._user_key(index, u) for u in ids)]
        args = [MAGIC, *(u.encode() for u in ids)]
        return int(self._call(lambda: self._delete_script(keys=keys, args=args)))

    def _members(self, index: int) -> list[str]:
        """The user ids of partition `index`, sorted."""
        members = self._call(lambda: self._client.smembers(self._set_key(index)))
        return sorted(member.decode() for member in members)

    def value_bytes(self) -> int:
        """Bytes of the stored values of the opened partitions (Redis adds its per-key overhead)."""
        total = 0
        for index in self.owned:
            pipe = self._client.pipeline(transaction=False)
            for user_id in self._members(index):
                pipe.strlen(self._user_key(index, user_id))
            total += sum(self._call(pipe.execute))
        return total

    def server_memory(self) -> int:
        """The server's ``used_memory`` in bytes (INFO memory): for sizing, as a difference."""
        return int(self._call(lambda: self._client.info("memory"))["used_memory"])

    def drop(self) -> int:
        """Delete the whole store (every user and the meta key); returns how many users it held."""
        users = 0
        for index in range(self.partitions):
            ids = self._members(index)
            for start in range(0, len(ids), _CHUNK):
                users += self._delete(index, ids[start : start + _CHUNK])
        self._call(lambda: self._client.delete(self._meta_key))
        return users

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RedisStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def encode_state(state: UserState, info: StoreInfo, version: bytes, now: float) -> bytes:
    """One user's value: magic, version token, header length, JSON header, memory, pending clicks."""
    if len(version) != VERSION_BYTES:
        raise ValueError(f"a version token is {VERSION_BYTES} bytes, got {len(version)}")
    memory = encode_memory(state.memory, info.dtype)
    pending = encode_pending(state.pending_items, state.pending_categories)
    watermark_items = encode_watermark_items(state.watermark_items)
    header = {
        "user": state.user_id,
        "fingerprint": state.fingerprint,
        "pending": len(state.pending_items),
        "watermark_time": state.watermark_time,
        "watermark_items": watermark_items,
        "events": state.events,
        "updated_at": now,
        "memory_bytes": len(memory),
        "checksum": checksum(memory, pending, state.watermark_time, watermark_items, state.events),
    }
    text = json.dumps(header, separators=(",", ":")).encode()
    return MAGIC + version + struct.pack("<I", len(text)) + text + memory + pending


def decode_state(value: bytes, shape: tuple[int, int], info: StoreInfo) -> tuple[UserState, bytes]:
    """`encode_state`'s inverse: the state and its version token; `ValueError` on damage."""
    if value[: len(MAGIC)] != MAGIC:
        raise ValueError("not a cmrec memory value")
    version = value[len(MAGIC) : _HEAD]
    if len(value) < _HEAD + 4:
        raise ValueError("truncated value")
    (length,) = struct.unpack("<I", value[_HEAD : _HEAD + 4])
    start = _HEAD + 4
    try:
        header = json.loads(value[start : start + length])
        memory_end = start + length + int(header["memory_bytes"])
        memory, pending = value[start + length : memory_end], value[memory_end:]
        watermark_items = str(header["watermark_items"])
        events = int(header["events"])
        watermark_time = header["watermark_time"]
        crc = int(header["checksum"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"unreadable header ({exc})") from exc
    if checksum(memory, pending, watermark_time, watermark_items, events) != crc:
        raise ValueError("checksum mismatch")
    items, categories = decode_pending(pending, int(header["pending"]), info.has_categories)
    state = UserState(
        user_id=str(header["user"]),
        memory=decode_memory(memory, shape, info.dtype),
        pending_items=items,
        pending_categories=categories,
        watermark_time=watermark_time,
        watermark_items=decode_watermark_items(watermark_items),
        events=events,
        fingerprint=str(header["fingerprint"]),
        updated_at=float(header["updated_at"]),
    )
    return state, version
