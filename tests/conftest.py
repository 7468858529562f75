from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
warnings.filterwarnings("ignore", message="is_fx_tracing will return true")


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A throw-away MLflow store in the test's folder, which is also the working directory."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return uri


@pytest.fixture
def tiny_events() -> pd.DataFrame:
    """Two users, unsorted, with string and integer ids mixed across columns."""
    return pd.DataFrame(
        {
            "user_id": ["b", "a", "a", "a", "b", "b", "b", "a", "a"],
            "item_id": [10, 20, 30, 40, 50, 60, 70, 20, 80],
            "timestamp": [5, 1, 2, 3, 1, 2, 3, 4, 5],
            "category_id": ["x", "x", "y", "y", "z", "z", "x", "x", "w"],
        }
    )


@pytest.fixture(scope="session")
def redis_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """HOST:PORT of a real Redis server: `.ci/run`'s (CMREC_TEST_REDIS), else one started here."""
    given = os.environ.get("CMREC_TEST_REDIS")
    if given:
        yield given
        return
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server.address
    server.stop()
