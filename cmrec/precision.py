"""Which float precision a step runs in: float32, or bfloat16 autocast where the device has it.

`native_bfloat16` reads what the hardware offers (CPU flags ``avx512_bf16`` / ``amx_bf16``, or a
CUDA device that supports bf16); `autocast` is the context a step runs in. cmrec trains and
scores in float32 unless told otherwise: on the CPUs measured, bfloat16 autocast made CM's step
slower (docs/results.md, "Speed"), so nothing turns it on by default.

Example::

    with autocast("cpu", "bfloat16"):
        loss = model(batch).total()
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch

from cmrec.errors import ConfigError

Precision = Literal["float32", "bfloat16"]
PRECISIONS: tuple[str, ...] = ("float32", "bfloat16")
BF16_CPU_FLAGS: tuple[str, ...] = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU feature flags the kernel reports (empty where there is no /proc/cpuinfo)."""
    return set(_cpuinfo_field("flags", cpuinfo).split())


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name as the kernel reports it ("" where there is no /proc/cpuinfo)."""
    return _cpuinfo_field("model name", cpuinfo).strip()


def _cpuinfo_field(name: str, cpuinfo: Path) -> str:
    """The first processor's `name` field of /proc/cpuinfo ("" if absent)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value
    return ""


def native_bfloat16(device: torch.device | str = "cpu", flags: set[str] | None = None) -> str | None:
    """What gives `device` native bfloat16 arithmetic (e.g. "amx_bf16"), or None where it has none."""
    device = torch.device(device)
    if device.type == "cuda":
        return "cuda" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else None
    have = cpu_flags() if flags is None else flags
    found = [flag for flag in BF16_CPU_FLAGS if flag in have]
    return "+".join(found) if found else None


@contextlib.contextmanager
def autocast(device: torch.device | str, precision: str) -> Iterator[None]:
    """Run the block in `precision`: float32 as it is, or bfloat16 autocast on `device`'s type."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    with torch.autocast(torch.device(device).type, torch.bfloat16, enabled=precision == "bfloat16"):
        yield
