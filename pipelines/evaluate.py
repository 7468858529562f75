"""`cmrec evaluate`: metrics of a saved run on any data (an event log's test split, or XLong lines).

Ids the run never saw are out of vocabulary, as in serving. Writes the metrics as JSON (default:
RUN_DIR/evaluation-<data file name>.json) and prints them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cmrec.data.batch import HistoryNegatives, make_loader
from cmrec.errors import CmrecError
from cmrec.eval.forgetting import bucket_aucs, evidence_buckets
from cmrec.eval.metrics import ctr_metrics
from cmrec.train.checkpoint import CHECKPOINT, load_checkpoint
from cmrec.train.loop import predict
from pipelines._common import write_json
from pipelines._data import add_data_arguments, load_data

DESCRIPTION = "Evaluate a saved run on an event log or an XLong test file; print and write JSON."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, required=True, help="run folder written by `cmrec train`")
    add_data_arguments(parser, training=False)
    parser.add_argument("--batch-size", type=int, default=256, help="samples per batch (default 256)")
    parser.add_argument("--out", type=Path, help="JSON file (default: RUN/evaluation-<data>.json)")


def run(args: argparse.Namespace) -> int:
    if not args.run.is_dir():
        raise CmrecError(f"{args.run}: no such run folder")
    model, vocabs, payload = load_checkpoint(args.run / CHECKPOINT)
    data, source = load_data(args, vocabs=vocabs)
    negatives = None
    if getattr(model, "needs_history_negatives", False):
        negatives = HistoryNegatives(len(vocabs.items), vocabs.item_category)
    loader = make_loader(data.histories, data.test, args.batch_size, data.max_len, negatives=negatives)
    predictions = predict(model, loader, desc="evaluate")
    metrics = ctr_metrics(predictions.labels, predictions.scores, predictions.users)
    buckets = bucket_aucs(
        evidence_buckets(data.histories, data.test, data.max_len),
        predictions.labels,
        predictions.scores,
    )
    result = {
        "model": payload["model"],
        "run": str(args.run),
        "data": source,
        "samples": len(data.test),
        "test": metrics,
        "forgetting": buckets,
    }
    out = args.out or args.run / f"evaluation-{source}.json"
    write_json(out, result)
    print(
        f"{payload['model']} on {source}: AUC {metrics['auc']:.4f}, GAUC {metrics['gauc']:.4f}, "
        f"logloss {metrics['logloss']:.4f} over {len(data.test):,} samples; wrote {out}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    from cmrec.cli import run_pipeline

    return run_pipeline("evaluate", argv)


if __name__ == "__main__":
    sys.exit(main())
