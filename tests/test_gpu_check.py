"""bench/gpu_check.sh as far as it goes without a GPU: every cmrec command it runs parses with
today's CLI, and a machine without one gets a clear refusal and nothing written."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

from cmrec.cli import build_parser

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.sh"


def test_every_cmrec_command_of_the_gpu_check_parses() -> None:
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, check=True)
    steps = dict(re.findall(r"^\[(\w+), <= \d+s\] (.*)$", done.stdout, flags=re.MULTILINE))
    assert list(steps) == [
        "venv",
        "install_torch",
        "install_stack",
        "install_cmrec",
        "cuda",
        "train",
        "serving",
        "generate",
        "dmp",
    ]
    assert "--index-url" in steps["install_torch"] and "fbgemm-gpu==1.8.0" in steps["install_torch"]
    parser = build_parser()
    parsed = {}
    for name in ("train", "serving", "generate", "dmp"):
        argv = shlex.split(steps[name])
        assert argv[1:3] == ["-m", "cmrec.cli"]
        parsed[name] = parser.parse_args(argv[3:])
    assert parsed["train"].device == "cuda" and parsed["train"].precision == "auto"
    assert parsed["train"].model == ["cm", "dien", "gru4rec"] and parsed["train"].length == [1000]
    assert parsed["serving"].serving and parsed["serving"].precision == "bfloat16"
    assert parsed["dmp"].nproc == 1 and parsed["dmp"].embedding_optimizer == "adam"


def test_without_a_gpu_it_refuses_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "gpu"
    env = {**os.environ, "PATH": str(tmp_path), "OUT_DIR": str(out)}  # no nvidia-smi on PATH
    done = subprocess.run(["/bin/bash", str(SCRIPT)], capture_output=True, text=True, env=env)
    assert done.returncode == 2 and "no NVIDIA GPU" in done.stderr
    assert not out.exists()
