"""Progress bars for long work: live on a terminal, sparse in logs (CI, redirected output)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")
_enabled = True


def set_progress(enabled: bool) -> None:
    """Show (default) or hide every bar of this process; multi-process training shows rank 0's only."""
    global _enabled
    _enabled = enabled


def progress(iterable: Iterable[T], desc: str, unit: str = "it", total: int | None = None) -> Iterable[T]:
    """Wrap `iterable` in a bar on stderr; refreshes at most every 10 s when stderr is no terminal."""
    bar: Any = tqdm(iterable, desc=desc, unit=unit, total=total, **_bar_settings())
    return bar


def progress_bar(total: int, desc: str, unit: str = "it") -> Any:
    """A bar updated by hand (``bar.update(n)``, ``bar.set_postfix_str(...)``); same refresh policy."""
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, **_bar_settings())


def _bar_settings() -> dict[str, Any]:
    interactive = sys.stderr.isatty()
    return {
        "file": sys.stderr,
        "mininterval": 0.2 if interactive else 10.0,
        "dynamic_ncols": interactive,
        "disable": not _enabled,
    }
