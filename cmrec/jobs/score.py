"""`score_requests`: click probabilities of (user, item) requests from stored memories alone."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cmrec.data.schema import CATEGORY, ITEM, USER
from cmrec.errors import CmrecError
from cmrec.progress import progress
from cmrec.serving.model import ServedModel
from cmrec.serving.scorer import PendingPolicy, Scorer
from cmrec.store import open_store


@dataclass(frozen=True)
class ScoredRequests:
    """The requests with a ``score`` column (click probability), and what scoring met."""

    frame: pd.DataFrame
    seconds: float
    unknown_users: int  # scored from the learned initial memory
    unknown_items: int  # requests for items the run never saw (the out-of-vocabulary embedding)


def score_requests(
    run: Path,
    store: Path,
    requests: pd.DataFrame,
    pending: PendingPolicy = "write",
    batch_size: int = 8192,
) -> ScoredRequests:
    """Score `requests` (``user_id``, ``item_id``[, ``category_id``], as `read_requests` returns
    them) with the CM run `run` from the memories of store folder `store`; no history is read."""
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
