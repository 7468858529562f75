"""The memory store protocol: what refresh and scoring need from any backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from cmrec.store.state import UserState


class MemoryStoreProtocol(Protocol):
    """A key-value store of `UserState` by user id.

    `put_many` must be atomic per call for the users of one partition (readers see each user before
    or after, never between); `get_many` returns only the users that exist. `update_many` is the
    read-modify-write of a refresh: ``apply(ids, found)`` computes the new states from the stored
    ones, and no other writer may change those users between the read and the write (a backend
    serialises, or retries `apply` on a conflict, so `apply` must have no side effect outside its
    result).
    """

    def get_many(self, user_ids: Sequence[str]) -> dict[str, UserState]: ...

    def put_many(self, states: Sequence[UserState]) -> None: ...

    def update_many(
        self,
        user_ids: Sequence[str],
        apply: Callable[[list[str], dict[str, UserState]], Sequence[UserState]],
    ) -> None: ...

    def delete(self, user_ids: Sequence[str]) -> int: ...

    def __iter__(self) -> Iterator[UserState]: ...
