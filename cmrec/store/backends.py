"""One entry point for both store backends: a folder of SQLite partitions (`MemoryStore`) or a
store on a Redis server (`RedisStore`), chosen by the store's location (`parse_store`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from cmrec.store import folder
from cmrec.store.location import RedisLocation, StoreLocation
from cmrec.store.redis_store import NoStoreError, RedisStore
from cmrec.store.state import MemoryDtype, StoreInfo

AnyStore = folder.MemoryStore | RedisStore


def memory_store(
    location: StoreLocation,
    info: StoreInfo | None = None,
    owned: Sequence[int] | None = None,
    create: bool = False,
) -> AnyStore:
    """The store at `location` (see `MemoryStore` and `RedisStore` for the arguments)."""
    if isinstance(location, RedisLocation):
        return RedisStore(location, info, owned=owned, create=create)
    return folder.MemoryStore(location, info, owned=owned, create=create)


def open_store(location: StoreLocation, expected: Callable[[MemoryDtype, int], StoreInfo]) -> AnyStore:
    """Open an existing store for reading with the layout it has (memory dtype and partitions),
    checked against what a model expects: ``expected(dtype, partitions)``, e.g. a served model's
    `store_info` (a store refreshed by another run is refused by its fingerprint)."""
    if isinstance(location, Path):
        return folder.open_store(location, expected)
    with RedisStore(location) as existing:
        dtype, partitions = existing.info.dtype, existing.partitions
    return RedisStore(location, expected(dtype, partitions))


def read_store_info(location: StoreLocation) -> StoreInfo | None:
    """The layout and model recorded in an existing store, or None when there is none yet."""
    if isinstance(location, Path):
        return folder.read_store_info(location)
    try:
        with RedisStore(location) as existing:
            return existing.info
    except NoStoreError:
        return None
