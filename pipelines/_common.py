"""What every job entry point shares: running a job with one-line errors, its own `main`, and
reading a YAML config file (YAML lives at the pipeline edge only).

This is the CLI layer: `cmrec.cli` and the pipelines import it; the library (`cmrec.*` outside
`cmrec.pipelines`) never does.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import yaml

from cmrec.errors import CmrecError, DataWarning

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


def add_command(sub: argparse._SubParsersAction, name: str, module: ModuleType) -> None:
    """Register a pipeline module (``DESCRIPTION``, ``add_arguments``, ``run``) as subcommand `name`."""
    command = sub.add_parser(name, help=module.DESCRIPTION, description=module.__doc__)
    command.formatter_class = argparse.RawDescriptionHelpFormatter
    module.add_arguments(command)
    command.set_defaults(_run=module.run)


def run_command(module: ModuleType, argv: Sequence[str] | None = None) -> int:
    """A pipeline module's own ``main(argv)``: the same as ``cmrec NAME ARGV``."""
    spec = module.__spec__  # under `python -m`, __name__ is "__main__" but the spec keeps the name
    name = (spec.name if spec is not None else module.__name__).rsplit(".", 1)[-1]
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="cmrec")
    add_command(parser.add_subparsers(dest="command", required=True), name, module)
    args = parser.parse_args([name, *argv])
    args.argv = [name, *argv]  # the command line itself, for jobs that relaunch themselves
    return run_guarded(args._run, args, name)


def read_overrides(path: Path | None) -> dict[str, Any]:
    """Config values from a YAML mapping (lists become tuples); {} without a file."""
    if path is None:
        return {}
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CmrecError(f"{path}: cannot read the YAML config: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise CmrecError(f"{path}: the YAML config must be a mapping of config keys to values")
    return {key: tuple(v) if isinstance(v, list) else v for key, v in loaded.items()}
