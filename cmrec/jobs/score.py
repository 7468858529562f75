"""Click probabilities of (user, item) requests: `score_requests` from stored memories alone (CM's
serving path), `score_histories` from each user's whole click history (the batch path, any model)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cmrec.data.batch import Collator
from cmrec.data.dataset import Vocabularies
from cmrec.data.samples import Histories, Samples
from cmrec.data.schema import CATEGORY, ITEM, USER
from cmrec.errors import CmrecError
from cmrec.output import RecModel
from cmrec.progress import progress
from cmrec.serving.events import UserEvents
from cmrec.serving.model import ServedModel
from cmrec.serving.scorer import PendingPolicy, Scorer
from cmrec.store import StoreLocation, open_store
from cmrec.train.checkpoint import CHECKPOINT, load_checkpoint
from cmrec.train.loop import predict
from cmrec.train.runner import history_negatives


@dataclass(frozen=True)
class ScoredRequests:
    """The requests with a ``score`` column (click probability), and what scoring met."""

    frame: pd.DataFrame
    seconds: float
    unknown_users: int  # scored from the learned initial memory
    unknown_items: int  # requests for items the run never saw (the out-of-vocabulary embedding)


def score_requests(
    run: Path,
    store: StoreLocation,
    requests: pd.DataFrame,
    pending: PendingPolicy = "write",
    batch_size: int = 8192,
) -> ScoredRequests:
    """Score `requests` (``user_id``, ``item_id``[, ``category_id``], as `read_requests` returns
    them) with the incremental run `run` (cm, gru4rec, mimn, hpmn) from the states of `store` (a
    folder or a Redis store); no history is read."""
    if batch_size < 1:
        raise CmrecError(f"--batch-size must be >= 1, got {batch_size}")
    served = ServedModel.load(run)
    scorer = Scorer(served, open_store(store, served.store_info), pending=pending)
    started = time.perf_counter()
    scores = np.empty(len(requests), dtype=np.float32)
    unknown: set[str] = set()
    unknown_items = 0
    users = requests[USER].astype(str).to_numpy()
    for start in progress(range(0, len(requests), batch_size), desc="score", unit="batch"):
        part = slice(start, start + batch_size)
        categories = requests[CATEGORY].iloc[part] if CATEGORY in requests.columns else None
        result = scorer.score(list(users[part]), requests[ITEM].iloc[part], categories)
        scores[part] = result.probabilities
        unknown.update(result.unknown_users)
        unknown_items += result.unknown_items
    seconds = time.perf_counter() - started
    return ScoredRequests(requests.assign(score=scores), seconds, len(unknown), unknown_items)


def score_histories(
    run: Path, events: pd.DataFrame, requests: pd.DataFrame, source: str = "events", batch_size: int = 256
) -> np.ndarray:
    """(R,) float32 click probabilities of `requests` from each user's whole history in `events`.

    The batch path: the run's model (any registered model) reads the user's clicks in `events` (a
    validated, sorted log, `read_events`) in full, as training and evaluation do, with no
    ``max_len`` cut. For an incremental run (cm, gru4rec, mimn, hpmn) it is what `score_requests` must equal
    once a store has been refreshed with the same clicks (the difference is rounding: 1e-5 in
    float32). Every request's user needs at least one click in `events`; `source` names the log in
    that error.
    """
    if batch_size < 1:
        raise CmrecError(f"batch_size must be >= 1, got {batch_size}")
    model, vocabs, _ = load_checkpoint(run / CHECKPOINT)
    return score_histories_with(model, vocabs, events, requests, source, batch_size)


def score_histories_with(
    model: RecModel,
    vocabs: Vocabularies,
    events: pd.DataFrame,
    requests: pd.DataFrame,
    source: str = "events",
    batch_size: int = 256,
) -> np.ndarray:
    """`score_histories` with a loaded model and its vocabularies (`load_checkpoint`)."""
    if batch_size < 1:
        raise CmrecError(f"batch_size must be >= 1, got {batch_size}")
    grouped = UserEvents.from_events(events, vocabs, source)
    row_of = {user: row for row, user in enumerate(grouped.user_ids)}
    users = requests[USER].astype(str)
    missing = sorted(set(users) - set(row_of))
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise CmrecError(f"{source}: no clicks of {len(missing):,} requested users ({shown})")
    sequence = users.map(row_of).to_numpy(dtype=np.int64)
    histories = Histories(
        grouped.items, grouped.categories, grouped.offsets, np.zeros(grouped.num_users, np.int64)
    )
    categories = None  # as in `Scorer.score`: a missing column means the item's own category
    if vocabs.categories is not None and CATEGORY in requests.columns:
        categories = vocabs.categories.encode(requests[CATEGORY]).astype(np.int64)
    samples = Samples(
        sequence=sequence,
        prefix_len=np.diff(grouped.offsets)[sequence],
        target_item=vocabs.items.encode(requests[ITEM]).astype(np.int64),
        target_category=categories,
        label=np.zeros(len(requests), dtype=np.float32),
    )
    collate = Collator(
        histories, samples, int(np.diff(grouped.offsets).max()), history_negatives(model.needs, vocabs)
    )
    batches = (
        collate(np.arange(start, min(start + batch_size, len(samples))))
        for start in range(0, len(samples), batch_size)
    )
    with torch.no_grad():
        return predict(model, batches, desc="batch path", total=-(-len(samples) // batch_size)).scores.astype(
            np.float32
        )
