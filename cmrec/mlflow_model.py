"""The model `cmrec train` logs to MLflow: the run's weights-only checkpoint and this module.

The logged model is an `mlflow.pyfunc` model whose `loader_module` is this installed module and
whose data is the run's `checkpoint.pt`; the artifact holds no pickle. MLflow loads it by
importing this module and calling `_load_pyfunc(path)`, which reads the checkpoint with
`torch.load(weights_only=True)` (cmrec.safe_load): loading a model from a shared tracking server
runs no code from the artifact. `cmrec.tracking.load_logged_model` also checks that the artifact
names this module before loading it (an edited MLmodel file could name another loader).

Example::

    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")   # or tracking.load_logged_model
    requests = pd.DataFrame({"item_id": [42, 7], "history": [[3, 5, 9], [11]]})
    model.predict(requests)  # (2,) click probabilities, the batch path over each history
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cmrec.data.dataset import Vocabularies
from cmrec.data.schema import CATEGORY, ITEM, TIMESTAMP, USER
from cmrec.data.vocab import OOV_INDEX
from cmrec.errors import DataValidationError
from cmrec.jobs.score import score_histories_with
from cmrec.output import RecModel
from cmrec.train.checkpoint import CHECKPOINT, load_checkpoint

HISTORY, HISTORY_CATEGORIES = "history", "history_categories"
UNKNOWN_CATEGORY = "\x00unknown"  # a raw id no vocabulary holds: it encodes to the OOV bucket


class LoggedModel:
    """A run's model as MLflow serves it: `predict(frame)` scores one request per row.

    The frame's columns: ``item_id`` (the candidate), ``history`` (the user's clicked item ids,
    oldest first, at least one) and, for a run with categories, optionally ``category_id`` and
    ``history_categories`` (else each item's own category). Returns (R,) float32 probabilities:
    what `cmrec evaluate` computes for the same history and candidate (`score_histories`).
    """

    def __init__(self, model: RecModel, vocabs: Vocabularies, source: str) -> None:
        self.model, self.vocabs, self.source = model, vocabs, source

    def predict(self, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray:
        frame = pd.DataFrame(model_input)
        for column in (ITEM, HISTORY):
            if column not in frame.columns:
                raise DataValidationError(
                    f"model input: missing column {column!r} (columns: {list(frame.columns)})"
                )
        if len(frame) == 0:
            return np.zeros(0, dtype=np.float32)
        lengths = frame[HISTORY].map(_length).to_numpy()
        if (lengths < 1).any():
            row = int(np.flatnonzero(lengths < 1)[0])
            raise DataValidationError(
                f"model input: column {HISTORY!r}, row {row}: needs at least one item id"
            )
        rows = np.repeat(np.arange(len(frame)), lengths)
        events = pd.DataFrame(
            {
                USER: rows.astype(str),  # one pseudo-user per request: each row has its own history
                ITEM: np.concatenate([np.asarray(h, dtype=object) for h in frame[HISTORY]]),
                TIMESTAMP: np.concatenate([np.arange(n) for n in lengths]),
            }
        )
        requests = pd.DataFrame({USER: np.arange(len(frame)).astype(str), ITEM: frame[ITEM].to_numpy()})
        if self.vocabs.categories is not None:
            events[CATEGORY] = self._history_categories(frame, events, lengths)
            if CATEGORY in frame.columns:
                requests[CATEGORY] = frame[CATEGORY].to_numpy()
        return score_histories_with(self.model, self.vocabs, events, requests, self.source)

    def _history_categories(
        self, frame: pd.DataFrame, events: pd.DataFrame, lengths: np.ndarray
    ) -> np.ndarray:
        assert self.vocabs.categories is not None
        if HISTORY_CATEGORIES in frame.columns:
            given = frame[HISTORY_CATEGORIES].map(_length).to_numpy()
            if (given != lengths).any():
                row = int(np.flatnonzero(given != lengths)[0])
                raise DataValidationError(
                    f"model input: column {HISTORY_CATEGORIES!r}, row {row}: {given[row]} categories "
                    f"for {lengths[row]} history items"
                )
            return np.concatenate([np.asarray(c, dtype=object) for c in frame[HISTORY_CATEGORIES]])
        item_category = self.vocabs.item_category
        assert item_category is not None  # a run with categories keeps each item's category
        own = item_category[self.vocabs.items.encode(events[ITEM])]
        known = own > OOV_INDEX
        raw = np.full(len(own), UNKNOWN_CATEGORY, dtype=object)  # an unseen item's: the OOV bucket
        raw[known] = self.vocabs.categories.decode(own[known])
        return raw


def _length(value: Any) -> int:
    if value is None or isinstance(value, str | bytes) or not hasattr(value, "__len__"):
        raise DataValidationError(
            f"model input: column {HISTORY!r} holds {type(value).__name__}, not a list of ids"
        )
    return len(value)


def _load_pyfunc(data_path: str) -> LoggedModel:
    """MLflow's entry point: `data_path` is the logged checkpoint (or a folder holding it)."""
    path = Path(data_path)
    checkpoint = path / CHECKPOINT if path.is_dir() else path
    model, vocabs, _ = load_checkpoint(checkpoint)  # weights only: runs no code from the file
    return LoggedModel(model, vocabs, str(checkpoint))
