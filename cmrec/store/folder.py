"""The memory store: a folder of SQLite partitions, users routed by a stable hash of their id.

Layout: ``STORE/part-00000-of-00004.sqlite`` ... one file per partition. A refresh worker owns a
set of partitions (partition ``p`` belongs to worker ``p % W``), so no two processes ever write the
same file, on one machine or many. Readers open every partition.
"""

from __future__ import annotations

import fcntl
import re
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from cmrec.atomic import ensure_parent
from cmrec.store.routing import partition_of
from cmrec.store.sqlite import SqlitePartition
from cmrec.store.state import MemoryDtype, StoreError, StoreInfo, UserState

_PART = re.compile(r"^part-(\d{5})-of-(\d{5})\.sqlite$")


def partition_path(root: Path, index: int, partitions: int) -> Path:
    return root / f"part-{index:05d}-of-{partitions:05d}.sqlite"


@contextmanager
def writer_locks(root: Path, indices: Sequence[int], partitions: int) -> Iterator[None]:
    """Hold the writer lock of each partition in `indices` (``part-....sqlite.lock`` files, `flock`).

    A refresh job holds the locks of the partitions it writes for its whole run, so two jobs on
    one store take turns per partition: each user's state ends as if the jobs had run one after
    the other, and each job's counts are its own. A second job waits (it says so once). The
    kernel drops a killed process's locks. Locks are taken in partition order (no deadlock); they
    hold between processes of one machine (`flock` on a network filesystem may not).
    """
    root.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        for index in sorted(set(indices)):
            path = Path(str(partition_path(root, index, partitions)) + ".lock")

            def wait(path: Path = path) -> None:
                print(f"{path}: another refresh is writing this partition; waiting for it", file=sys.stderr)

            stack.enter_context(_flocked(path, shared=False, when_busy=wait))
        yield


@contextmanager
def store_lock(store: Path, exclusive: bool) -> Iterator[None]:
    """An advisory lock on STORE.lock (beside the store folder) for a whole refresh job.

    Refreshes share it (they take turns inside each partition: `writer_locks`); ``--rebuild``
    needs it alone, because it swaps the whole folder at the end and a refresh writing into the
    old folder meanwhile would be lost. Whoever cannot get it fails at once, before writing
    anything (the input is validated first, so bad input never makes the lock file). Like
    `writer_locks`, it holds between processes of one machine only.
    """
    existing_partitions(store)  # a file where the store should be is refused before any lock is made
    ensure_parent(store)
    path = store.with_name(store.name + ".lock")

    def refuse() -> None:
        holder = (
            "another refresh or rebuild is using this store"
            if exclusive
            else "this store is being rebuilt by another process"
        )
        raise StoreError(f"{store}: {holder} (lock {path}); run this once it has finished")

    try:
        path.open("a").close()  # created if missing; an existing lock file is left as it is
    except OSError as exc:
        raise StoreError(f"{store}: cannot make its lock file {path} ({exc.strerror or exc})") from exc
    with _flocked(path, shared=not exclusive, when_busy=refuse):
        yield


@contextmanager
def _flocked(path: Path, shared: bool, when_busy: Callable[[], None]) -> Iterator[None]:
    """`flock` on `path` (created if missing) while the block runs; when another process holds it,
    `when_busy()` either raises (fail fast) or returns, and then this waits for the lock. Closing
    the file releases it, as the kernel does for a killed process."""
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            when_busy()
            fcntl.flock(handle, mode)
        yield


def existing_partitions(root: Path) -> int | None:
    """The partition count of an existing store folder, or None when it holds no partition."""
    if not root.exists():
        return None
    if not root.is_dir():
        raise StoreError(f"{root}: a memory store is a folder of partitions, this is a file")
    counts = {int(m.group(2)) for p in root.iterdir() if (m := _PART.match(p.name))}
    if len(counts) > 1:
        raise StoreError(
            f"{root}: partition files of different counts {sorted(counts)}; the store is damaged"
        )
    return counts.pop() if counts else None


def read_store_info(root: Path) -> StoreInfo | None:
    """The layout and model recorded in an existing store (read from one partition), or None."""
    count = existing_partitions(root)
    if count is None:
        return None
    for index in range(count):
        path = partition_path(root, index, count)
        if path.is_file() and path.stat().st_size > 0:  # an empty file is a partition not yet made
            part = SqlitePartition(path, None, index)
            part.close()
            return part.info
    return None


