"""A run folder is built in a scratch folder beside it and swapped in whole when complete.

A multi-process run keeps its scratch folder when interrupted (``resume`` continues it); a
one-process run leaves nothing behind.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from cmrec.atomic import check_output_folder, new_scratch_folder, partial_folder
from cmrec.errors import CmrecError
from cmrec.train.distributed.checkpoints import DISTRIBUTED_DIR, complete_checkpoint

RUN_MARKERS = ("checkpoint.pt", "metrics.json", DISTRIBUTED_DIR)  # what tells a run folder from others


def check_run_folder(final: Path, replace: bool) -> None:
    """Refuse an existing run folder unless `replace`, and any folder that is not a run's."""
    check_output_folder(final, replace, RUN_MARKERS, "cmrec run folder")


def prepare_run_folder(final: Path, resume: bool) -> Path:
    """The scratch run folder: empty for a new run; for `resume` the interrupted one's, or a copy
    of the finished run at `final` (to train it further). Repeating this before the first write
    changes nothing."""
    work = partial_folder(final)
    if not resume:
        return new_scratch_folder(final)
    if complete_checkpoint(work / DISTRIBUTED_DIR / "last") is not None:
        return work  # an interrupted run: continue it where it stopped
    if complete_checkpoint(final / DISTRIBUTED_DIR / "last") is None:
        raise CmrecError(f"{final / DISTRIBUTED_DIR / 'last'}: nothing to resume")
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(final, work)
    return work
