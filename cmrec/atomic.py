"""Writing outputs so that no reader and no kill ever sees half of them: the one home of
"write to a scratch place, then rename".

* A file is written beside its target under a hidden scratch name and renamed over it
  (`write_file`, `write_text`, `write_json`): the target is the old file or the new one.
* A folder is built whole in a hidden sibling (`partial_folder`) and swapped in (`swap_in`): on
  Linux ``renameat2(RENAME_EXCHANGE)`` exchanges the two names in one step, so the target is always
  the old folder or the new one; elsewhere the old folder is first renamed aside
  (`aside_folder`), a moment in which the target is missing but the old folder is whole.
* `output_folder` wraps a job that writes a folder: checks, scratch, swap, clean-up.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from cmrec.errors import CmrecError


def partial_folder(out: Path) -> Path:
    """Where a folder is built before `swap_in`: the hidden sibling ``.NAME.partial``."""
    return out.with_name(f".{out.name}.partial")


def aside_folder(out: Path) -> Path:
    """Where `swap_in` keeps the old folder while it renames, where it cannot exchange: ``.NAME.old``."""
    return out.with_name(f".{out.name}.old")


def _in_the_way(path: Path) -> CmrecError | None:
    """The error for a file standing where a folder above `path` must be, if one does (the nearest
    existing ancestor decides: nothing can go under a file)."""
    for above in path.parents:
        if above.exists():
            return (
                None
                if above.is_dir()
                else CmrecError(f"{path}: cannot be written, {above} is a file, not a folder")
            )
    return None


def unwritable(path: Path, exc: OSError) -> CmrecError:
    """One line on why `path` could not be written, naming `path` (and a file standing where a
    folder above it must be), not whatever scratch name the failing call used."""
    return _in_the_way(path) or CmrecError(f"{path}: cannot be written ({exc.strerror or exc})")


def ensure_parent(path: Path) -> None:
    """Create the folder `path` goes into, or raise one line naming `path`."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise unwritable(path, exc) from exc


def check_output_file(path: Path) -> None:
    """Refuse, before any work, a file output that could not be written: a folder at `path`, or a
    file where a folder above it must be."""
    if path.is_dir():
        raise CmrecError(f"{path}: is a folder; give the name of a file to write")
    blocked = _in_the_way(path)
    if blocked is not None:
        raise blocked


def new_scratch_folder(out: Path) -> Path:
    """An empty `partial_folder` of `out` (a leftover one is deleted); a failure names `out`, the
    folder the user asked for, not the hidden scratch name."""
    scratch = partial_folder(out)
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        scratch.mkdir()
    except OSError as exc:
        raise unwritable(out, exc) from exc
    return scratch


def write_file(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(scratch)`` for a hidden scratch file beside `path`, then rename it to `path`.
    A failure names `path` (not the scratch file); a folder at `path` is refused before writing."""
    check_output_file(path)
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(scratch)
        os.replace(scratch, path)
    except OSError as exc:
        if exc.filename is None or Path(exc.filename) != scratch:
            raise
        raise unwritable(path, exc) from exc
    finally:
        with suppress(FileNotFoundError, NotADirectoryError):  # nothing was written: nothing to remove
            scratch.unlink()


def write_text(path: Path, text: str) -> None:
    write_file(path, lambda scratch: scratch.write_text(text))


def write_json(path: Path, payload: dict[str, Any]) -> None:
    write_text(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def swap_in(new: Path, out: Path) -> None:
    """Make the complete folder `new` appear as `out`; the old `out` is then deleted."""
    if not out.exists():
        os.rename(new, out)
        return
    if _exchange(new, out):
        shutil.rmtree(new)  # now the old folder
        return
    old = aside_folder(out)
    shutil.rmtree(old, ignore_errors=True)
    os.rename(out, old)
    os.rename(new, out)
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2, RENAME_EXCHANGE); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, f"cannot exchange {a} and {b}: {os.strerror(code)}")


def check_output_folder(out: Path, overwrite: bool, markers: tuple[str, ...], what: str) -> None:
    """Refuse an existing `out` unless `overwrite`, and always one that is not `what` (it holds
    none of `markers`); check that the folder beside which the job builds can be written."""
    if out.exists():
        if not out.is_dir():
            raise CmrecError(f"{out}: exists and is not a folder")
        held = sorted(p.name for p in out.iterdir())
        if held and not any(name in held for name in markers):
            raise CmrecError(
                f"{out}: holds files that are not a {what} ({', '.join(held[:3])}"
                f"{', ...' if len(held) > 3 else ''}); choose another output folder"
            )
        if held and not overwrite:
            raise CmrecError(
                f"{out}: already holds a {what}; pass --overwrite to replace it (the old one is "
                "kept until the new one is complete)"
            )
    parent = out.parent
    ensure_parent(out)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CmrecError(f"{parent}: not writable, so {out.name} cannot be written there")


@contextmanager
def output_folder(out: Path, names: list[str], overwrite: bool, what: str = "folder") -> Iterator[Path]:
    """Build the folder `out` (exactly `names`) in a scratch folder; swap it in whole only if the
    body succeeds. An existing `out` is replaced only with `overwrite`, and never when it holds
    anything but `names` (the folder is replaced whole)."""
    if out.exists() and out.is_dir():
        others = sorted(p.name for p in out.iterdir() if p.name not in names)
        if others:
            raise CmrecError(
                f"{out}: holds other files ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}) "
                "that replacing the folder would delete; choose another output folder"
            )
    check_output_folder(out, overwrite, tuple(names), what)
    scratch = new_scratch_folder(out)
    try:
        yield scratch
        missing = [name for name in names if not (scratch / name).exists()]
        if missing:
            raise RuntimeError(f"the job did not write {missing}")
        swap_in(scratch, out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
