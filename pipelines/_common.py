"""What every job entry point shares: running a job with one-line errors, its own `main`, and
reading a YAML config file (YAML lives at the pipeline edge only).

This is the CLI layer: `cmrec.cli` and the pipelines import it; the library (`cmrec.*` outside
`cmrec.pipelines`) never does.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any, NoReturn

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

    stopped: dict[str, int] = {}  # which signal stopped the job, if one did
    try:
        with warnings.catch_warnings(), _stopped_by_signals(stopped):
            warnings.simplefilter("always", DataWarning)
            warnings.showwarning = show
            return run(args)
    except KeyboardInterrupt:
        signum = stopped.get("signal", signal.SIGINT)
        print(
            f"cmrec {name}: stopped by {signal.Signals(signum).name}; every output is written whole or "
            "not at all (a store keeps the batches it finished), so run the command again to finish",
            file=sys.stderr,
        )
        return 128 + signum
    except CmrecError as exc:
        print(f"cmrec {name}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:
        if exc.filename is None:  # not about a path the user gave: a bug to report, with its traceback
            raise
        where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
        print(f"cmrec {name}: error: {where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USER_ERROR


@contextmanager
def _stopped_by_signals(stopped: dict[str, int]) -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt inside the block, so that every clean-up runs
    (scratch folders deleted, store transactions rolled back) and the job ends with one line; the
    signal is recorded in `stopped`. SIGINT is taken even where it was inherited ignored (a job a
    script started with `&`). Outside the main thread nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        stopped["signal"] = signum
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the flag and what is allowed), exit status 2: the
    usage block a mistyped flag otherwise prints runs to 16 lines for `cmrec train`."""

    def error(self, message: str) -> NoReturn:
        hint = f"`{self.prog} --help` lists the options"
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} ({hint})\n")


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
    parser = OneLineParser(prog="cmrec")
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
    except OSError as exc:
        raise CmrecError(f"{path}: cannot read the YAML config ({exc.strerror or exc})") from exc
    except yaml.YAMLError as exc:
        raise CmrecError(f"{path}: not a YAML config: {_yaml_problem(exc)}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise CmrecError(f"{path}: the YAML config must be a mapping of config keys to values")
    return {key: tuple(v) if isinstance(v, list) else v for key, v in loaded.items()}


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's several-line message as one line: the problem and where (line and column, from 1)."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return problem if mark is None else f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
