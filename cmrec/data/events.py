"""Reading and validating click-event logs (Parquet or CSV).

`read_events` is the one entry point for event files: it checks the schema of `cmrec.data.schema`,
normalises the column types, and returns the events sorted (stably) by user and time; `read_requests`
reads the (user, item) tables that scoring answers. Both read through `read_table`. Every problem is
a `DataValidationError` whose message names the file, the column and the (1-based) data row.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from cmrec.data.schema import CATEGORY, ID_COLUMNS, ITEM, REQUIRED_COLUMNS, TIMESTAMP, USER
from cmrec.errors import DataValidationError, DataWarning

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz")


def read_events(path: str | Path, require_time_order: bool = False) -> pd.DataFrame:
    """Read, validate and sort an event log.

    Args:
        path: a ``.parquet`` or ``.csv`` (``.tsv``, optionally gzipped) file.
        require_time_order: refuse a file in which a user's timestamps go backwards from one row to
            a later row of the same user (a stream of new events must arrive in time order).

    Returns:
        DataFrame with columns ``user_id, item_id, timestamp[, category_id]``; ids are int64 or str,
        timestamps int64 (date-times become nanoseconds since the epoch) or float64; rows sorted
        stably by user, then timestamp.

    Raises:
        DataValidationError: the file is missing, empty, unreadable or breaks the schema.
    """
    path = Path(path)
    frame, header_lines = read_table(path, "an event log")
    return validate_events(
        frame, source=str(path), header_lines=header_lines, require_time_order=require_time_order
    )


def require_file(path: Path) -> None:
    """Refuse a path that is not a readable file: missing, or a folder."""
    if not path.is_file():
        raise DataValidationError(f"{path}: {'is a folder, not a file' if path.is_dir() else 'no such file'}")


def read_table(path: Path, what: str) -> tuple[pd.DataFrame, int]:
    """A Parquet or CSV/TSV table as written (CSV ids as strings: "007" and "7" are two ids), and
    the lines before its first data row (1 for CSV), for messages that give file lines.

    `what` names the table in errors ("an event log"): missing, empty, unsupported or unreadable.
    """
    require_file(path)
    if path.stat().st_size == 0:
        raise DataValidationError(f"{path}: the file is empty")
    name = path.name.lower()
    is_csv = name.endswith(CSV_SUFFIXES)
    try:
        if name.endswith(PARQUET_SUFFIXES):
            frame = pd.read_parquet(path)
        elif is_csv:
            sep = "\t" if ".tsv" in name else ","
            # Ids as written: `_normalise_ids` makes an event column integral only when every id is
            # written as a plain integer.
            frame = pd.read_csv(path, sep=sep, dtype={column: str for column in ID_COLUMNS})
        else:
            raise DataValidationError(
                f"{path}: unsupported file type; {what} is a .parquet or .csv/.tsv file"
            )
    except DataValidationError:
        raise
    except Exception as exc:  # pyarrow and the CSV parser raise many types; name the file.
        raise DataValidationError(f"{path}: cannot be read as {what}: {exc}") from exc
    return frame, 1 if is_csv else 0


def read_requests(path: str | Path) -> pd.DataFrame:
    """A scoring request table: ``user_id`` and ``item_id`` (``category_id`` optional; any other
    column is kept), in file order. Errors name the file, the column and the row."""
    path = Path(path)
    frame, header = read_table(path, "a request table")
    missing = [c for c in (USER, ITEM) if c not in frame.columns]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        found = ", ".join(repr(str(c)) for c in frame.columns)
        raise DataValidationError(f"{path}: missing required column(s) {names}; found: {found}")
    if len(frame) == 0:
        raise DataValidationError(f"{path}: no requests")
    frame = frame.reset_index(drop=True)
    where = _RowLocator(str(path), header)
    for column in (USER, ITEM, CATEGORY):
        if column not in frame.columns:
            continue
        nulls = frame[column].isna().to_numpy()
        if nulls.any():
            raise DataValidationError(f"{where(column, int(np.argmax(nulls)))}: missing value")
        # The events' id rules: an item id 2.5 is refused, and CSV "7" and Parquet 7 are one id.
        frame[column] = _normalise_ids(frame[column], column, where)
    return frame


def validate_events(
    frame: pd.DataFrame, source: str = "<DataFrame>", header_lines: int = 0, require_time_order: bool = False
) -> pd.DataFrame:
    """Validate an in-memory event table and return it normalised and sorted.

    Args:
        frame: the raw table.
        source: what to call it in error messages (a file name).
        header_lines: lines before the first data row in the source file (1 for CSV), so that
            messages can also give the file's line number.
        require_time_order: see `read_events`.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        found = ", ".join(repr(str(c)) for c in frame.columns)
        raise DataValidationError(f"{source}: missing required column(s) {names}; found: {found}")
    if len(frame) == 0:
        raise DataValidationError(f"{source}: no events (the table has a header but no rows)")
    where = _RowLocator(source, header_lines)
    columns = [c for c in (USER, ITEM, TIMESTAMP, CATEGORY) if c in frame.columns]
    out: dict[str, pd.Series] = {}
    for column in columns:
        series = frame[column].reset_index(drop=True)
        nulls = series.isna().to_numpy()
        if nulls.any():
            raise DataValidationError(f"{where(column, int(np.argmax(nulls)))}: missing value")
        if column in ID_COLUMNS:
            out[column] = _normalise_ids(series, column, where)
        else:
            out[column] = _normalise_timestamps(series, where)
    events = pd.DataFrame(out)
    _warn_suspicious(events, source)
    user_codes = pd.factorize(events[USER], sort=True)[0]
    if require_time_order:
        _check_time_order(events, user_codes, where)
    order = np.lexsort((events[TIMESTAMP].to_numpy(), user_codes))  # lexsort is stable
    return events.iloc[order].reset_index(drop=True)


