"""`cmrec compare`: the table of tracked runs, read back from MLflow, mean ± std over seeds.

One row per (model, data): runs, AUC, GAUC, logloss, training samples/s, memory bytes per user
(what serving must store per user: CM's K x d_m float32 memory; an end-to-end model's history of
max_len int32 item and category ids), and the forgetting diagnostic's AUC per evidence-age bucket.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from cmrec.errors import CmrecError
from cmrec.eval.forgetting import BUCKETS
from cmrec.tracking import DEFAULT_EXPERIMENT, runs_table, tracking_uri

DESCRIPTION = "Compare tracked runs: AUC, GAUC, logloss, speed, memory per user, mean ± std over seeds."
COLUMNS = [
    ("auc", "metrics.test_auc"),
    ("gauc", "metrics.test_gauc"),
    ("logloss", "metrics.test_logloss"),
    ("samples/s", "metrics.train_samples_per_second"),
    ("bytes/user", "metrics.memory_bytes_per_user"),
] + [(f"auc {b}", f"metrics.test_auc_{b}") for b in BUCKETS]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--experiment",
        default=DEFAULT_EXPERIMENT,
        help="MLflow experiment (default cmrec)",
    )
    parser.add_argument(
        "--format",
        choices=("markdown", "csv"),
        default="markdown",
        help="output format",
    )


def comparison(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std per (model, data) of the tracked runs' metrics."""
    rows = []
    for (model, data), group in runs.groupby(["params.model", "params.data"], sort=True):
        row: dict[str, object] = {"model": model, "data": data, "runs": len(group)}
        for name, column in COLUMNS:
            values = (
                pd.to_numeric(group[column], errors="coerce").dropna() if column in group else pd.Series()
            )
            if values.empty:
                row[name] = ""
            elif len(values) == 1:
                row[name] = _format(name, values.iloc[0])
            else:
                row[name] = f"{_format(name, values.mean())} ± {_format(name, values.std(ddof=1))}"
        rows.append(row)
    return pd.DataFrame(rows)


def _format(name: str, value: float) -> str:
    if name in ("samples/s", "bytes/user"):
        return f"{value:,.0f}"
    return f"{value:.4f}"


def run(args: argparse.Namespace) -> int:
    runs = runs_table(args.experiment)
    if runs.empty:
        raise CmrecError(
            f"no finished runs in experiment {args.experiment!r} of {tracking_uri()}; run `cmrec train`"
        )
    table = comparison(runs)
    if args.format == "csv":
        print(table.to_csv(index=False), end="")
    else:
        print(_markdown(table))
    print(
        f"\n{len(runs)} runs from {tracking_uri()}, experiment {args.experiment!r}",
        file=sys.stderr,
    )
    return 0


def _markdown(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(table.columns) + " |"
    rule = "| " + " | ".join("---" for _ in table.columns) + " |"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def main(argv: list[str] | None = None) -> int:
    from cmrec.cli import run_pipeline

    return run_pipeline("compare", argv)


if __name__ == "__main__":
    sys.exit(main())
