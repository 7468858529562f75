"""The `cmrec` command: one subcommand per job in `cmrec.pipelines` (the repository's `pipelines/`).

Each pipeline module exposes ``DESCRIPTION``, ``add_arguments(parser)``, ``run(args) -> int`` and
``main(argv)``. Errors a user can act on (`CmrecError`) print one line and exit with status 2.
The CLI imports the pipelines, the pipelines import the library, and nothing imports back.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from cmrec.allocator import keep_freed_memory

keep_freed_memory()  # before torch is imported: the jobs' large activations reuse the heap

from cmrec.pipelines._common import EXIT_USER_ERROR, OneLineParser, add_command, run_guarded  # noqa: E402

# Subcommand -> pipeline module.
COMMANDS: dict[str, str] = {
    name: f"cmrec.pipelines.{name}"
    for name in (
        "demo",
        "generate",
        "train",
        "convert",
        "evaluate",
        "compare",
        "refresh",
        "score",
        "forget",
        "bench",
        "ui",
    )
}
__all__ = ["COMMANDS", "EXIT_USER_ERROR", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="cmrec",
        description="Continual Memory for lifelong user modelling: data, training, refresh, scoring.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        add_command(sub, name, importlib.import_module(module_name))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command line itself, for jobs that relaunch themselves (train --nproc)
    return run_guarded(args._run, args, args.command)


if __name__ == "__main__":
    sys.exit(main())
