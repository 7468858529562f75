"""Which distributed checkpoint folder counts as whole (no processes needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmrec.atomic import aside_folder
from cmrec.train.distributed import TRAINER_STATE, complete_checkpoint

pytestmark = pytest.mark.distributed


def _whole(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / ".metadata").write_bytes(b"x")
    (folder / TRAINER_STATE).write_text("{}")
    return folder


def test_a_whole_folder_wins_then_the_set_aside_one_then_none(tmp_path: Path) -> None:
    last = tmp_path / "last"
    assert complete_checkpoint(last) is None
    _whole(aside_folder(last))  # interrupted between the two renames of a save
    assert complete_checkpoint(last) == aside_folder(last)
    _whole(last)
    assert complete_checkpoint(last) == last
    partial = tmp_path / "other"
    partial.mkdir()
    (partial / ".metadata").write_bytes(b"x")  # shards written, trainer state not yet: not whole
    assert complete_checkpoint(partial) is None
