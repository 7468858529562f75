"""`cmrec score`: click probabilities of (user, item) requests, from stored memories alone.

Requests are a Parquet or CSV table with ``user_id`` and ``item_id`` columns (``category_id``
optional; other columns are passed through). The output is the same table with a ``score`` column
(the click probability), written as Parquet or CSV by the suffix of ``--out``. No history is read:
each user's memory comes from the store (users the store does not know score from the learned
initial memory and are counted in the summary).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cmrec.atomic import write_file
from cmrec.data.events import CSV_SUFFIXES, PARQUET_SUFFIXES
from cmrec.data.schema import CATEGORY, ITEM, USER
from cmrec.errors import CmrecError, DataValidationError
from cmrec.pipelines._common import run_command
from cmrec.progress import progress
from cmrec.serving.scorer import Scorer

DESCRIPTION = "Score (user, item) requests from stored memories; write them with a score column."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, required=True, help="CM run folder the store was refreshed with")
    parser.add_argument("--store", type=Path, required=True, help="memory store folder (`cmrec refresh`)")
    parser.add_argument("--requests", type=Path, required=True, help="requests (.parquet or .csv)")
    parser.add_argument("--out", type=Path, required=True, help="output file (.parquet or .csv)")
    parser.add_argument(
        "--pending",
        choices=("write", "ignore"),
        default="write",
        help="write each user's < N pending clicks into a scratch memory first (default), or ignore them",
    )
    parser.add_argument("--batch-size", type=int, default=8192, help="requests per scoring batch (8192)")


def read_requests(path: Path) -> pd.DataFrame:
    """Read and check a request table; errors name the file, the column and the row."""
    if not path.is_file():
        raise DataValidationError(f"{path}: no such file")
    name = path.name.lower()
    try:
        if name.endswith(PARQUET_SUFFIXES):
            frame = pd.read_parquet(path)
        elif name.endswith(CSV_SUFFIXES):
            # Ids as written, as in event logs: "007" and "7" are two ids.
            ids = {column: str for column in (USER, ITEM, CATEGORY)}
            frame = pd.read_csv(path, sep="\t" if ".tsv" in name else ",", dtype=ids)
        else:
            raise DataValidationError(f"{path}: requests are .parquet or .csv files")
    except DataValidationError:
        raise
    except Exception as exc:  # the readers raise many types; name the file
        raise DataValidationError(f"{path}: cannot be read as a request table: {exc}") from exc
    missing = [c for c in (USER, ITEM) if c not in frame.columns]
    if missing:
        found = ", ".join(repr(str(c)) for c in frame.columns)
        raise DataValidationError(f"{path}: missing required column(s) {missing}; found: {found}")
    if len(frame) == 0:
        raise DataValidationError(f"{path}: no requests")
    header = 1 if name.endswith(CSV_SUFFIXES) else 0
    for column in (USER, ITEM, CATEGORY):
        if column in frame.columns and frame[column].isna().any():
            row = int(np.argmax(frame[column].isna().to_numpy())) + 1
            line = f" (line {row + header})" if header else ""
            raise DataValidationError(f"{path}: column {column!r}, row {row}{line}: missing value")
    return frame.reset_index(drop=True)


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise CmrecError(f"--batch-size must be >= 1, got {args.batch_size}")
    out_name = args.out.name.lower()
    if not out_name.endswith((*PARQUET_SUFFIXES, ".csv")):
        raise CmrecError(f"{args.out}: the output must be a .parquet or .csv file")
    requests = read_requests(args.requests)
    scorer = Scorer.open(args.run, args.store, pending=args.pending)
    started = time.perf_counter()
    scores = np.empty(len(requests), dtype=np.float32)
    unknown: set[str] = set()
    unknown_items = 0
    users = requests[USER].astype(str).to_numpy()
    batches = range(0, len(requests), args.batch_size)
    for start in progress(batches, desc="score", unit="batch"):
        part = slice(start, start + args.batch_size)
        categories = requests[CATEGORY].iloc[part] if CATEGORY in requests.columns else None
        result = scorer.score(list(users[part]), requests[ITEM].iloc[part], categories)
        scores[part] = result.probabilities
        unknown.update(result.unknown_users)
        unknown_items += result.unknown_items
    seconds = time.perf_counter() - started
    _write_atomic(requests.assign(score=scores), args.out)
    distinct = len(set(users))
    print(
        f"score: {len(requests):,} requests of {distinct:,} users in {seconds:.2f} s "
        f"({len(requests) / max(seconds, 1e-9):,.0f} requests/s); {len(unknown):,} unknown users scored "
        f"from the initial memory; {unknown_items:,} requests for items the run never saw (scored with "
        f"the out-of-vocabulary embedding); wrote {args.out}"
    )
    return 0


def _write_atomic(frame: pd.DataFrame, out: Path) -> None:
    """Write beside `out`, then rename: a failed job never leaves a half-written file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.name.lower().endswith(".csv"):
        write_file(out, lambda scratch: frame.to_csv(scratch, index=False))
    else:
        write_file(out, lambda scratch: frame.to_parquet(scratch, index=False))


def main(argv: list[str] | None = None) -> int:
    return run_command(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
