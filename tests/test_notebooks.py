"""Notebooks are part of the docs: each one runs, in order, in a real Jupyter kernel against cmrec,
and is committed without outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def _execute(path: Path, folder: Path) -> nbformat.NotebookNode:
    notebook = nbformat.read(path, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code, f"{path.name} has no code cells"
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), (
        f"{path.name}: clear outputs before committing"
    )
    # A cell that raises fails the test with the cell and its traceback (CellExecutionError).
    NotebookClient(
        notebook, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(folder)}}
    ).execute()
    return notebook


def _images(notebook: nbformat.NotebookNode) -> int:
    return sum(
        "image/png" in out.get("data", {}) for cell in notebook.cells for out in cell.get("outputs", [])
    )


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_a_kernel_and_holds_no_outputs(path: Path, tmp_path: Path) -> None:
    notebook = _execute(path, tmp_path)
    if path.name.startswith("02_"):  # loss curves, ROC, forgetting chart, slot attention
        assert _images(notebook) == 4


def test_the_notebooks_a_user_runs_are_there() -> None:
    assert [p.name for p in NOTEBOOKS] == [
        "01_data_tour.ipynb",
        "02_train_and_evaluate.ipynb",
        "03_refresh_and_score.ipynb",
    ]