def _warn_suspicious(events: pd.DataFrame, source: str) -> None:
    """Usable but probably wrong: negative timestamps and rows repeated exactly."""
    times = events[TIMESTAMP].to_numpy()
    negative = int((times < 0).sum())
    if negative:
        first = int(np.argmax(times < 0)) + 1
        warnings.warn(
            f"{source}: {negative:,} event(s) have a negative timestamp (first: row {first}); they are "
            "used as given (before 1970 if they are epoch times)",
            DataWarning,
            stacklevel=3,
        )
    duplicated = events.duplicated()
    if duplicated.any():
        first = int(np.argmax(duplicated.to_numpy())) + 1
        warnings.warn(
            f"{source}: {int(duplicated.sum()):,} row(s) repeat an earlier row exactly (first: row {first}); "
            "each is used as one more click",
            DataWarning,
            stacklevel=3,
        )


def _check_time_order(events: pd.DataFrame, user_codes: np.ndarray, where: _RowLocator) -> None:
    """Raise at the first row whose timestamp is earlier than an earlier row of the same user."""
    by_user = np.argsort(user_codes, kind="stable")  # file order within each user
    times = events[TIMESTAMP].to_numpy()[by_user]
    same_user = user_codes[by_user][1:] == user_codes[by_user][:-1]
    backwards = np.flatnonzero(same_user & (times[1:] < times[:-1]))
    if backwards.size:
        rows = by_user[backwards + 1]
        position = int(rows.min())  # the first offending row in file order
        k = int(np.flatnonzero(by_user[1:] == position)[0])
        raise DataValidationError(
            f"{where(TIMESTAMP, position)}: timestamp {times[k + 1].item()!r} of user "
            f"{str(events[USER].iloc[position])!r} is earlier than row {int(by_user[k]) + 1} "
            f"({times[k].item()!r}); "
            "new events must arrive in time order per user"
        )


class _RowLocator:
    """Formats 'file: column 'x', row N (line M)' for error messages."""

    def __init__(self, source: str, header_lines: int) -> None:
        self.source = source
        self.header_lines = header_lines

    def __call__(self, column: str, position: int) -> str:
        row = position + 1
        line = f" (line {row + self.header_lines})" if self.header_lines else ""
        return f"{self.source}: column {column!r}, row {row}{line}"


