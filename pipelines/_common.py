"""Helpers shared by the job entry points: atomic outputs and one-line summaries."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cmrec.errors import CmrecError


@contextmanager
def atomic_outputs(out_dir: Path, names: list[str], overwrite: bool) -> Iterator[Path]:
    """Write files in a scratch folder beside `out_dir`; move them in only if the body succeeds.

    A failed or interrupted job leaves `out_dir` as it was: nothing half-written.
    """
    existing = [n for n in names if (out_dir / n).exists()]
    if existing and not overwrite:
        raise CmrecError(f"{out_dir}: already holds {', '.join(existing)}; pass --overwrite to replace them")
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".cmrec-tmp-", dir=out_dir))
    try:
        yield scratch
        for name in names:
            os.replace(scratch / name, out_dir / name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def torchrun_world() -> tuple[int, int] | None:
    """(rank, world size) when torchrun started this process (RANK and WORLD_SIZE set), else None."""
    if "WORLD_SIZE" in os.environ and "RANK" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return None


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
