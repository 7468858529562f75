"""Helpers shared by the job entry points (atomic outputs live in `cmrec.atomic`)."""

from __future__ import annotations

import os

RUN_MARKERS = ("checkpoint.pt", "metrics.json", "distributed")  # what tells a run folder from others


def torchrun_world() -> tuple[int, int] | None:
    """(rank, world size) when torchrun started this process (RANK and WORLD_SIZE set), else None."""
    if "WORLD_SIZE" in os.environ and "RANK" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return None