def _normalise_ids(series: pd.Series, column: str, where: _RowLocator) -> pd.Series:
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        raise DataValidationError(f"{where(column, 0)}: ids must be integers or strings, not booleans")
    if pd.api.types.is_integer_dtype(dtype):
        return series.astype(np.int64)
    if pd.api.types.is_float_dtype(dtype):
        values = series.to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values) | (values != np.round(values))
        if bad.any():
            position = int(np.argmax(bad))
            raise DataValidationError(
                f"{where(column, position)}: ids must be integers or strings, got {float(values[position])!r}"
            )
        return series.astype(np.int64)
    if isinstance(dtype, pd.StringDtype):
        return _integral_as_written(series.astype(str), column, where)
    if pd.api.types.is_string_dtype(dtype):  # object columns may mix types: check each value
        kinds = series.map(type)
        bad = ~kinds.isin([str, int, np.int64]).to_numpy()
        if bad.any():
            position = int(np.argmax(bad))
            raise DataValidationError(
                f"{where(column, position)}: ids must be integers or strings, "
                f"got {series.iloc[position]!r} ({type(series.iloc[position]).__name__})"
            )
        return _integral_as_written(series.astype(str), column, where)
    raise DataValidationError(f"{where(column, 0)}: ids must be integers or strings, got type {dtype}")


_PLAIN_INTEGER = r"-?(?:0|[1-9][0-9]{0,17})"  # as int64 prints it: no sign "+", no leading zero
_DIGITS = r"[+-]?[0-9]+"


def _integral_as_written(ids: pd.Series, column: str, where: _RowLocator) -> pd.Series:
    """Text ids (CSV, or object columns): int64 when every id is written as a plain integer (so
    CSV "7" and Parquet 7 are one id); a column of decimal numbers as the float column it is
    (pandas writes integer ids with gaps as "7.0"); else the strings as they are, so "007", "07"
    and "7" stay three ids."""
    if ids.str.fullmatch(_PLAIN_INTEGER).all():
        return ids.astype(np.int64)
    if ids.str.fullmatch("(?i)true|false").all():  # what pandas would have read as booleans
        raise DataValidationError(f"{where(column, 0)}: ids must be integers or strings, not booleans")
    numbers = pd.to_numeric(ids, errors="coerce")
    if numbers.notna().all() and not ids.str.fullmatch(_DIGITS).all():
        return _normalise_ids(numbers, column, where)
    return ids


def _normalise_timestamps(series: pd.Series, where: _RowLocator) -> pd.Series:
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        raise DataValidationError(f"{where(TIMESTAMP, 0)}: timestamps cannot be booleans")
    if pd.api.types.is_integer_dtype(dtype):
        return series.astype(np.int64)
    if pd.api.types.is_float_dtype(dtype):
        values = series.to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            position = int(np.argmax(bad))
            raise DataValidationError(
                f"{where(TIMESTAMP, position)}: timestamp {float(values[position])!r} is not finite"
            )
        return series.astype(np.float64)
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return _datetime_to_ns(series)
    # Text: epoch numbers written as text, or date-times; a column may not mix the two.
    text = series.astype(str)
    numbers = pd.to_numeric(text, errors="coerce")
    is_number = numbers.notna().to_numpy()
    if is_number.all():
        return _normalise_timestamps(numbers, where)
    parsed = pd.to_datetime(text, errors="coerce", utc=True, format="mixed")
    unparseable = ~is_number & parsed.isna().to_numpy()
    if unparseable.any():
        position = int(np.argmax(unparseable))
        raise DataValidationError(
            f"{where(TIMESTAMP, position)}: cannot parse {series.iloc[position]!r} as a timestamp "
            "(use epoch numbers or ISO 8601 date-times)"
        )
    if is_number.any():  # name a row of the rarer kind: that is where the mistake is
        if is_number.sum() * 2 > len(is_number):
            position, kind, other = int(np.argmin(is_number)), "a date-time", "epoch numbers"
        else:
            position, kind, other = int(np.argmax(is_number)), "an epoch number", "date-times"
        raise DataValidationError(
            f"{where(TIMESTAMP, position)}: {series.iloc[position]!r} is {kind} but other rows are "
            f"{other}; use one kind in a file"
        )
    return _datetime_to_ns(parsed)


def _datetime_to_ns(series: pd.Series) -> pd.Series:
    if getattr(series.dt, "tz", None) is None:
        series = series.dt.tz_localize("UTC")
    return pd.Series(
        series.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[ns]").astype(np.int64)
    )
