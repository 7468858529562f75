"""Whole jobs as library calls, for Python, Spark or Airflow callers: refresh a store folder and
score requests from it, or from whole histories (the batch path). Training is `cmrec.train.fit`.
The `cmrec` command wraps these.

    from cmrec.jobs import refresh_store, score_requests
    refresh_store(Path("runs/cm"), Path("events.parquet"), Path("memories"))
    scored = score_requests(Path("runs/cm"), Path("memories"), requests)   # adds a score column
"""

from cmrec.jobs.refresh import RefreshResult, refresh_store
from cmrec.jobs.score import ScoredRequests, score_histories, score_requests

__all__ = ["RefreshResult", "ScoredRequests", "refresh_store", "score_histories", "score_requests"]
