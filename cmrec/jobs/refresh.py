"""`refresh_store`: apply an event file to the memories of a store: a folder of SQLite partitions
or a store on a Redis server (`cmrec.store.parse_store`).

Reads an event log (the training schema; each user's rows in time order), drops the events a user
has already consumed (at or below their watermark: rerunning a file changes nothing), appends the
rest to the user's pending clicks and writes every complete N-click segment into the memory with
the run's own incremental update, batched across users, one store transaction per batch.

Worker w of W owns the partitions p with p % W == w (`PartitionRouter`): `workers` > 1 starts W
processes on this machine; a job started W times (torchrun, Spark) passes each its `rank` and
`world`. `rebuild` recomputes every memory from a full log into a new folder and swaps it in.

A folder store serialises writers with file locks (`store_lock`, `writer_locks`: one machine); a
Redis store needs none: each batch is one optimistic compare-and-set script (`RedisStore`), so
workers on any number of machines may share it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import torch

from cmrec.atomic import swap_in
from cmrec.data.events import read_events
from cmrec.errors import CmrecError
from cmrec.serving.events import UserEvents
from cmrec.serving.model import ServedModel
from cmrec.serving.refresh import Refresher, RefreshStats
from cmrec.store import (
    MemoryDtype,
    PartitionRouter,
    RedisLocation,
    StoreInfo,
    StoreLocation,
    existing_partitions,
    memory_store,
    partition_path,
    read_store_info,
    store_lock,
    writer_locks,
)
from cmrec.store.redis_store import REBUILD_HINT


@dataclass(frozen=True)
class RefreshResult:
    """What a refresh did (`RefreshStats`) and the layout of the store it wrote."""

    stats: RefreshStats
    info: StoreInfo


@dataclass(frozen=True)
class _Job:
    """What one worker needs; plain values so that it crosses a process boundary."""

    run: Path
    events: Path
    store: StoreLocation
    info: StoreInfo
    rank: int
    world: int
    batch_users: int
    progress: bool
    threads: int


def refresh_store(
    run: Path,
    events: Path,
    store: StoreLocation,
    *,
    rebuild: bool = False,
    dtype: MemoryDtype | None = None,
    partitions: int | None = None,
    workers: int | None = None,
    rank: int = 0,
    world: int = 1,
    batch_users: int = 256,
    progress: bool = True,
) -> RefreshResult:
    """Refresh `store` with the events of file `events`, using the run folder `run` of an
    incremental model (`cmrec.output.IncrementalModel`: cm and its variants, gru4rec, mimn, hpmn).

    Args:
        rebuild: recompute every memory from `events` (a full log) into a new folder, swapped in.
        dtype, partitions: a new store's memory precision (float32) and partition count (`world`);
            an existing store keeps its own (changing them needs `rebuild`).
        workers: processes on this machine (each one worker); None: this process is worker
            `rank` of `world` (a job started once per worker, on any number of machines).
        batch_users: users per batch and store transaction.
    """
    if partitions is not None and partitions < 1:
        raise CmrecError(f"--partitions must be >= 1, got {partitions}")
    if workers is not None:
        if workers < 1:
            raise CmrecError(f"--num-workers must be >= 1, got {workers}")
        rank, world = 0, workers
    if rebuild and workers is None and world > 1:
        raise CmrecError(
            "--rebuild under torchrun: write the rebuilt memories to a new --store folder instead, "
            "then point scoring at it (no single process could swap a store shared by many machines)"
        )
    if batch_users < 1:
        raise CmrecError(f"--batch-users must be >= 1, got {batch_users}")
    if rebuild and isinstance(store, RedisLocation):
        raise CmrecError(f"--rebuild of a Redis store ({store}): {REBUILD_HINT}")
    served = ServedModel.load(run)
    # Validate the whole input before touching the store (or making its lock file): bad input
    # leaves everything as it was.
    user_events = _read(events, served)
    with _store_lock(store, exclusive=rebuild):
        target = store
        if rebuild and isinstance(store, Path):
            target = store.with_name(store.name + ".rebuild")
            if target.exists():
                shutil.rmtree(target)  # a leftover of an interrupted rebuild
        info = _store_info(served, target, dtype, partitions, world)
        router = PartitionRouter(info.partitions)
        checked = list(range(info.partitions)) if workers is not None else router.owned(rank, world)
        _check_store(served, user_events, target, info, checked, batch_users)
        threads = max(1, (os.cpu_count() or 1) // world)
        job = _Job(run, events, target, info, rank, world, batch_users, progress, threads)
        if workers is not None and world > 1:
            stats = _run_workers(job)
        else:
            stats = _refresh(job, served, user_events)
        if rebuild and isinstance(store, Path) and isinstance(target, Path):
            # One step (`swap_in`): a scorer or a kill at any moment finds the old or the new store.
            swap_in(target, store)
    return RefreshResult(stats, info)


def _store_lock(store: StoreLocation, exclusive: bool) -> contextlib.AbstractContextManager[None]:
    """A folder store's job lock (`store_lock`); a Redis store needs none."""
    return nullcontext() if isinstance(store, RedisLocation) else store_lock(store, exclusive)


