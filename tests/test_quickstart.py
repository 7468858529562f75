"""The README's Python quick-start runs as written, and its calls agree with each other."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cmrec.serving import Scorer, ServedModel
from cmrec.store import open_store

README = Path(__file__).resolve().parents[1] / "README.md"


def _quickstart() -> str:
    found = re.search(
        r"<!-- quickstart -->\n```python\n(.*?)```\n<!-- /quickstart -->", README.read_text(), re.S
    )
    assert found is not None, "README.md has no quick-start block"
    return found.group(1)


@pytest.mark.slow
def test_the_readme_quickstart_trains_evaluates_refreshes_and_scores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    names: dict[str, Any] = {}
    exec(compile(_quickstart(), "README.md quick-start", "exec"), names)
    result, evaluation, refreshed, scored = (
        names[k] for k in ("result", "evaluation", "refreshed", "scored")
    )
    # fit's test metrics are what evaluate_split computes from the saved checkpoint.
    assert result.summary["test"] == evaluation.metrics
    assert (tmp_path / "runs/quickstart/metrics.json").is_file()
    events = names["events"]
    assert refreshed.stats.new_users == refreshed.stats.users == events["user_id"].nunique()
    frame = scored.frame
    assert len(frame) == 5 and scored.unknown_users == 0
    # The job's scores are the scorer's over the same store.
    served = ServedModel.load(tmp_path / "runs/quickstart")
    direct = Scorer(served, open_store(tmp_path / "memories", served.store_info))
    expected = direct.score(frame["user_id"].astype(str).tolist(), frame["item_id"]).probabilities
    np.testing.assert_array_equal(frame["score"].to_numpy(), expected)
