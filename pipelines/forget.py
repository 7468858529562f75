"""`cmrec forget`: delete users' stored state (memory, pending clicks, watermark) from a store.

A forgotten user who clicks again starts from the learned initial memory at the next refresh.
``--all`` deletes every user (and, on Redis, the store's meta key: the store name is free again).
"""

from __future__ import annotations

import argparse
import sys

from cmrec.errors import CmrecError
from cmrec.pipelines._common import run_command
from cmrec.store import RedisStore, memory_store
from cmrec.store.location import STORE_HELP, store_argument

DESCRIPTION = "Delete users' stored memories from a store."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", type=store_argument, required=True, help=STORE_HELP)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--user", nargs="+", help="user id(s) to forget")
    which.add_argument(
        "--all", action="store_true", help="delete every user (a Redis store: the whole store name)"
    )


def run(args: argparse.Namespace) -> int:
    with memory_store(args.store) as store:
        if args.all:
            if isinstance(store, RedisStore):
                deleted = store.drop()
            else:
                deleted = store.delete([state.user_id for state in store])
            print(f"forget: deleted all {deleted} user(s) of {args.store}")
            return 0
        users = [str(u) for u in args.user]
        if not users:
            raise CmrecError("--user needs at least one user id")
        deleted = store.delete(users)
    print(f"forget: deleted {deleted} of {len(users)} user(s) from {args.store}", end="")
    print(f" ({len(users) - deleted} were not in the store)" if deleted < len(users) else "")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
