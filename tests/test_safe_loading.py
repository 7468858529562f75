"""Loading a file a user was handed runs no code (DESIGN invariant 7): a pickle payload in a
checkpoint, a distributed checkpoint's `.metadata` or one of its values, or the MLflow model is
refused with one line, exit 2, no marker file, nothing written."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed.checkpoint as dcp
import yaml

from cmrec import cli
from cmrec.data import SplitConfig, build_from_events, read_events, validate_events
from cmrec.data.synthetic import SyntheticConfig, generate
from cmrec.errors import CmrecError, DataValidationError
from cmrec.eval.metrics import auc, auc_sensitivity
from cmrec.models import DataSpec, build_model, model_config
from cmrec.safe_load import UnsafeFileError
from cmrec.tracking import load_logged_model
from cmrec.train import evaluate_split
from cmrec.train.checkpoint import checkpoint_payload, load_checkpoint, save_checkpoint, write_payload
from cmrec.train.distributed import DISTRIBUTED_DIR, SPEC, TRAINER_STATE, plain_state_dict
from cmrec.train.distributed.checkpoints import load_distributed
from tests.models.conftest import TINY
from tests.tiny import TINY_YAML


class Payload:
    """Unpickling this runs `touch MARKER`: what a hostile file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _model_and_vocabs() -> tuple[torch.nn.Module, Any]:
    log = generate(SyntheticConfig(users=8, length=24, items=60, categories=8))
    data = build_from_events(validate_events(log.events()), SplitConfig(max_len=24))
    return build_model("cm", DataSpec.from_vocabs(data.vocabs), TINY), data.vocabs


