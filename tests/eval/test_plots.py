"""Plot functions return Figures (for notebooks) and importing them leaves matplotlib's backend alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from cmrec.eval.plots import forgetting_figure, losses_figure, roc_figure, save

EPOCHS = [
    {"epoch": 0, "train": {"total": 0.9, "reason": 0.7}, "valid": {"auc": 0.6}},
    {"epoch": 1, "train": {"total": 0.8, "reason": 0.6}, "valid": {"auc": 0.7}},
]


def test_figures_hold_what_they_plot_and_save_as_png(tmp_path: Path) -> None:
    losses = losses_figure(EPOCHS)
    assert isinstance(losses, Figure) and len(losses.axes) == 2
    assert [line.get_label() for line in losses.axes[0].get_lines()] == ["reason", "total"]
    np.testing.assert_array_equal(losses.axes[1].get_lines()[0].get_ydata(), [0.6, 0.7])
    roc = roc_figure(np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.4, 0.3]), "t")
    np.testing.assert_array_equal(roc.axes[0].get_lines()[0].get_xdata(), [0.0, 0.0, 0.5, 0.5, 1.0])
    buckets = {"Q1": {"auc": 0.8, "pairs": 10.0}, "never": {"auc": 0.55, "pairs": 4.0}}
    bars = forgetting_figure(buckets, "t").axes[0].patches
    assert [round(bar.get_height(), 6) for bar in bars] == [0.8, 0.55]
    save(losses, tmp_path / "losses.png")
    assert (tmp_path / "losses.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_importing_the_plots_sets_no_matplotlib_backend() -> None:
    code = (
        "import matplotlib; before = matplotlib.rcParams._get_backend_or_none(); "
        "import cmrec.eval.plots; print(before, matplotlib.rcParams._get_backend_or_none())"
    )
    env = {"PATH": "/usr/bin:/bin", "MPLBACKEND": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == ["None", "None"]


def test_no_library_module_picks_a_backend_or_uses_pyplot() -> None:
    root = Path(__file__).resolve().parents[2] / "cmrec"
    for path in root.rglob("*.py"):
        text = path.read_text()
        forbidden = ("matplotlib.use(", "import matplotlib.pyplot", "from matplotlib import pyplot")
        assert not any(pattern in text for pattern in forbidden), path
