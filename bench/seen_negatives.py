"""How much of a run's test AUC comes from negatives the user had already clicked.

    .venv/bin/python bench/seen_negatives.py --run RUN [--run RUN ...] (--events FILE | --dataset NAME) \
        [--max-len L] [--seed S] [--out J]

A sampled negative is any item other than the positive, so some negatives are items already in
the user's history (the last ``--max-len`` clicks a model reads). On a log where an item is
clicked at most once (a rating log) those are never clicked, and a model that knows what the user
clicked can push them down. For each run (its ``test_predictions.parquet``; the same --seed as the
run, which draws the negatives) this reports the test AUC on all pairs and on the pairs whose
negative is not in the history, and the share of positives and negatives that are.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from cmrec.data.dataset import ClickLogData
from cmrec.data.samples import Histories, Samples
from cmrec.pipelines._data import add_data_arguments, load_data
from cmrec.train.evaluation import PREDICTIONS


def seen_in_history(histories: Histories, samples: Samples, max_len: int) -> np.ndarray:
    """(n,) whether each sample's target item is among the last `max_len` clicks before it."""
    seen = np.zeros(len(samples), dtype=bool)
    for row in range(len(samples)):
        start = int(histories.offsets[samples.sequence[row]])
        end = start + int(samples.prefix_len[row])
        seen[row] = bool(np.any(histories.items[max(start, end - max_len) : end] == samples.target_item[row]))
    return seen


def seen_report(labels: np.ndarray, scores: np.ndarray, seen: np.ndarray) -> dict[str, float]:
    """AUC on every pair and without the negatives already clicked; the seen shares."""
    positive = labels == 1
    kept = positive | ~seen
    return {
        "auc": float(roc_auc_score(labels, scores)),
        "auc_unseen_negatives": float(roc_auc_score(labels[kept], scores[kept])),
        "positives_seen": float(seen[positive].mean()),
        "negatives_seen": float(seen[~positive].mean()),
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, action="append", required=True)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--seed", type=int, default=0, help="the runs' --seed (it draws the negatives)")
    add_data_arguments(parser, training=True)
    args = parser.parse_args(argv)
    data: ClickLogData
    data, _ = load_data(args, training=True)
    seen = seen_in_history(data.histories, data.test, data.max_len)
    labels = data.test.label
    rows: dict[str, dict[str, float]] = {}
    for run in args.run:
        predictions = pd.read_parquet(run / PREDICTIONS)
        if not np.array_equal(predictions["label"].to_numpy(), labels):
            raise SystemExit(f"{run}: its test labels differ from these data's (another --seed or data?)")
        rows[str(run)] = seen_report(labels, predictions["probability"].to_numpy(), seen)
        print(f"{run}: " + ", ".join(f"{k} {v:.4f}" for k, v in rows[str(run)].items()))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