@contextmanager
def _writer_locks(store: StoreLocation, owned: list[int], partitions: int) -> Iterator[None]:
    """A folder store's partition locks (`writer_locks`); a Redis store's batches compare and set."""
    if isinstance(store, RedisLocation):
        yield
        return
    with writer_locks(store, owned, partitions):
        yield


def _read(events: Path, served: ServedModel) -> UserEvents:
    return UserEvents.from_events(read_events(events, require_time_order=True), served.vocabs, str(events))


def _store_info(
    served: ServedModel, target: StoreLocation, dtype: MemoryDtype | None, partitions: int | None, world: int
) -> StoreInfo:
    """The layout of the store: an existing store's own, else the options' (checked for sense)."""
    stored = read_store_info(target)
    if isinstance(target, Path):
        found = existing_partitions(target)
    else:
        found = None if stored is None else stored.partitions
    if found is not None and stored is not None:
        if dtype and dtype != stored.dtype:
            raise CmrecError(
                f"{target}: the store holds {stored.dtype} memories; --dtype {dtype} needs --rebuild"
            )
        if partitions and partitions != found:
            raise CmrecError(
                f"{target}: the store has {found} partition(s); --partitions {partitions} needs --rebuild"
            )
        return served.store_info(stored.dtype, found)
    partitions = world if partitions is None else partitions
    if partitions < world:
        raise CmrecError(f"--partitions ({partitions}) must be at least the number of workers ({world})")
    return served.store_info(dtype or "float32", partitions)


def _check_store(
    served: ServedModel,
    events: UserEvents,
    target: StoreLocation,
    info: StoreInfo,
    owned: list[int],
    batch_users: int,
) -> None:
    """Fingerprint, layout and every stored row the input touches, before the first write."""
    if isinstance(target, Path):
        present = [p for p in owned if partition_path(target, p, info.partitions).is_file()]
    else:
        present = owned if read_store_info(target) is not None else []
    if not present:
        return
    rows, _ = PartitionRouter(info.partitions).select(events.user_ids, present)
    with memory_store(target, info, owned=present) as store:
        Refresher(served, store, batch_users).check(events.select(rows))


def _refresh(job: _Job, served: ServedModel, events: UserEvents) -> RefreshStats:
    """One worker: its partitions of the store, its users of the input."""
    router = PartitionRouter(job.info.partitions)
    owned = router.owned(job.rank, job.world)
    mine, partition = router.select(events.user_ids, owned)
    with (
        _writer_locks(job.store, owned, job.info.partitions),
        memory_store(job.store, job.info, owned=owned, create=True) as store,
    ):
        refresher = Refresher(served, store, job.batch_users)
        return refresher.refresh(events.select(mine), groups=partition, show_progress=job.progress)


def _worker_main(job: _Job) -> RefreshStats:
    torch.set_num_threads(job.threads)
    served = ServedModel.load(job.run)
    return _refresh(job, served, _read(job.events, served))


def _leave_sigint_to_the_parent() -> None:
    """Workers ignore Ctrl-C (it reaches the whole process group): the parent stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_workers(job: _Job) -> RefreshStats:
    jobs = [replace(job, rank=rank, progress=job.progress and rank == 0) for rank in range(job.world)]
    pool = ProcessPoolExecutor(
        max_workers=job.world, mp_context=get_context("spawn"), initializer=_leave_sigint_to_the_parent
    )
    try:
        results = list(pool.map(_worker_main, jobs))
    except KeyboardInterrupt:  # SIGINT or SIGTERM to the job (`run_guarded`): stop every worker now
        # SIGTERM ends a worker between or inside a store transaction; an unfinished one rolls back,
        # as after SIGKILL. (The executor has no public way to do this before Python 3.14.)
        for process in list(pool._processes.values()):
            process.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    total = RefreshStats()
    for result in results:
        total = total.merge(result)
    return total
