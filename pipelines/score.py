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
from pathlib import Path

import pandas as pd

from cmrec.atomic import check_output_file, ensure_parent, write_file
from cmrec.data.events import PARQUET_SUFFIXES, read_requests
from cmrec.data.schema import USER
from cmrec.errors import CmrecError
from cmrec.jobs import score_requests
from cmrec.pipelines._common import run_command
from cmrec.store.location import STORE_HELP, store_argument

DESCRIPTION = "Score (user, item) requests from stored memories; write them with a score column."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run",
        type=Path,
        required=True,
        help="run folder the store was refreshed with (cm and its variants, gru4rec, mimn, hpmn)",
    )
    parser.add_argument(
        "--store", type=store_argument, required=True, help=f"{STORE_HELP} (written by `cmrec refresh`)"
    )
    parser.add_argument("--requests", type=Path, required=True, help="requests (.parquet or .csv)")
    parser.add_argument("--out", type=Path, required=True, help="output file (.parquet or .csv)")
    parser.add_argument(
        "--pending",
        choices=("write", "ignore"),
        default="write",
        help="write each user's < N pending clicks into a scratch memory first (default), or ignore them",
    )
    parser.add_argument("--batch-size", type=int, default=8192, help="requests per scoring batch (8192)")


def run(args: argparse.Namespace) -> int:
    out_name = args.out.name.lower()
    if not out_name.endswith((*PARQUET_SUFFIXES, ".csv")):
        raise CmrecError(f"{args.out}: the output must be a .parquet or .csv file")
    check_output_file(args.out)
    requests = read_requests(args.requests)
    scored = score_requests(args.run, args.store, requests, args.pending, args.batch_size)
    _write_atomic(scored.frame, args.out)
    distinct = requests[USER].astype(str).nunique()
    print(
        f"score: {len(requests):,} requests of {distinct:,} users in {scored.seconds:.2f} s "
        f"({len(requests) / max(scored.seconds, 1e-9):,.0f} requests/s); {scored.unknown_users:,} unknown "
        f"users scored from the initial memory; {scored.unknown_items:,} requests for items the run never "
        f"saw (scored with the out-of-vocabulary embedding); wrote {args.out}"
    )
    return 0


def _write_atomic(frame: pd.DataFrame, out: Path) -> None:
    """Write beside `out`, then rename: a failed job never leaves a half-written file."""
    ensure_parent(out)
    if out.name.lower().endswith(".csv"):
        write_file(out, lambda scratch: frame.to_csv(scratch, index=False))
    else:
        write_file(out, lambda scratch: frame.to_parquet(scratch, index=False))


def main(argv: list[str] | None = None) -> int:
    return run_command(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
