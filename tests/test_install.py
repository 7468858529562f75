"""The Makefile's install command: the local torch wheel folder where it exists, else PyTorch's CPU
wheel index, always the hashed lock (`make -n` prints the commands without running them)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def install_command(tmp_path: Path, *variables: str) -> str:
    """The pip line `make` would run to build a new .venv (in a scratch VENV, so nothing is touched)."""
    venv = tmp_path / "venv"
    argv = ["make", "-n", "-B", f"VENV={venv}", *variables, f"{venv}/.lock-installed"]
    printed = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    (line,) = [line for line in printed.splitlines() if " -m pip install " in line]
    return line


def test_a_local_wheel_folder_is_used_where_it_exists(tmp_path: Path) -> None:
    (tmp_path / "wheels").mkdir()
    line = install_command(tmp_path, f"WHEELS={tmp_path / 'wheels'}")
    assert f"--find-links {tmp_path / 'wheels'}" in line and "--extra-index-url" not in line
    assert "--no-deps --require-hashes" in line and line.endswith("-r requirements/cpu.lock")


def test_pytorch_cpu_index_where_no_wheel_folder_exists(tmp_path: Path) -> None:
    line = install_command(tmp_path, f"WHEELS={tmp_path / 'missing'}")
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in line and "--find-links" not in line
    assert "--no-deps --require-hashes" in line
    mirror = install_command(
        tmp_path, f"WHEELS={tmp_path / 'missing'}", "TORCH_INDEX=https://mirror.example/cpu"
    )
    assert "--extra-index-url https://mirror.example/cpu" in mirror
