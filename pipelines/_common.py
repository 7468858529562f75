"""Helpers shared by the job entry points: atomic outputs and one-line summaries."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cmrec.errors import CmrecError


@contextmanager
def atomic_outputs(out_dir: Path, names: list[str], overwrite: bool) -> Iterator[Path]:
    """Build the folder `out_dir` (holding exactly `names`) beside it; swap it in whole only if the
    body succeeds.

    A failed or interrupted job leaves `out_dir` as it was, and a kill during the swap leaves the
    old folder or the new one (`swap_in`). An existing `out_dir` is replaced only with `overwrite`,
    and never when it holds anything but `names` (the folder is replaced whole).
    """
    if out_dir.exists():
        if not out_dir.is_dir():
            raise CmrecError(f"{out_dir}: exists and is not a folder")
        held = sorted(p.name for p in out_dir.iterdir())
        others = [name for name in held if name not in names]
        if others:
            raise CmrecError(
                f"{out_dir}: holds other files ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}) "
                "that replacing the folder would delete; choose another output folder"
            )
        if held and not overwrite:
            raise CmrecError(f"{out_dir}: already holds {', '.join(held)}; pass --overwrite to replace them")
    check_output_folder(out_dir, True, tuple(names), "folder")
    scratch = partial_folder(out_dir)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        yield scratch
        missing = [name for name in names if not (scratch / name).exists()]
        if missing:
            raise RuntimeError(f"the job did not write {missing}")
        swap_in(scratch, out_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


RUN_MARKERS = ("checkpoint.pt", "metrics.json", "distributed")  # what tells a run folder from others


def partial_folder(out: Path) -> Path:
    """Where a job builds the folder `out` before swapping it in: a hidden sibling."""
    return out.with_name(f".{out.name}.partial")


def check_output_folder(out: Path, overwrite: bool, markers: tuple[str, ...], what: str) -> None:
    """Refuse an `out` that exists unless `overwrite`, and never one that is not `what`.

    Also checks, before any work, that the folder beside which the job builds can be written.
    """
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
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CmrecError(f"{parent}: cannot create the output's parent folder ({exc.strerror})") from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CmrecError(f"{parent}: not writable, so {out.name} cannot be written there")


def swap_in(new: Path, out: Path) -> None:
    """Make the complete folder `new` appear as `out` in one step; the old `out` is then deleted.

    Linux exchanges the two names atomically (renameat2 with RENAME_EXCHANGE), so a kill at any
    moment leaves either the old folder or the new one at `out`, never a mix and never nothing.
    Where the call is not available (other systems, some filesystems), `out` is renamed aside and
    `new` renamed in: two renames, with a moment in between when `out` is missing.
    """
    if not out.exists():
        os.rename(new, out)
        return
    if _exchange(new, out):
        shutil.rmtree(new)  # now the old folder
        return
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.rename(out, old)
    os.rename(new, out)
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2, RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, f"cannot swap {a} and {b}: {os.strerror(code)}")


def torchrun_world() -> tuple[int, int] | None:
    """(rank, world size) when torchrun started this process (RANK and WORLD_SIZE set), else None."""
    if "WORLD_SIZE" in os.environ and "RANK" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return None


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write beside `path`, then rename: never a half-written file."""
    scratch = path.with_name(f".{path.name}.tmp")
    scratch.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    os.replace(scratch, path)
