"""bench/table5.sh and bench/table5_table.py: the Table 5 study's script refuses a bad stream, and
its table is the mean ± std of the run folders' metrics, ranked, beside the paper's column."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _table_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("table5_table", ROOT / "bench" / "table5_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(study: Path, stream: str, model: str, seed: int, auc: float) -> None:
    folder = study / "runs" / f"{stream}-{model}-seed{seed}"
    folder.mkdir(parents=True)
    metrics = {
        "model": model,
        "seed": seed,
        "test": {"auc": auc},
        "valid": {"auc": auc - 0.01},
        "forgetting": {"Q4": {"auc": auc - 0.1}},
        "train_seconds_per_epoch": 10.0 + seed,
        "train_targets_per_user": 96.0,
        "memory_bytes_per_user": 256,
        "floors": {"recent_auc": 0.7, "whole_auc": 0.8 + seed / 100, "popularity_auc": 0.6},
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_table_is_mean_std_ranked_beside_the_paper(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for seed, (a, b) in enumerate([(0.80, 0.70), (0.82, 0.72)]):
        _run(tmp_path, "demo", "gru4rec", seed, a)
        _run(tmp_path, "demo", "dien", seed, b)
    assert _table_module().main(tmp_path) == 0
    out = capsys.readouterr().out
    assert "| gru4rec | 2 (seeds 0,1) | 0.8100 ± 0.0141 | 1 | 0.7100 ± 0.0141 |" in out
    assert "| dien | 2 (seeds 0,1) | 0.7100 ± 0.0141 | 2 |" in out
    assert "0.8702 (2) |" in out and "0.8793 (1) |" in out  # the paper ranks DIEN above GRU4REC
    assert "| floor: category in whole history | 2 | 0.8050 ± 0.0071 |" in out
    assert _table_module().cli([str(tmp_path / "nothing")]) == 2
    with pytest.raises(SystemExit) as helped:  # --help is help, not a study folder
        _table_module().cli(["--help"])
    assert helped.value.code == 0 and "study folder" in capsys.readouterr().out


def test_study_script_refuses_an_unknown_stream(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "table5.sh"), "xlong"],
        env={"STUDY": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and "must be demo or movielens, got 'xlong'" in done.stderr


def test_the_docs_tables_are_the_committed_run_records(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/results.md's two Table 5 tables are, row for row, what the builder makes of the study's
    run records kept in bench/results/table5 (so the published figures can be traced and rebuilt)."""
    assert _table_module().main(ROOT / "bench" / "results" / "table5") == 0
    built = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    docs = (ROOT / "docs" / "results.md").read_text()
    section = docs[docs.index("### The paper's Table 5 analogue") :]
    section = section[: section.index("\nRead it honestly:")]
    published = [line for line in section.splitlines() if line.startswith("| ")]
    assert len(built) == 2 * (2 + 9 + 3)  # two data sets: header, rule, 9 models, 3 floors
    assert published == built
