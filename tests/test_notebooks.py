"""Notebooks are part of the docs: each one's code cells must run, in order, against cmrec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_and_holds_no_outputs(path: Path) -> None:
    notebook = json.loads(path.read_text())
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert code, f"{path.name} has no code cells"
    assert all(not c.get("outputs") for c in code), f"{path.name}: clear outputs before committing"
    namespace: dict[str, object] = {"__name__": "__notebook__"}
    for number, cell in enumerate(code, start=1):
        source = "".join(cell["source"])
        exec(compile(source, f"{path.name}[cell {number}]", "exec"), namespace)


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS
