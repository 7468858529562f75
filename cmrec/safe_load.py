"""Loading a file a user was handed (a checkpoint, a run folder, an MLflow artifact) runs no code.

Every torch file cmrec reads goes through `load_weights_only`: `torch.load(weights_only=True)`
admits tensors, plain containers, strings and numbers, and refuses any other class a pickle names.
A refusal is one line that says the file is not what cmrec writes and was not loaded: never
torch's advice to re-run `torch.load` with `weights_only=False`, which would run the payload.

`restricted_unpickle` reads the few pickles that are not torch files (the `.metadata` of a
`torch.distributed.checkpoint` folder) with an allow-list of the classes such a file holds.
"""

from __future__ import annotations

import itertools
import pickle
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import torch

from cmrec.errors import CmrecError


class UnsafeFileError(CmrecError):
    """A file names a class or function cmrec never writes; it was not loaded."""


def load_weights_only(source: Path | IO[bytes], name: str | Path, what: str = "a cmrec checkpoint") -> Any:
    """`torch.load(source, weights_only=True)` on the CPU; `name` names the file in errors.

    Raises `UnsafeFileError` for a file that asks for anything but weights and plain values, and
    `CmrecError` for one that cannot be read (truncated, not a torch file).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle warnings: the error below says it all
            return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = _weights_only_detail(exc)
        if "GLOBAL" in detail:
            raise UnsafeFileError(
                f"{name}: not {what}: it holds objects cmrec never writes ({detail}); not loaded"
            ) from None
        raise CmrecError(f"{name}: cannot read {what}: {detail}") from None
    except Exception as exc:  # torch raises several types for a damaged file
        raise CmrecError(
            f"{name}: cannot read {what} ({type(exc).__name__}: {_first_line(exc)}): damaged, or not "
            "a file cmrec wrote"
        ) from None


def restricted_unpickle(
    stream: IO[bytes], name: str | Path, allowed: Mapping[str, Callable[[str], bool]], what: str
) -> Any:
    """Unpickle `stream` admitting only the globals `allowed[module](attribute)` accepts.

    A pickle can only run code through the globals it names; admitting only classes whose
    construction does nothing but hold data makes reading one run nothing else.
    """

    class _AllowList(pickle.Unpickler):
        def find_class(self, module: str, attribute: str) -> Any:
            check = allowed.get(module)
            if check is None or not check(attribute):
                raise UnsafeFileError(
                    f"{name}: not {what}: it asks for {module}.{attribute}, which such a file never "
                    "holds; not loaded"
                )
            return super().find_class(module, attribute)

    try:
        return _AllowList(stream).load()
    except UnsafeFileError:
        raise
    except Exception as exc:  # a damaged pickle raises several types
        raise CmrecError(f"{name}: cannot read {what}: {_first_line(exc)}") from None


def _weights_only_detail(exc: Exception) -> str:
    """The line of torch's weights-only refusal that says what it met (e.g. 'GLOBAL posix.system',
    'Unsupported operand 110'), without its advice around it."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        words = line.split()
        if "GLOBAL" in words[:-1]:
            return f"GLOBAL {words[words.index('GLOBAL') + 1]}"
    for before, line in itertools.pairwise(lines):
        if before.endswith("WeightsUnpickler error:") or "Unpickler error" in before:
            return line[:300]
    return _first_line(exc)


def _first_line(exc: Exception) -> str:
    """The exception's first sentence: torch's zip reader adds two sentences of advice to its own."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line.split(". ", 1)[0].rstrip(".")[:300]
