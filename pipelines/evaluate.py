"""`cmrec evaluate`: metrics of a saved run on any data (an event log's test split, or XLong lines).

Ids the run never saw are out of vocabulary, as in serving. Writes the metrics as JSON (default:
RUN_DIR/evaluation-<data file name>.json) and prints them. With ``--via-store`` (incremental runs:
cm, gru4rec, mimn, hpmn; event logs), the test samples are also scored the way serving scores them: each
user's history refreshed into a scratch store (float32, float16 or bfloat16), then scored from it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from cmrec.atomic import check_output_file, write_json
from cmrec.data.dataset import ClickLogData
from cmrec.data.events import read_events
from cmrec.data.samples import concat_ranges
from cmrec.data.schema import USER
from cmrec.errors import CmrecError
from cmrec.eval.metrics import auc_sensitivity, ctr_metrics
from cmrec.pipelines._common import run_command
from cmrec.pipelines._data import add_data_arguments, load_data
from cmrec.serving import Refresher, Scorer, ServedModel, UserEvents
from cmrec.store import (
    MEMORY_DTYPES,
    AnyStore,
    MemoryStore,
    RedisLocation,
    RedisStore,
    StoreInfo,
    read_store_info,
)
from cmrec.store.location import store_argument
from cmrec.train import evaluate_split
from cmrec.train.checkpoint import CHECKPOINT, load_checkpoint

DESCRIPTION = "Evaluate a saved run on an event log or an XLong test file; print and write JSON."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, required=True, help="run folder written by `cmrec train`")
    add_data_arguments(parser, training=False)
    parser.add_argument("--batch-size", type=int, default=256, help="samples per batch (default 256)")
    parser.add_argument("--out", type=Path, help="JSON file (default: RUN/evaluation-<data>.json)")
    parser.add_argument(
        "--via-store",
        nargs="+",
        choices=sorted(MEMORY_DTYPES),
        metavar="DTYPE",
        help="incremental runs (cm, gru4rec, mimn, hpmn) with --events: also score the test samples the way "
        "serving does (refresh a scratch store with each history, score from it) with states "
        "stored in DTYPE (float32, float16, bfloat16), and report those metrics",
    )
    parser.add_argument(
        "--scratch-store",
        type=store_argument,
        help="with --via-store: the scratch store, redis://HOST:PORT/DB/NAME to measure the Redis "
        "backend (NAME.DTYPE must not exist; dropped afterwards); default: a temporary folder",
    )


def run(args: argparse.Namespace) -> int:
    if not args.run.is_dir():
        raise CmrecError(f"{args.run}: no such run folder")
    if args.batch_size < 2 or args.batch_size % 2:
        raise CmrecError(
            f"--batch-size must be an even number >= 2 (a target and its negative), got {args.batch_size}"
        )
    if args.out is not None:
        check_output_file(args.out)
    if args.via_store and args.events is None:
        raise CmrecError("--via-store needs --events (the log whose test samples are scored)")
    if args.scratch_store is not None and not args.via_store:
        raise CmrecError("--scratch-store is the scratch store of --via-store; give --via-store DTYPE")
    if args.scratch_store is not None and not isinstance(args.scratch_store, RedisLocation):
        raise CmrecError("--scratch-store takes a redis:// address (the default is a temporary folder)")
    model, vocabs, payload = load_checkpoint(args.run / CHECKPOINT)
    data, source = load_data(args, training=False, vocabs=vocabs)
    if len(data.test) == 0:
        raise CmrecError(
            f"{source}: no user has a test target, so there is nothing to evaluate (each user needs "
            "enough events for a history and the held-out validation and test clicks)"
        )
    evaluation = evaluate_split(model, data, "test", args.batch_size)
    metrics = evaluation.metrics
    result: dict[str, Any] = {
        "model": payload["model"],
        "run": str(args.run),
        "data": source,
        "samples": len(data.test),
        "test": metrics,
        "forgetting": evaluation.forgetting,
    }
    if args.via_store:
        result["via_store"] = _via_store(args, data, evaluation.predictions.scores)
    out = args.out or args.run / f"evaluation-{source}.json"
    write_json(out, result)
    print(
        f"{payload['model']} on {source}: AUC {metrics['auc']:.4f}, GAUC {metrics['gauc']:.4f}, "
        f"logloss {metrics['logloss']:.4f} over {len(data.test):,} samples; wrote {out}"
    )
    for dtype, store_metrics in result.get("via_store", {}).items():
        print(
            f"  from a {dtype} store: AUC {store_metrics['auc']:.4f}, GAUC {store_metrics['gauc']:.4f}, "
            f"logloss {store_metrics['logloss']:.4f}; largest difference to the batch path "
            f"{store_metrics['max_abs_probability_difference']:.2e}"
        )
    return 0


def _via_store(args: argparse.Namespace, data: ClickLogData, batch_scores: np.ndarray) -> dict[str, Any]:
    """Test metrics of the serving path: refresh each user's history into a scratch store, score."""
    served = ServedModel.load(args.run)
    events = read_events(args.events)  # sorted like data.histories
    test = data.test
    offsets = data.histories.offsets
    sequences, first = np.unique(test.sequence, return_index=True)  # one test target per sequence
    history = events.iloc[concat_ranges(offsets[sequences], test.prefix_len[first])]
    users = events[USER].astype(str).to_numpy()[offsets[:-1]][test.sequence]
    results = {}
    for dtype in args.via_store:
        with _scratch(args.scratch_store, served.store_info(dtype), dtype) as store:
            refresher = Refresher(served, store)
            refresher.refresh(UserEvents.from_events(history, served.vocabs, str(args.events)))
            scorer = Scorer(served, store)
            scores = scorer.score_indices(list(users), test.target_item, test.target_category)
        probabilities = scores.probabilities
        metrics = ctr_metrics(test.label, probabilities, data.histories.users[test.sequence])
        difference = float(np.abs(probabilities - batch_scores).max())
        results[dtype] = {
            **metrics,
            "max_abs_probability_difference": difference,
            # The most that difference can move the AUC: the two AUCs must agree within it.
            "auc_sensitivity": auc_sensitivity(test.label, batch_scores, difference),
        }
    return results


@contextmanager
def _scratch(location: RedisLocation | None, info: StoreInfo, dtype: str) -> Iterator[AnyStore]:
    """A new, empty store for one --via-store dtype, removed afterwards: a temporary folder, or
    store NAME.DTYPE on the Redis server (refused if it exists: never someone's real store)."""
    if location is None:
        with (
            tempfile.TemporaryDirectory(prefix="cmrec-evaluate-") as folder,
            MemoryStore(Path(folder), info, create=True) as store,
        ):
            yield store
        return
    scratch = location.with_name(f"{location.name}.{dtype}")
    if read_store_info(scratch) is not None:
        raise CmrecError(f"--scratch-store: {scratch} already exists; name a scratch store that does not")
    with RedisStore(scratch, info, create=True) as store:
        try:
            yield store
        finally:
            store.drop()


def main(argv: list[str] | None = None) -> int:
    return run_command(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
