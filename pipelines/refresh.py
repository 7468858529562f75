"""`cmrec refresh`: apply new click events to the per-user memories in a store.

Reads an event log (the training schema; each user's rows in time order), drops the events a user
has already consumed (at or below their watermark: rerunning a file changes nothing), appends the
rest to the user's pending clicks and writes every complete N-click segment into the memory with
the run's own incremental update, batched across users, one store transaction per batch. New
users start from the learned initial memory.

The store is a folder of SQLite partitions (users routed by a stable hash of their id).
``--num-workers W`` runs W processes on this machine, worker w owning partitions p with
p % W == w; under ``torchrun`` (RANK and WORLD_SIZE set) each process is one such worker, on any
number of machines sharing the store folder. ``--rebuild`` recomputes every memory from a full
event log (after retraining) into a new folder and swaps it in at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from cmrec.atomic import swap_in
from cmrec.data.events import read_events
from cmrec.errors import CmrecError
from cmrec.pipelines._common import run_command, torchrun_world
from cmrec.serving.events import UserEvents
from cmrec.serving.model import ServedModel
from cmrec.serving.refresh import Refresher, RefreshStats
from cmrec.store import (
    MEMORY_DTYPES,
    MemoryStore,
    StoreInfo,
    existing_partitions,
    partition_of,
    partition_path,
    read_store_info,
    store_lock,
    writer_locks,
)

DESCRIPTION = "Apply new click events to the per-user memories of a store (incremental, idempotent)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, required=True, help="CM run folder written by `cmrec train`")
    parser.add_argument("--events", type=Path, required=True, help="new events (.parquet or .csv)")
    parser.add_argument("--store", type=Path, required=True, help="memory store folder (created if missing)")
    parser.add_argument(
        "--rebuild",
        action="store_true",
        help="recompute every memory from --events (a full log) into a new store and swap it in",
    )
    parser.add_argument(
        "--dtype",
        choices=sorted(MEMORY_DTYPES),
        help="precision of a new store's memories (default float32); an existing store keeps its own",
    )
    parser.add_argument(
        "--partitions", type=int, help="partitions of a new store (default: --num-workers); fixed afterwards"
    )
    parser.add_argument("--num-workers", type=int, help="worker processes on this machine (default 1)")
    parser.add_argument("--batch-users", type=int, default=256, help="users per batch and transaction (256)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


@dataclass(frozen=True)
class _Job:
    """What one worker needs; plain values so that it crosses a process boundary."""

    run: Path
    events: Path
    store: Path
    info: StoreInfo
    rank: int
    world: int
    batch_users: int
    progress: bool
    threads: int


def run(args: argparse.Namespace) -> int:
    rank, world = _worker_identity(args)
    local_workers = args.num_workers is not None
    if args.rebuild and not local_workers and world > 1:
        raise CmrecError(
            "--rebuild under torchrun: write the rebuilt memories to a new --store folder instead, "
            "then point scoring at it (no single process could swap a store shared by many machines)"
        )
    if args.batch_users < 1:
        raise CmrecError(f"--batch-users must be >= 1, got {args.batch_users}")
    served = ServedModel.load(args.run)
    with store_lock(args.store, exclusive=args.rebuild):
        return _locked_run(args, served, rank, world, local_workers)


def _locked_run(
    args: argparse.Namespace, served: ServedModel, rank: int, world: int, local_workers: bool
) -> int:
    # Validate the whole input before touching the store: bad input leaves it unchanged.
    events = UserEvents.from_events(
        read_events(args.events, require_time_order=True), served.vocabs, str(args.events)
    )
    target = _rebuild_folder(args.store) if args.rebuild else args.store
    if args.rebuild and target.exists():
        shutil.rmtree(target)  # a leftover of an interrupted rebuild
    info = _store_info(served, target, args, world)
    checked = list(range(info.partitions)) if local_workers else _owned(info, rank, world)
    _check_store(served, events, target, info, checked, args.batch_users)
    job = _Job(
        run=args.run,
        events=args.events,
        store=target,
        info=info,
        rank=rank,
        world=world,
        batch_users=args.batch_users,
        progress=not args.no_progress,
        threads=max(1, (os.cpu_count() or 1) // world),
    )
    if local_workers and world > 1:
        stats = _run_workers(job)
    else:
        stats = _refresh(job, served, events)
    if args.rebuild:
        _swap(target, args.store)
    worker = f" (worker {rank} of {world})" if world > 1 and not local_workers else ""
    print(
        f"refresh{worker}: {stats.summary()}; store {args.store} "
        f"({info.partitions} partition(s), {info.dtype} memories)"
    )
    return 0


def _worker_identity(args: argparse.Namespace) -> tuple[int, int]:
    """(rank, world): this process's share of the partitions."""
    if args.num_workers is not None:
        if args.num_workers < 1:
            raise CmrecError(f"--num-workers must be >= 1, got {args.num_workers}")
        return 0, args.num_workers
    return torchrun_world() or (0, 1)


