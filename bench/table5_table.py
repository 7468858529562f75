"""The Table 5 analogue from the run folders of `bench/table5.sh` (their metrics.json), as Markdown.

    python bench/table5_table.py runs/table5          # both data sets, one table each

Per model: runs, test AUC mean ± sample std over the seeds, its rank, the AUC on the oldest
evidence (Q4 of the forgetting diagnostic), validation AUC, training seconds per epoch (two runs
shared the 2 cores), labelled pairs per training user and epoch, serving bytes per user, and the
paper's XLong AUC (Table 5; different data: compare orderings, not values). Below, the heuristic
floors of the same test targets.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

# The paper's Table 5, XLong AUC. cm-paper is the paper's CM recipe (CM full); cmrec's `cm` preset
# and avg-pool are not in the paper.
PAPER = {
    "gru4rec": 0.8702,
    "caser": 0.8390,
    "rum": 0.8649,
    "dien": 0.8793,
    "hpmn": 0.8645,
    "mimn": 0.8731,
    "cm-paper": 0.8824,
}
ORDER = ["cm", "cm-paper", "mimn", "hpmn", "gru4rec", "dien", "rum", "caser", "avg-pool"]
STREAMS = {
    "demo": "the `make demo` data (1,000 users x 400 clicks, 2 epochs)",
    "movielens": "MovieLens-1M (--max-len 200, 3 epochs)",
}
FLOORS = [
    ("category in last 50", "recent_auc"),
    ("category in whole history", "whole_auc"),
    ("item popularity", "popularity_auc"),
]


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def table(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    means = {m: statistics.mean(r["test"]["auc"] for r in rs) for m, rs in runs.items()}
    ranked = sorted(means, key=means.get, reverse=True)  # type: ignore[arg-type]
    paper_ranked = sorted((m for m in runs if m in PAPER), key=PAPER.get, reverse=True)  # type: ignore[arg-type]
    lines = [
        "| model | runs | test AUC | rank | Q4 (oldest) | valid AUC | s/epoch | targets/user | bytes/user | "
        "paper XLong (rank) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model in [m for m in ORDER if m in runs] + sorted(set(runs) - set(ORDER)):
        rs = runs[model]
        seeds = ",".join(str(r["seed"]) for r in sorted(rs, key=lambda r: r["seed"]))
        paper = f"{PAPER[model]:.4f} ({paper_ranked.index(model) + 1})" if model in PAPER else ""
        lines.append(
            f"| {model} | {len(rs)} (seeds {seeds}) | {mean_std([r['test']['auc'] for r in rs])} | "
            f"{ranked.index(model) + 1} | {mean_std([r['forgetting']['Q4']['auc'] for r in rs])} | "
            f"{mean_std([r['valid']['auc'] for r in rs])} | "
            f"{statistics.mean(r['train_seconds_per_epoch'] for r in rs):.1f} | "
            f"{statistics.mean(r['train_targets_per_user'] for r in rs):.1f} | "
            f"{rs[0]['memory_bytes_per_user']:,} | {paper} |"
        )
    by_seed = {r["seed"]: r["floors"] for rs in runs.values() for r in rs}
    for name, key in FLOORS:
        values = [floors[key] for floors in by_seed.values()]
        lines.append(f"| floor: {name} | {len(values)} | {mean_std(values)} | | | | | | | |")
    return lines


def main(study: Path) -> int:
    found: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted((study / "runs").glob("*/metrics.json")):
        stream = path.parent.name.split("-", 1)[0]
        metrics = json.loads(path.read_text())
        found[stream][metrics["model"]].append(metrics)
    if not found:
        print(f"{study}/runs: no finished run (run bench/table5.sh first)", file=sys.stderr)
        return 2
    for stream, runs in found.items():
        print(f"\n{STREAMS.get(stream, stream)}:\n")
        print("\n".join(table(runs)))
    return 0


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/table5_table.py",
        description="The Table 5 analogue, as Markdown (one table per data set), "
        "from the run folders of bench/table5.sh.",
    )
    parser.add_argument(
        "study", nargs="?", type=Path, default=Path("runs/table5"), help="study folder (default runs/table5)"
    )
    return main(parser.parse_args(argv).study)


if __name__ == "__main__":
    sys.exit(cli())