class MemoryStore:
    """`MemoryStoreProtocol` over the partitions of one store folder.

    Args:
        root: the store folder.
        info: the model's expectations (see `SqlitePartition`); None opens the store as it is.
        owned: the partitions to open (all when None). Users of other partitions are refused.
        create: create the folder and missing owned partitions (needs `info`).

    Example::

        store = MemoryStore(Path("memories"), info, create=True)
        store.put_many([state])          # one transaction per partition
        store.get_many(["u1", "u2"])     # {"u1": UserState(...)} for the users that exist
    """

    def __init__(
        self,
        root: Path,
        info: StoreInfo | None = None,
        owned: Sequence[int] | None = None,
        create: bool = False,
    ) -> None:
        self.root = root
        found = existing_partitions(root)
        if found is None:
            if not create:
                raise StoreError(f"{root}: no memory store here (run `cmrec refresh` to build one)")
            if info is None:
                raise StoreError(f"{root}: creating a store needs the model's StoreInfo")
            root.mkdir(parents=True, exist_ok=True)
            found = info.partitions
        if info is not None and info.partitions != found:
            raise StoreError(
                f"{root}: the store has {found} partitions, {info.partitions} were asked for; "
                "the partition count is fixed when a store is built (use --rebuild to change it)"
            )
        self.partitions = found
        indices = list(range(found)) if owned is None else sorted(set(owned))
        bad = [i for i in indices if not 0 <= i < found]
        if bad:
            raise StoreError(f"{root}: partitions {bad} do not exist (the store has {found})")
        self._parts: dict[int, SqlitePartition] = {}
        try:
            for index in indices:
                path = partition_path(root, index, found)
                if not path.is_file() and not create:
                    raise StoreError(
                        f"{path}: partition {index} of {found} is missing; the store is incomplete"
                    )
                self._parts[index] = SqlitePartition(path, info, index)
        except BaseException:
            self.close()  # the partitions opened before the one refused
            raise
        if not self._parts:
            raise StoreError(f"{root}: no partition to open")
        self.info = next(iter(self._parts.values())).info

    @property
    def owned(self) -> list[int]:
        return sorted(self._parts)

    def partition(self, user_id: str) -> SqlitePartition:
        index = partition_of(user_id, self.partitions)
        if index not in self._parts:
            raise StoreError(f"{self.root}: user {user_id!r} belongs to partition {index}, not opened here")
        return self._parts[index]

    def _group(self, user_ids: Sequence[str]) -> dict[int, list[str]]:
        groups: dict[int, list[str]] = defaultdict(list)
        for user_id in user_ids:
            groups[self.partition(user_id).index].append(user_id)
        return groups

    def get_many(self, user_ids: Sequence[str]) -> dict[str, UserState]:
        found: dict[str, UserState] = {}
        for index, ids in self._group(user_ids).items():
            found.update(self._parts[index].get_many(ids))
        return found

    def put_many(self, states: Sequence[UserState]) -> None:
        """One transaction per partition touched (refresh batches never span partitions)."""
        groups: dict[int, list[UserState]] = defaultdict(list)
        for state in states:
            groups[self.partition(state.user_id).index].append(state)
        for index, part_states in groups.items():
            self._parts[index].put_many(part_states)

    def update_many(
        self,
        user_ids: Sequence[str],
        apply: Callable[[list[str], dict[str, UserState]], Sequence[UserState]],
    ) -> None:
        """Read, compute and write atomically, one write transaction per partition touched: `apply`
        is called once per partition with that partition's ids and their stored states."""
        for index, ids in self._group(user_ids).items():
            self._parts[index].update_many(ids, apply)

    def delete(self, user_ids: Sequence[str]) -> int:
        return sum(self._parts[index].delete(ids) for index, ids in self._group(user_ids).items())

    def __iter__(self) -> Iterator[UserState]:
        for part in self._parts.values():
            yield from part

    def __len__(self) -> int:
        return sum(len(part) for part in self._parts.values())

    def file_bytes(self) -> int:
        """Bytes on disk of the opened partitions (database and write-ahead log)."""
        total = 0
        for part in self._parts.values():
            for suffix in ("", "-wal"):
                path = Path(str(part.path) + suffix)
                total += path.stat().st_size if path.exists() else 0
        return total

    def checkpoint(self) -> None:
        """Fold every opened partition's write-ahead log into its database file."""
        for part in self._parts.values():
            part.checkpoint()

    def close(self) -> None:
        for part in self._parts.values():
            part.close()

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_store(root: Path, expected: Callable[[MemoryDtype, int], StoreInfo]) -> MemoryStore:
    """Open an existing store for reading with the layout it has (memory dtype and partitions),
    checked against what a model expects: ``expected(dtype, partitions)``, e.g. a served model's
    `store_info` (a store refreshed by another run is refused by its fingerprint)."""
    with MemoryStore(root) as existing:  # learn the store's dtype and partition count
        dtype, partitions = existing.info.dtype, existing.partitions
    return MemoryStore(root, expected(dtype, partitions))
