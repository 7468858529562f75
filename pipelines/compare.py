"""`cmrec compare`: the table of tracked runs, read back from MLflow, mean ± std over seeds.

One row per (model, data), or per (--label, data) for runs given labels: runs, AUC, GAUC, logloss,
training samples/s, labelled targets (pairs) per training user and epoch, training seconds per
epoch, memory bytes per user (what serving must store per user: CM's K x d_m float32 memory; an
end-to-end model's history of max_len int32 item and category ids), and the forgetting
diagnostic's AUC per evidence-age bucket. Below each data set's models, its heuristic floors as
rows (`cmrec.eval.heuristics`, logged by every run on the same test targets): category frequency
in the last 50 events and in the whole history, and item popularity in the training region.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from cmrec.errors import CmrecError
from cmrec.eval.forgetting import BUCKETS
from cmrec.pipelines._common import run_command
from cmrec.tracking import DEFAULT_EXPERIMENT, runs_table, tracking_uri

DESCRIPTION = "Compare tracked runs: AUC, GAUC, logloss, speed, memory per user, mean ± std over seeds."
COLUMNS = [
    ("auc", "metrics.test_auc"),
    ("gauc", "metrics.test_gauc"),
    ("logloss", "metrics.test_logloss"),
    ("samples/s", "metrics.train_samples_per_second"),
    ("targets/user", "metrics.train_targets_per_user"),
    ("s/epoch", "metrics.train_seconds_per_epoch"),
    ("bytes/user", "metrics.memory_bytes_per_user"),
] + [(f"auc {b}", f"metrics.test_auc_{b}") for b in BUCKETS]
FLOORS = [
    ("floor: category in last 50", "metrics.floor_recent_auc"),
    ("floor: category in whole history", "metrics.floor_whole_auc"),
    ("floor: item popularity", "metrics.floor_popularity_auc"),
]


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
    runs = runs.copy()
    # A run's row name: its --label (runs tracked before labels existed: the model name).
    labels = runs["params.label"] if "params.label" in runs else pd.Series(None, index=runs.index)
    runs["row"] = labels.fillna(runs["params.model"])
    rows = []
    for data, runs_of_data in runs.groupby("params.data", sort=True):
        for model, group in runs_of_data.groupby("row", sort=True):
            row: dict[str, object] = {"model": model, "data": data, "runs": len(group)}
            row.update({name: _summary(name, group, column) for name, column in COLUMNS})
            rows.append(row)
        # A floor depends on the data and its seed only: each distinct value once (one per seed).
        for name, column in FLOORS:
            if column not in runs_of_data:
                continue
            seeds = runs_of_data.drop_duplicates("params.seed")
            if not pd.to_numeric(seeds[column], errors="coerce").notna().any():
                continue
            rows.append(
                {"model": name, "data": data, "runs": len(seeds), "auc": _summary("auc", seeds, column)}
            )
    return pd.DataFrame(rows, columns=["model", "data", "runs"] + [name for name, _ in COLUMNS]).fillna("")


def _summary(name: str, group: pd.DataFrame, column: str) -> str:
    """Mean ± sample std of a metric over runs ("" when no run has it)."""
    values = pd.to_numeric(group[column], errors="coerce").dropna() if column in group else pd.Series()
    if values.empty:
        return ""
    if len(values) == 1:
        return _format(name, values.iloc[0])
    return f"{_format(name, values.mean())} ± {_format(name, values.std(ddof=1))}"


def _format(name: str, value: float) -> str:
    if name in ("samples/s", "bytes/user"):
        return f"{value:,.0f}"
    if name in ("targets/user", "s/epoch"):
        return f"{value:,.1f}"
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
        print(markdown(table))
    print(
        f"\n{len(runs)} runs from {tracking_uri()}, experiment {args.experiment!r}",
        file=sys.stderr,
    )
    return 0


def markdown(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(table.columns) + " |"
    rule = "| " + " | ".join("---" for _ in table.columns) + " |"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def main(argv: list[str] | None = None) -> int:
    return run_command(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
