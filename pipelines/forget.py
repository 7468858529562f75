"""`cmrec forget`: delete users' stored state (memory, pending clicks, watermark) from a store.

A forgotten user who clicks again starts from the learned initial memory at the next refresh.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cmrec.pipelines._common import run_command
from cmrec.store import MemoryStore

DESCRIPTION = "Delete users' stored memories from a store."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", type=Path, required=True, help="memory store folder")
    parser.add_argument("--user", nargs="+", required=True, help="user id(s) to forget")


def run(args: argparse.Namespace) -> int:
    users = [str(u) for u in args.user]
    with MemoryStore(args.store) as store:
        deleted = store.delete(users)
    print(f"forget: deleted {deleted} of {len(users)} user(s) from {args.store}", end="")
    print(f" ({len(users) - deleted} were not in the store)" if deleted < len(users) else "")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
