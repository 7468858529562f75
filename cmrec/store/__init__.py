"""Per-user memory storage: the protocol, the user state and the SQLite-backed store folder."""

from cmrec.store.folder import (
    MemoryStore,
    existing_partitions,
    open_store,
    partition_path,
    read_store_info,
    store_lock,
    writer_locks,
)
from cmrec.store.protocol import MemoryStoreProtocol
from cmrec.store.routing import PartitionRouter, partition_of
from cmrec.store.sqlite import SqlitePartition
from cmrec.store.state import MEMORY_DTYPES, MemoryDtype, StoreError, StoreInfo, UserState

__all__ = [
    "MEMORY_DTYPES",
    "MemoryDtype",
    "MemoryStore",
    "MemoryStoreProtocol",
    "PartitionRouter",
    "SqlitePartition",
    "StoreError",
    "StoreInfo",
    "UserState",
    "existing_partitions",
    "open_store",
    "partition_of",
    "partition_path",
    "read_store_info",
    "store_lock",
    "writer_locks",
]
