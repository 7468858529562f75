"""Per-user memory storage: the protocol, the user state and the SQLite-backed store folder."""

from cmrec.store.folder import (
    MemoryStore,
    existing_partitions,
    partition_of,
    partition_path,
    read_store_info,
    store_lock,
    writer_locks,
)
from cmrec.store.protocol import MemoryStoreProtocol
from cmrec.store.sqlite import SqlitePartition, StoreInfo
from cmrec.store.state import MEMORY_DTYPES, MemoryDtype, StoreError, UserState

__all__ = [
    "MEMORY_DTYPES",
    "MemoryDtype",
    "MemoryStore",
    "MemoryStoreProtocol",
    "SqlitePartition",
    "StoreError",
    "StoreInfo",
    "UserState",
    "existing_partitions",
    "partition_of",
    "partition_path",
    "read_store_info",
    "store_lock",
    "writer_locks",
]
