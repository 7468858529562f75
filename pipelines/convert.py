"""`cmrec convert`: turn a distributed checkpoint of `cmrec train --nproc` into a plain one.

A multi-process run keeps RUN/distributed/best (the best validation epoch) and
RUN/distributed/last (the end of the newest epoch) as torch.distributed.checkpoint folders, one
file of shards per process. `train` itself converts `best` into RUN/checkpoint.pt; this command
converts either (for instance the last epoch of an interrupted run) into OUT/checkpoint.pt, the
single-process checkpoint that `evaluate`, `refresh` and `score` load. It needs no process group
and any number of processes may have written the folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cmrec.errors import CmrecError
from cmrec.pipelines._common import run_command
from cmrec.train.checkpoint import CHECKPOINT
from cmrec.train.distributed import DISTRIBUTED_DIR, convert_distributed

DESCRIPTION = "Turn a distributed (multi-process) checkpoint into a single-process run folder."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, required=True, help="run folder of `cmrec train --nproc`")
    parser.add_argument(
        "--checkpoint",
        default="best",
        help="best (default), last, or the path of a distributed checkpoint folder",
    )
    parser.add_argument("--out", type=Path, help="run folder to write checkpoint.pt into (default: --run)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT/checkpoint.pt")


def run(args: argparse.Namespace) -> int:
    source = (
        args.run / DISTRIBUTED_DIR / args.checkpoint
        if args.checkpoint in ("best", "last")
        else Path(args.checkpoint)
    )
    if not source.is_dir():
        raise CmrecError(f"{source}: no distributed checkpoint folder (was the run trained with --nproc?)")
    out_dir = args.out if args.out is not None else args.run
    target = out_dir / CHECKPOINT
    if target.exists() and not args.overwrite:
        raise CmrecError(f"{target}: exists; pass --overwrite to replace it")
    payload = convert_distributed(source, target)
    epoch = payload["extra"].get("epoch", "?")
    print(f"wrote {target}: model {payload['model']}, epoch {epoch}, from {source}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