def _rebuild_folder(store: Path) -> Path:
    return store.with_name(store.name + ".rebuild")


def _store_info(served: ServedModel, target: Path, args: argparse.Namespace, world: int) -> StoreInfo:
    """The layout of the store: an existing store's own, else the options' (checked for sense)."""
    found = existing_partitions(target)
    stored = read_store_info(target)
    if found is not None and stored is not None:
        if args.dtype and args.dtype != stored.dtype:
            raise CmrecError(
                f"{target}: the store holds {stored.dtype} memories; --dtype {args.dtype} needs --rebuild"
            )
        if args.partitions and args.partitions != found:
            raise CmrecError(
                f"{target}: the store has {found} partitions; --partitions {args.partitions} needs --rebuild"
            )
        return served.store_info(stored.dtype, found)
    partitions = args.partitions or world
    if partitions < world:
        raise CmrecError(f"--partitions ({partitions}) must be at least the number of workers ({world})")
    return served.store_info(args.dtype or "float32", partitions)


def _check_store(
    served: ServedModel, events: UserEvents, target: Path, info: StoreInfo, owned: list[int], batch_users: int
) -> None:
    """Fingerprint, layout and every stored row the input touches, before the first write."""
    present = [p for p in owned if partition_path(target, p, info.partitions).is_file()]
    if not present:
        return
    partition = np.array([partition_of(str(u), info.partitions) for u in events.user_ids], dtype=np.int64)
    with MemoryStore(target, info, owned=present) as store:
        Refresher(served, store, batch_users).check(
            events.select(np.flatnonzero(np.isin(partition, present)))
        )


def _owned(info: StoreInfo, rank: int, world: int) -> list[int]:
    return [p for p in range(info.partitions) if p % world == rank]


def _refresh(job: _Job, served: ServedModel, events: UserEvents) -> RefreshStats:
    """One worker: its partitions of the store, its users of the input."""
    owned = _owned(job.info, job.rank, job.world)
    partition = np.array([partition_of(str(u), job.info.partitions) for u in events.user_ids], dtype=np.int64)
    mine = np.flatnonzero(np.isin(partition, owned))
    with (
        writer_locks(job.store, owned, job.info.partitions),
        MemoryStore(job.store, job.info, owned=owned, create=True) as store,
    ):
        refresher = Refresher(served, store, job.batch_users)
        return refresher.refresh(events.select(mine), groups=partition[mine], show_progress=job.progress)


def _worker_main(job: _Job) -> RefreshStats:
    torch.set_num_threads(job.threads)
    served = ServedModel.load(job.run)
    events = UserEvents.from_events(
        read_events(job.events, require_time_order=True), served.vocabs, str(job.events)
    )
    return _refresh(job, served, events)


def _run_workers(job: _Job) -> RefreshStats:
    jobs = [
        _Job(**{**job.__dict__, "rank": rank, "progress": job.progress and rank == 0})
        for rank in range(job.world)
    ]
    with ProcessPoolExecutor(max_workers=job.world, mp_context=get_context("spawn")) as pool:
        results = list(pool.map(_worker_main, jobs))
    total = RefreshStats()
    for result in results:
        total = total.merge(result)
    return total


def _swap(new: Path, store: Path) -> None:
    """Put a rebuilt store in place of the old one in one step (`swap_in`): a scorer or a kill at
    any moment finds the old store or the new one."""
    swap_in(new, store)


def main(argv: list[str] | None = None) -> int:
    return run_command(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
