"""The `cmrec` command: one subcommand per job in `pipelines/`.

Each pipeline module exposes ``DESCRIPTION``, ``add_arguments(parser)``, ``run(args) -> int`` and
``main(argv)``. Errors a user can act on (`CmrecError`) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Callable

import torch

from cmrec.errors import CmrecError, DataWarning

# Subcommand -> pipeline module.
COMMANDS: dict[str, str] = {
    "generate": "pipelines.generate",
    "train": "pipelines.train",
    "convert": "pipelines.convert",
    "evaluate": "pipelines.evaluate",
    "compare": "pipelines.compare",
    "refresh": "pipelines.refresh",
    "score": "pipelines.score",
    "forget": "pipelines.forget",
    "bench": "pipelines.bench",
}
EXIT_USER_ERROR = 2


def run_guarded(run: Callable[[argparse.Namespace], int], args: argparse.Namespace, name: str) -> int:
    """Run a pipeline; a `CmrecError` becomes a one-line message and exit status 2."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Subnormal floats appear in the backward pass through a long segment recurrence; on this CPU
    # they made CM's backward at L = 1,000 about 6 times slower (8.8 s against 1.5 s). Flushing
    # them to zero changes nothing above 1e-38.
    torch.set_flush_denormal(True)

    def show(message: Warning | str, *_: object, **__: object) -> None:
        print(f"cmrec {name}: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", DataWarning)
            warnings.showwarning = show
            return run(args)
    except CmrecError as exc:
        print(f"cmrec {name}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:
        if exc.filename is None:  # not about a path the user gave: a bug to report, with its traceback
            raise
        where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
        print(f"cmrec {name}: error: {where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USER_ERROR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmrec",
        description="Continual Memory for lifelong user modelling: data, training, refresh, scoring.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=module.DESCRIPTION, description=module.__doc__)
        command.formatter_class = argparse.RawDescriptionHelpFormatter
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command line itself, for jobs that relaunch themselves (train --nproc)
    return run_guarded(args._run, args, args.command)


def run_pipeline(command: str, argv: list[str] | None = None) -> int:
    """A pipeline module's own ``main(argv)``: the same as ``cmrec COMMAND ARGV``."""
    return main([command, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
