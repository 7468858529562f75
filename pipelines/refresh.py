"""`cmrec refresh`: apply new click events to the per-user memories in a store.

Reads an event log (the training schema; each user's rows in time order), drops the events a user
has already consumed (at or below their watermark: rerunning a file changes nothing), appends the
rest to the user's pending clicks and writes every complete N-click segment into the memory with
the run's own incremental update, batched across users, one store transaction per batch. New
users start from the learned initial memory.

The store is a folder of SQLite partitions (users routed by a stable hash of their id), or a store
on a Redis server (``--store redis://HOST:PORT/DB/NAME``, ``rediss://`` for TLS, the password in
$CMREC_REDIS_PASSWORD), where every batch is one atomic compare-and-set script and any number of
workers on any machines may refresh at once. ``--num-workers W`` runs W processes on this
machine, worker w owning partitions p with p % W == w; under ``torchrun`` (RANK and WORLD_SIZE
set) each process is one such worker, on any number of machines sharing the store.
``--rebuild`` recomputes every memory of a folder store from a full event log (after retraining)
into a new folder and swaps it in at the end (a Redis store is rebuilt under a new name).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cmrec.jobs import refresh_store
from cmrec.pipelines._common import run_command
from cmrec.store import MEMORY_DTYPES
from cmrec.store.location import STORE_HELP, store_argument
from cmrec.train.distributed import torchrun_world

DESCRIPTION = "Apply new click events to the per-user memories of a store (incremental, idempotent)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run",
        type=Path,
        required=True,
        help="run folder of an incremental model (cm and its variants, gru4rec, mimn, hpmn) from "
        "`cmrec train`",
    )
    parser.add_argument("--events", type=Path, required=True, help="new events (.parquet or .csv)")
    parser.add_argument(
        "--store", type=store_argument, required=True, help=f"{STORE_HELP}; created if missing"
    )
    parser.add_argument(
        "--rebuild",
        action="store_true",
        help="recompute every memory from --events (a full log) into a new store folder and swap it in "
        "(folder stores; a Redis store is rebuilt under a new name)",
    )
    parser.add_argument(
        "--dtype",
        choices=sorted(MEMORY_DTYPES),
        help="precision of a new store's memories (default float32); an existing store keeps its own",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        help="partitions of a new store (default: --num-workers); fixed afterwards. On Redis Cluster a "
        "partition is one hash slot: use several per primary",
    )
    parser.add_argument("--num-workers", type=int, help="worker processes on this machine (default 1)")
    parser.add_argument("--batch-users", type=int, default=256, help="users per batch and transaction (256)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    workers = args.num_workers
    rank, world = (0, 1) if workers is not None else (torchrun_world() or (0, 1))
    result = refresh_store(
        args.run,
        args.events,
        args.store,
        rebuild=args.rebuild,
        dtype=args.dtype,
        partitions=args.partitions,
        workers=workers,
        rank=rank,
        world=world,
        batch_users=args.batch_users,
        progress=not args.no_progress,
    )
    info = result.info
    worker = f" (worker {rank} of {world})" if world > 1 and workers is None else ""
    print(
        f"refresh{worker}: {result.stats.summary()}; store {args.store} "
        f"({info.partitions} partition(s), {info.dtype} memories)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
