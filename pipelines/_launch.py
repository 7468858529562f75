"""`cmrec train --nproc N`: the multi-process options, and the launch of the N processes.

The launching process prepares the run folder, starts ``torchrun --standalone`` with the same
command line (less ``--nproc``), and swaps the finished run folder in when every process
succeeded; the processes it starts leave the swap to it. Under a torchrun started by hand (several
machines) the world torchrun sets is used and the first process swaps.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

import torch

from cmrec.atomic import partial_folder, swap_in
from cmrec.errors import CmrecError
from cmrec.train.distributed import EMBEDDING_OPTIMIZERS, SHARDING_TYPES, ShardingOptions, torchrun_world
from cmrec.train.run_folder import prepare_run_folder

STOP_TIMEOUT_S = 60.0  # how long stopped workers get to finish their clean-up
SWAP_BY_LAUNCHER = "CMREC_SWAP_BY_LAUNCHER"  # set for the processes `--nproc` starts


def add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("multi-process training (TorchRec DistributedModelParallel)")
    group.add_argument(
        "--nproc",
        type=int,
        help="train in N processes on this machine (torchrun --standalone); under torchrun the world "
        "it sets is used and --nproc is ignored",
    )
    group.add_argument(
        "--sharding",
        choices=list(SHARDING_TYPES),
        default="auto",
        help="how the embedding tables are split over processes (default auto: the planner's choice)",
    )
    group.add_argument(
        "--embedding-optimizer",
        choices=list(EMBEDDING_OPTIMIZERS),
        default="rowwise-adagrad",
        help="fused optimizer of the sharded tables (default rowwise-adagrad; adam: GPU only)",
    )
    group.add_argument("--embedding-lr", type=float, default=0.01, help="its learning rate (default 0.01)")
    group.add_argument(
        "--resume", action="store_true", help="continue from RUN_DIR/distributed/last (same settings)"
    )


def sharding_options(args: argparse.Namespace) -> ShardingOptions | None:
    """The sharding of a multi-process run (--nproc, or started by torchrun); None for one process."""
    under_torchrun = torchrun_world() is not None
    if args.resume and args.nproc is None and not under_torchrun:
        raise CmrecError("--resume continues a multi-process run: give --nproc N as well")
    if args.nproc is not None and args.nproc < 1:
        raise CmrecError(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc is None and not under_torchrun:
        return None
    options = ShardingOptions(args.sharding, args.embedding_optimizer, args.embedding_lr, args.lr)
    if not under_torchrun:
        options.check_device("cuda" if torch.cuda.is_available() else "cpu")  # before any process starts
    return options


def started_by_launch() -> bool:
    """Whether `launch_and_swap` started this process (it then swaps the run folder in itself)."""
    return os.environ.get(SWAP_BY_LAUNCHER) == "1"


def launch_and_swap(args: argparse.Namespace) -> int:
    """Start the --nproc processes on this machine; swap the run folder in when all succeeded."""
    prepare_run_folder(args.out, args.resume)
    os.environ[SWAP_BY_LAUNCHER] = "1"  # the processes leave the swap to this one
    try:
        code = launch(args.nproc, args.argv)
    finally:
        del os.environ[SWAP_BY_LAUNCHER]
    if code == 0:
        swap_in(partial_folder(args.out), args.out)
    return code if code in (0, 2) else 1


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``cmrec ARGV`` in `nproc` processes on this machine (``torchrun --standalone``).

    ``--nproc`` is left out of the children's command line (torchrun sets their world, and its own
    parser would take ``--nproc`` for an abbreviation of ``--nproc-per-node``).
    """
    forwarded: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            forwarded.append(arg)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "cmrec.cli",
        *forwarded,
    ]
    process = subprocess.Popen(command)
    try:
        return process.wait()
    except KeyboardInterrupt:  # SIGINT or SIGTERM to this process (`run_guarded`): stop the workers too
        process.send_signal(signal.SIGTERM)  # torchrun passes it on to every worker and waits for them
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        raise
