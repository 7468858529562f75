"""Which partition holds a user, and which partitions a worker owns: one router for the refresh
job, the store folder and external jobs (a Spark or Airflow task that pre-groups events by
partition must agree with it byte for byte).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from cmrec.store.state import StoreError


def partition_of(user_id: str, partitions: int) -> int:
    """The partition of a user: CRC-32 of the id's UTF-8 bytes modulo P (stable across machines)."""
    return zlib.crc32(user_id.encode("utf-8")) % partitions


@dataclass(frozen=True)
class PartitionRouter:
    """Users over `partitions` partitions; worker w of W owns the partitions p with p % W == w.

    Example::

        router = PartitionRouter(8)
        mine = router.owned(rank=1, world=4)            # [1, 5]
        rows, parts = router.select(events.user_ids, mine)  # the events worker 1 refreshes
    """

    partitions: int

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise StoreError(f"partitions must be >= 1, got {self.partitions}")

    def of(self, user_id: str) -> int:
        return partition_of(user_id, self.partitions)

    def of_many(self, user_ids: Iterable[object]) -> np.ndarray:
        """(U,) int64 partition of each user (ids as strings)."""
        return np.array([partition_of(str(u), self.partitions) for u in user_ids], dtype=np.int64)

    def owned(self, rank: int, world: int) -> list[int]:
        """The partitions worker `rank` of `world` writes."""
        return [p for p in range(self.partitions) if p % world == rank]

    def select(self, user_ids: Iterable[object], partitions: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """Positions of the users that fall in `partitions`, and the partition of each of them."""
        of = self.of_many(user_ids)
        rows = np.flatnonzero(np.isin(of, list(partitions)))
        return rows, of[rows]
