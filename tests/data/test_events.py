from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cmrec.data.events import read_events, validate_events
from cmrec.errors import DataValidationError


def test_parquet_and_csv_read_the_same_sorted_events(tmp_path: Path, tiny_events: pd.DataFrame) -> None:
    tiny_events.to_parquet(tmp_path / "e.parquet")
    tiny_events.to_csv(tmp_path / "e.csv", index=False)
    from_parquet = read_events(tmp_path / "e.parquet")
    from_csv = read_events(tmp_path / "e.csv")
    pd.testing.assert_frame_equal(from_parquet, from_csv)
    assert from_parquet["user_id"].tolist() == ["a"] * 5 + ["b"] * 4
    assert from_parquet["timestamp"].tolist() == [1, 2, 3, 4, 5, 1, 2, 3, 5]
    assert from_parquet["item_id"].tolist() == [20, 30, 40, 20, 80, 50, 60, 70, 10]
    assert from_parquet["item_id"].dtype == np.int64


def test_sort_is_stable_for_equal_timestamps() -> None:
    frame = pd.DataFrame({"user_id": [1, 1, 1, 1], "item_id": [4, 3, 2, 1], "timestamp": [2, 1, 2, 1]})
    events = validate_events(frame)
    assert events["item_id"].tolist() == [3, 1, 4, 2]


def test_datetime_strings_become_nanoseconds_in_order() -> None:
    frame = pd.DataFrame(
        {
            "user_id": [1, 1],
            "item_id": [1, 2],
            "timestamp": ["2024-01-02T00:00:00", "2024-01-01 12:00:00+00:00"],
        }
    )
    events = validate_events(frame)
    assert events["item_id"].tolist() == [2, 1]
    assert events["timestamp"].tolist() == [1704110400 * 10**9, 1704153600 * 10**9]


def test_integral_float_ids_are_integers() -> None:
    frame = pd.DataFrame({"user_id": [1.0, 2.0], "item_id": [3.0, 4.0], "timestamp": [1, 2]})
    assert validate_events(frame)["user_id"].dtype == np.int64


@pytest.mark.parametrize(
    ("column", "values", "message"),
    [
        ("item_id", [1, None, 3], "column 'item_id', row 2 (line 3): missing value"),
        ("user_id", [1, 2, None], "column 'user_id', row 3 (line 4): missing value"),
        ("timestamp", [1, 2, "yesterday"], "column 'timestamp', row 3 (line 4): cannot parse 'yesterday'"),
        (
            "item_id",
            [1, 2.5, 3],
            "column 'item_id', row 2 (line 3): ids must be integers or strings, got 2.5",
        ),
        ("item_id", [True, False, True], "column 'item_id', row 1 (line 2): ids must be integers or strings"),
    ],
)
def test_bad_values_name_file_column_and_row(
    tmp_path: Path, column: str, values: list[object], message: str
) -> None:
    frame = pd.DataFrame({"user_id": [1, 2, 3], "item_id": [1, 2, 3], "timestamp": [1, 2, 3]})
    frame[column] = values
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataValidationError) as info:
        read_events(path)
    assert str(info.value) == f"{path}: {message}" or str(info.value).startswith(f"{path}: {message}")


def test_mixed_object_column_names_the_row() -> None:
    frame = pd.DataFrame({"user_id": ["a", "b", 3.5], "item_id": [1, 2, 3], "timestamp": [1, 2, 3]})
    with pytest.raises(DataValidationError, match=r"column 'user_id', row 3: ids must be .* got 3.5"):
        validate_events(frame, source="log.parquet")


def test_missing_columns_are_listed(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    pd.DataFrame({"user_id": [1], "ts": [1]}).to_parquet(path)
    with pytest.raises(DataValidationError) as info:
        read_events(path)
    text = str(info.value)
    assert text.startswith(str(path))
    assert "'item_id', 'timestamp'" in text and "found: 'user_id', 'ts'" in text


def test_empty_file_header_only_missing_and_unsupported(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataValidationError, match="empty.csv: the file is empty"):
        read_events(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("user_id,item_id,timestamp\n")
    with pytest.raises(DataValidationError, match="header.csv: no events"):
        read_events(tmp_path / "header.csv")
    with pytest.raises(DataValidationError, match="nope.parquet: no such file"):
        read_events(tmp_path / "nope.parquet")
    (tmp_path / "events.json").write_text("{}")
    with pytest.raises(DataValidationError, match="unsupported file type"):
        read_events(tmp_path / "events.json")


def test_corrupt_parquet_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(DataValidationError, match="broken.parquet: cannot be read as an event log"):
        read_events(path)


def test_tsv_reads(tmp_path: Path, tiny_events: pd.DataFrame) -> None:
    tiny_events.to_csv(tmp_path / "e.tsv", sep="\t", index=False)
    assert len(read_events(tmp_path / "e.tsv")) == len(tiny_events)


def test_timestamps_mixing_numbers_and_dates_are_refused() -> None:
    frame = pd.DataFrame({"user_id": [1, 1], "item_id": [1, 2], "timestamp": ["2024-01-01", "17"]})
    with pytest.raises(DataValidationError, match="row 2: '17' is an epoch number but other rows"):
        validate_events(frame)


def test_the_odd_timestamp_out_is_the_row_named(tmp_path: Path) -> None:
    rows = [f"{u % 3},{u},{1_700_000_000 + u}" for u in range(10)] + ["1,10,2024-01-01T00:00:00"]
    path = tmp_path / "mixed.csv"
    path.write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    message = "row 11 (line 12): '2024-01-01T00:00:00' is a date-time but other rows are epoch numbers"
    with pytest.raises(DataValidationError, match=re.escape(message)):
        read_events(path)


def test_numeric_text_timestamps_are_numbers() -> None:
    frame = pd.DataFrame({"user_id": [1, 1], "item_id": [1, 2], "timestamp": ["20", "10"]})
    events = validate_events(frame)
    assert events["timestamp"].tolist() == [10, 20]