def _dcp_save(state: dict[str, Any], folder: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no process group: torch warns that it saves locally
        dcp.save(state, checkpoint_id=folder)


def _distributed_run(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    """A run folder as `cmrec train --nproc` leaves it: spec.pt and distributed/last/."""
    model, vocabs = _model_and_vocabs()
    run = tmp_path / "run"
    (run / DISTRIBUTED_DIR).mkdir(parents=True)
    payload = checkpoint_payload("cm", model_config("cm", TINY), {}, vocabs, {})
    del payload["state_dict"]
    write_payload(run / DISTRIBUTED_DIR / SPEC, payload)
    last = run / DISTRIBUTED_DIR / "last"
    _dcp_save({"model": model.state_dict()}, last)
    state = {"next_epoch": 1, "params": {"max_len": 24}, "world_size": 1}
    (last / TRAINER_STATE).write_text(json.dumps(state))
    return run, model


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_distributed_checkpoint_converts_through_the_safe_reader(tmp_path: Path) -> None:
    run, model = _distributed_run(tmp_path)
    weights = plain_state_dict(run / DISTRIBUTED_DIR / "last")
    assert sorted(weights) == sorted(model.state_dict())
    for name, tensor in model.state_dict().items():
        assert torch.equal(weights[name], tensor)  # the same values, read back: exact
    assert (
        cli.main(["convert", "--run", str(run), "--checkpoint", "last", "--out", str(tmp_path / "out")]) == 0
    )
    loaded, _, _ = load_checkpoint(tmp_path / "out" / "checkpoint.pt")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_a_malicious_metadata_runs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = _distributed_run(tmp_path)
    last = run / DISTRIBUTED_DIR / "last"
    marker = tmp_path / "PWNED"
    (last / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    (last / TRAINER_STATE).write_text("")  # as the folder: an empty trainer state
    before = _files(tmp_path)
    out = tmp_path / "out"
    assert cli.main(["convert", "--run", str(run), "--checkpoint", "last", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert not marker.exists()
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert str(last) in err
    assert not out.exists() and _files(tmp_path) == before

    (last / TRAINER_STATE).write_text("{}")
    with pytest.raises(
        UnsafeFileError, match=r"\.metadata: not a distributed checkpoint's metadata: it asks for"
    ):
        plain_state_dict(last)
    with pytest.raises(UnsafeFileError, match="posix.system|nt.system"):  # `train --resume`'s path
        load_distributed(last, None, torch.nn.Linear(2, 2), None)  # type: ignore[arg-type]
    assert not marker.exists() and _files(tmp_path) == before | {
        str(last.relative_to(tmp_path) / TRAINER_STATE): b"{}"
    }


def test_a_malicious_value_in_a_distributed_checkpoint_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The metadata is genuine; one non-tensor value (torch's planner reads those with torch.load)
    is the payload."""
    run, model = _distributed_run(tmp_path)
    last = run / DISTRIBUTED_DIR / "last"
    marker = tmp_path / "PWNED"
    _dcp_save({"model": {**model.state_dict(), "extra": Payload(marker)}}, last)
    assert not marker.exists()  # saving pickles it; only unpickling would run it
    out = tmp_path / "out"
    assert cli.main(["convert", "--run", str(run), "--checkpoint", "last", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert not marker.exists() and not out.exists()
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"{last} (value 'model.extra'): not a value cmrec checkpoints hold" in err
    assert "weights_only=False" not in err and "GLOBAL posix.system" in err


@pytest.mark.parametrize("command", ["evaluate", "score", "refresh"])
def test_a_pickled_payload_checkpoint_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    marker = tmp_path / "PWNED"
    torch.save({"format": 1, "model": Payload(marker)}, run / "checkpoint.pt")
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,category_id,timestamp\n1,2,3,4\n")
    argv = {
        "evaluate": ["evaluate", "--run", str(run), "--events", str(events)],
        "score": [
            "score",
            "--run",
            str(run),
            "--store",
            str(tmp_path / "s"),
            "--requests",
            str(events),
            "--out",
            str(tmp_path / "o.csv"),
        ],
        "refresh": ["refresh", "--run", str(run), "--events", str(events), "--store", str(tmp_path / "s")],
    }[command]
    assert cli.main([*argv, "--no-progress"] if command == "refresh" else argv) == 2
    err = capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "s").exists() and not (tmp_path / "o.csv").exists()
    assert len(err.strip().splitlines()) == 1, err
    assert f"{run / 'checkpoint.pt'}: not a cmrec checkpoint: it holds objects cmrec never writes" in err
    assert "not loaded" in err and "weights_only" not in err and "Re-running" not in err


def test_damaged_checkpoints_are_one_clear_error(tmp_path: Path) -> None:
    model, vocabs = _model_and_vocabs()
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, "cm", model_config("cm", TINY), model, vocabs, {})
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CmrecError, match="checkpoint.pt: cannot read a cmrec checkpoint"):
        load_checkpoint(path)
    path.write_bytes(b"not a torch file")
    with pytest.raises(CmrecError, match="checkpoint.pt: cannot read a cmrec checkpoint"):
        load_checkpoint(path)


def _trained_with_mlflow(tmp_path: Path) -> tuple[Path, Path, str, str]:
    """A tiny `cm` run on a generated log, tracked in MLflow: (run folder, the log, the MLflow run id,
    what `train` printed on stderr)."""
    generate_argv = ["generate", "--users", "40", "--length", "24", "--items", "300", "--categories", "12"]
    assert cli.main([*generate_argv, "--out", str(tmp_path / "data")]) == 0
    events = tmp_path / "data" / "events.parquet"
    config = tmp_path / "cm.yaml"
    config.write_text(TINY_YAML)
    run = tmp_path / "run"
    argv = ["train", "--model", "cm", "--events", str(events), "--max-len", "24", "--epochs", "1"]
    argv += ["--config", str(config), "--experiment", "safe", "--out", str(run)]
    # A normal run: the installed command in its own process, Python's default warning filters.
    done = subprocess.run(
        [str(Path(sys.executable).with_name("cmrec")), *argv], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return run, events, json.loads((run / "metrics.json").read_text())["mlflow"]["run_id"], done.stderr


def _test_requests(run: Path, events: Path) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The test samples of `events` as model input (candidate, history, history categories), the
    probabilities `cmrec evaluate` computes for them (its library call), and their labels."""
    model, vocabs, _ = load_checkpoint(run / "checkpoint.pt")
    log = read_events(events)  # sorted as the histories are: history s is rows offsets[s]...
    data = build_from_events(log, SplitConfig(max_len=24), vocabs)
    test, offsets = data.test, data.histories.offsets
    history, categories = [], []
    for sequence, prefix in zip(test.sequence, test.prefix_len, strict=True):
        rows = log.iloc[offsets[sequence] + max(0, prefix - data.max_len) : offsets[sequence] + prefix]
        history.append(rows["item_id"].tolist())  # the last max_len clicks before the target
        categories.append(rows["category_id"].tolist())
    targets = [vocabs.items.decode([i])[0] if i > 1 else NEVER_SEEN for i in test.target_item]
    assert vocabs.categories is not None and test.target_category is not None
    target_categories = vocabs.categories.decode(test.target_category)  # an unseen item's own category
    frame = pd.DataFrame(
        {
            "item_id": targets,
            "category_id": target_categories,
            "history": history,
            "history_categories": categories,
        }
    )
    return frame, evaluate_split(model, data, "test").predictions.scores, test.label


NEVER_SEEN = 10**9


def test_the_mlflow_model_holds_no_pickle_and_scores_as_evaluate(tmp_path: Path, mlflow_store: str) -> None:
    import mlflow

    run, events, run_id, err = _trained_with_mlflow(tmp_path)
    mlflow.set_tracking_uri(mlflow_store)
    assert "warn" not in err.lower() and "pickle" not in err.lower(), err  # MLflow said nothing of either
    uri = f"runs:/{run_id}/model"
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    files = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    expected_files = ["MLmodel", "conda.yaml", "data/checkpoint.pt", "python_env.yaml", "requirements.txt"]
    assert [f for f in files if f != "registered_model_meta"] == expected_files  # no pickle beside them
    assert (local / "data/checkpoint.pt").read_bytes() == (run / "checkpoint.pt").read_bytes()
    meta = yaml.safe_load((local / "MLmodel").read_text())
    assert list(meta["flavors"]) == ["python_function"]
    assert meta["flavors"]["python_function"]["loader_module"] == "cmrec.mlflow_model"

    frame, expected, labels = _test_requests(run, events)
    assert cli.main(["evaluate", "--run", str(run), "--events", str(events), "--max-len", "24"]) == 0
    evaluated = json.loads((run / "evaluation-events.parquet.json").read_text())["test"]
    for model in (mlflow.pyfunc.load_model(uri), load_logged_model(uri)):
        scores = np.asarray(model.predict(frame))
        np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-5)  # other batches: to rounding
        gap = float(np.abs(scores - expected).max())
        assert abs(auc(labels, scores) - evaluated["auc"]) <= auc_sensitivity(labels, expected, gap)
    # Without categories the model takes each known item's own (the generator's keep one category).
    known = set(load_logged_model(uri).vocabs.items.ids)
    seen = frame["item_id"].ne(NEVER_SEEN) & frame["history"].map(lambda h: all(str(i) in known for i in h))
    assert seen.sum() > len(frame) / 2
    own = load_logged_model(uri).predict(frame[seen].drop(columns=["category_id", "history_categories"]))
    np.testing.assert_allclose(own, expected[seen.to_numpy()], rtol=0, atol=1e-5)
    with pytest.raises(DataValidationError, match="column 'history', row 1: needs at least one item id"):
        load_logged_model(uri).predict(frame.assign(history=[["1"], [], *frame["history"][2:]]))


def test_a_tampered_mlflow_model_runs_nothing(tmp_path: Path, mlflow_store: str) -> None:
    import mlflow

    _, _, run_id, _ = _trained_with_mlflow(tmp_path)
    mlflow.set_tracking_uri(mlflow_store)
    uri = f"runs:/{run_id}/model"
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    model_id = yaml.safe_load((local / "MLmodel").read_text())["model_id"]
    stored = next(tmp_path.glob(f"mlruns/*/models/{model_id}/artifacts"))  # the tracking server's copy
    marker = tmp_path / "PWNED"
    torch.save({"format": 1, "model": Payload(marker)}, stored / "data" / "checkpoint.pt")
    for load in (mlflow.pyfunc.load_model, load_logged_model):
        with pytest.raises(
            UnsafeFileError, match="not a cmrec checkpoint: it holds objects cmrec never writes"
        ):
            load(uri)
    assert not marker.exists()

    # An MLmodel file edited to name a pickle-loading flavor: cmrec's loader refuses to load it.
    meta = yaml.safe_load((stored / "MLmodel").read_text())
    meta["flavors"]["python_function"]["loader_module"] = "mlflow.pytorch"
    (stored / "MLmodel").write_text(yaml.safe_dump(meta))
    with pytest.raises(CmrecError, match="not a model cmrec logged"):
        load_logged_model(uri)
    assert not marker.exists()
