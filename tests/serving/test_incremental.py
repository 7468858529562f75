"""Every model incremental by construction (`IncrementalModel`: cm, gru4rec) serves from a store:
one write == clicks in chunks == the training forward, and refresh in chunks == whole == the batch
path; end-to-end models are refused with a clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cmrec import cli
from cmrec.baselines.common import pad_histories
from cmrec.baselines.gru4rec import GRU4RecModel, last_states
from cmrec.data import validate_events
from cmrec.errors import CmrecError
from cmrec.jobs import refresh_store, score_histories, score_requests
from cmrec.output import IncrementalModel
from cmrec.serving import ServedModel
from cmrec.store import MemoryStore
from tests.serving.conftest import make_run
from tests.serving.test_batch_path import requests_of
from tests.serving.test_refresh import refresh_frames

INCREMENTAL = ["cm", "gru4rec", "mimn", "hpmn"]


@pytest.fixture(scope="module", params=INCREMENTAL)
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, log: pd.DataFrame) -> Path:
    return make_run(tmp_path_factory.mktemp(request.param), log, name=request.param)


def user_clicks(served: ServedModel, log: pd.DataFrame) -> tuple[list[np.ndarray], list[np.ndarray]]:
    events = validate_events(log)
    groups = [group for _, group in events.groupby("user_id", sort=True)]
    assert served.vocabs.categories is not None
    items = [served.vocabs.items.encode(g["item_id"]).astype(np.int64) for g in groups]
    categories = [served.vocabs.categories.encode(g["category_id"]).astype(np.int64) for g in groups]
    return items, categories


def test_one_write_equals_chunks(run: Path, log: pd.DataFrame) -> None:
    served = ServedModel.load(run)
    assert isinstance(served.model, IncrementalModel)
    items, categories = user_clicks(served, log)
    initial = served.model.initial_memory(len(items))
    whole = served.write_clicks(initial, items, categories)
    # Chunks that end on write boundaries (a store keeps the rest pending), cut at random places.
    rng = np.random.default_rng(0)
    n = served.model.write_len
    memory = initial
    cuts = [sorted(rng.integers(0, len(u) // n + 1, size=2) * n) for u in items]
    for part in range(3):
        bounds = [([0, *c, len(u) // n * n])[part : part + 2] for c, u in zip(cuts, items, strict=True)]
        memory = served.write_clicks(
            memory,
            [u[a:b] for u, (a, b) in zip(items, bounds, strict=True)],
            [u[a:b] for u, (a, b) in zip(categories, bounds, strict=True)],
        )
    partial = [u[len(u) // n * n :] for u in items]
    memory = served.write_clicks(memory, partial, [c[len(c) // n * n :] for c in categories])
    torch.testing.assert_close(memory, whole, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(whole, initial)


def test_gru4rec_write_equals_the_training_forward(tmp_path: Path, log: pd.DataFrame) -> None:
    served = ServedModel.load(make_run(tmp_path / "gru", log, name="gru4rec"))
    model = served.model
    assert isinstance(model, GRU4RecModel) and model.write_len == 1
    items, categories = user_clicks(served, log)
    written = served.write_clicks(model.initial_memory(len(items)), items, categories)
    lengths = torch.tensor([len(u) for u in items])
    with torch.no_grad():
        x = model.embeddings.lookup(
            torch.from_numpy(np.concatenate(items)), torch.from_numpy(np.concatenate(categories))
        )
        padded, _ = pad_histories(x, lengths)
        states, _ = model.gru(padded)
        expected = last_states(states, lengths)
    torch.testing.assert_close(written[:, 0], expected, rtol=1e-5, atol=1e-6)
    assert served.state_shape == (1, model.config.hidden)
    assert model.needs.serving_bytes_per_user(1000, True) == 4 * model.config.hidden


def test_refresh_in_chunks_equals_whole_equals_the_batch_path(
    tmp_path: Path, run: Path, log: pd.DataFrame, log_file: Path
) -> None:
    refresh_store(run, log_file, tmp_path / "whole", progress=False)
    refresh_frames(run, tmp_path / "chunks", [log.iloc[:200], log.iloc[200:450], log.iloc[450:]])
    with MemoryStore(tmp_path / "whole") as whole, MemoryStore(tmp_path / "chunks") as chunked:
        ids = sorted(s.user_id for s in whole)
        a, b = whole.get_many(ids), chunked.get_many(ids)
    for user in ids:
        torch.testing.assert_close(b[user].memory, a[user].memory, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(b[user].pending_items, a[user].pending_items)
        assert len(a[user].pending_items) < ServedModel.load(run).model.write_len
    requests = requests_of(log)
    stored = score_requests(run, tmp_path / "chunks", requests).frame["score"].to_numpy()
    batch = score_histories(run, validate_events(log), requests)
    np.testing.assert_allclose(stored, batch, rtol=0, atol=1e-5)
    assert batch.std() > 1e-4


@pytest.mark.parametrize("name", ["dien", "avg-pool", "caser", "rum"])
def test_end_to_end_models_are_refused_by_refresh(
    tmp_path: Path, log: pd.DataFrame, log_file: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run = make_run(tmp_path / name, log, name=name)
    with pytest.raises(CmrecError, match=f"model '{name}' is end-to-end: it reads each user's raw history"):
        ServedModel.load(run)
    argv = ["refresh", "--run", str(run), "--events", str(log_file), "--store", str(tmp_path / "s")]
    assert cli.main([*argv, "--no-progress"]) == 2
    assert "score_histories" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
