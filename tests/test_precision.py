"""Detecting native bfloat16 and running a block in a precision."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cmrec.errors import ConfigError
from cmrec.precision import autocast, cpu_flags, cpu_model, native_bfloat16


def test_cpu_flags_and_native_bfloat16_are_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\n"
        "flags\t\t: fpu sse2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
    )
    assert cpu_model(cpuinfo) == "Intel(R) Xeon(R) Processor"
    flags = cpu_flags(cpuinfo)
    assert {"avx512_bf16", "amx_bf16", "fpu"} <= flags and "avx2" not in flags
    assert native_bfloat16("cpu", flags) == "avx512_bf16+amx_bf16"
    assert native_bfloat16("cpu", {"avx512_bf16"}) == "avx512_bf16"
    assert native_bfloat16("cpu", {"avx2", "avx512f"}) is None
    assert cpu_flags(tmp_path / "missing") == set() and cpu_model(tmp_path / "missing") == ""


def test_autocast_runs_matmuls_in_the_precision_asked() -> None:
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast("cpu", "float32"):
        assert (a @ b).dtype == torch.float32
    with autocast("cpu", "bfloat16"):
        assert (a @ b).dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="precision must be one of"), autocast("cpu", "float16"):
        pass
