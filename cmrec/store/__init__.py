"""Per-user memory storage: the protocol, the user state, the SQLite-backed store folder and the
Redis backend (`parse_store` tells them apart)."""

from cmrec.store.backends import AnyStore, memory_store, open_store, read_store_info
from cmrec.store.folder import (
    MemoryStore,
    existing_partitions,
    partition_path,
    store_lock,
    writer_locks,
)
from cmrec.store.location import RedisLocation, StoreLocation, parse_store, store_argument
from cmrec.store.protocol import MemoryStoreProtocol
from cmrec.store.redis_store import RedisStore
from cmrec.store.routing import PartitionRouter, partition_of
from cmrec.store.sqlite import SqlitePartition
from cmrec.store.state import MEMORY_DTYPES, MemoryDtype, StoreError, StoreInfo, UserState

__all__ = [
    "MEMORY_DTYPES",
    "AnyStore",
    "MemoryDtype",
    "MemoryStore",
    "MemoryStoreProtocol",
    "PartitionRouter",
    "RedisLocation",
    "RedisStore",
    "SqlitePartition",
    "StoreError",
    "StoreInfo",
    "StoreLocation",
    "UserState",
    "existing_partitions",
    "memory_store",
    "open_store",
    "parse_store",
    "partition_of",
    "partition_path",
    "read_store_info",
    "store_argument",
    "store_lock",
    "writer_locks",
]
