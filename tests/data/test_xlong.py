from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cmrec.data.synthetic import SyntheticConfig, generate, xlong_rows
from cmrec.data.xlong import build_from_xlong, parse_xlong, write_xlong
from cmrec.errors import DataValidationError


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_each_line_gives_a_pair_sharing_one_history(tmp_path: Path) -> None:
    train = _write(
        tmp_path / "train.txt", ["0\tu1\t5,6,7\t8\t9\textra\tfields", "1\tu2\t6,7\t5\t8", "2\tu3\t\t6\t5"]
    )
    test = _write(tmp_path / "test.txt", ["0\tu1\t6,7,8\t42\t5"])
    data = build_from_xlong(train, test, valid_fraction=0.0)
    items = data.vocabs.items
    assert items.ids == ("5", "6", "7", "8", "9")
    np.testing.assert_array_equal(data.histories.sequence(0), items.encode(["5", "6", "7"]))
    assert data.histories.lengths.tolist() == [3, 2, 0, 3]
    np.testing.assert_array_equal(data.train.sequence, [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(data.train.prefix_len, [3, 3, 2, 2, 0, 0])
    np.testing.assert_array_equal(data.train.label, [1, 0, 1, 0, 1, 0])
    np.testing.assert_array_equal(data.train.target_item, items.encode(["8", "9", "5", "8", "6", "5"]))
    np.testing.assert_array_equal(data.test.target_item, [1, items.encode(["5"])[0]])  # 42 is OOV
    assert data.train.target_category is None


def test_validation_lines_are_held_out_by_seed(tmp_path: Path) -> None:
    lines = [f"{i}\tu{i}\t1,2,3\t{4 + i % 3}\t{1 + i % 2}" for i in range(200)]
    train = _write(tmp_path / "train.txt", lines)
    a = build_from_xlong(train, train, valid_fraction=0.25, seed=1)
    b = build_from_xlong(train, train, valid_fraction=0.25, seed=1)
    np.testing.assert_array_equal(a.valid.sequence, b.valid.sequence)
    assert len(a.train) + len(a.valid) == 400
    assert 0.15 < len(a.valid) / 400 < 0.35
    assert not set(a.valid.sequence.tolist()) & set(a.train.sequence.tolist())


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("0\tu1\t1,2\t3", "line 2: expected at least 5 tab-separated fields"),
        ("0\t\t1,2\t3\t4", "line 2: field 'uid' is empty"),
        ("0\tu1\t1,,2\t3\t4", "line 2: field 'history' has an empty id"),
        ("0\tu1\t1,2\t3\t", "line 2: field 'neg_item' is empty"),
    ],
)
def test_malformed_lines(tmp_path: Path, line: str, message: str) -> None:
    path = _write(tmp_path / "bad.txt", ["0\tu0\t1,2\t3\t4", line, "2\tu2\t1\t2\t3"])
    with pytest.raises(DataValidationError) as info:
        parse_xlong(path)
    assert str(info.value) == f"{path}, {message}" or str(info.value).startswith(f"{path}, {message}")
    parsed = parse_xlong(path, skip_malformed=True)
    assert parsed.skipped == 1
    assert [x.line_number for x in parsed.lines] == [1, 3]


def test_empty_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="empty.txt: the file is empty"):
        parse_xlong(_write(tmp_path / "empty.txt", []))
    with pytest.raises(DataValidationError, match="all_bad.txt: no well-formed lines"):
        parse_xlong(_write(tmp_path / "all_bad.txt", ["x"]), skip_malformed=True)
    with pytest.raises(DataValidationError, match="no such file"):
        parse_xlong(tmp_path / "missing.txt")


def test_generated_lines_round_trip(tmp_path: Path) -> None:
    log = generate(SyntheticConfig(users=20, length=30, items=200, categories=10, seed=5))
    for split in ("train", "test"):
        history, pos, neg = xlong_rows(log, split)
        rows = ((u, u + 1, history[u], pos[u], neg[u]) for u in range(len(pos)))
        write_xlong(tmp_path / f"{split}.txt", rows)
    data = build_from_xlong(tmp_path / "train.txt", tmp_path / "test.txt", valid_fraction=0.0)
    history, pos, neg = xlong_rows(log, "test")
    for user in range(20):  # test lines follow the 20 train lines; unseen ids are OOV
        np.testing.assert_array_equal(
            data.histories.sequence(20 + user), data.vocabs.items.encode(history[user])
        )
    # Every train line's ids come back exactly.
    history, pos, neg = xlong_rows(log, "train")
    for user in range(20):
        decoded = data.vocabs.items.decode(data.histories.sequence(user)).astype(int)
        np.testing.assert_array_equal(decoded, history[user])
        pair = data.vocabs.items.decode(data.train.target_item[2 * user : 2 * user + 2]).astype(int)
        assert pair.tolist() == [pos[user], neg[user]]
