"""Progress bars for long work: live on a terminal, sparse in logs (CI, redirected output)."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")
_enabled = True
_lock_pid: int | None = None
# No monitor thread: it only tunes redraw intervals, and it takes the bars' lock from a thread.
tqdm.monitor_interval = 0


def progress_lock() -> Any:
    """The lock every bar of this process writes under, made anew in each process.

    tqdm's default lock includes a multiprocessing lock that forked children share with their
    parent: a child killed (SIGKILL) while drawing a bar would leave it held, and the parent's
    next bar would wait for ever. A lock of this process's own cannot be held by another one.
    """
    global _lock_pid
    if _lock_pid != os.getpid():
        tqdm.set_lock(threading.RLock())
        _lock_pid = os.getpid()
    return tqdm.get_lock()


def set_progress(enabled: bool) -> None:
    """Show (default) or hide every bar of this process; multi-process training shows rank 0's only."""
    global _enabled
    _enabled = enabled


def progress(iterable: Iterable[T], desc: str, unit: str = "it", total: int | None = None) -> Iterable[T]:
    """Wrap `iterable` in a bar on stderr; refreshes at most every 10 s when stderr is no terminal."""
    progress_lock()
    bar: Any = tqdm(iterable, desc=desc, unit=unit, total=total, **_bar_settings())
    return bar


def progress_bar(total: int, desc: str, unit: str = "it") -> Any:
    """A bar updated by hand (``bar.update(n)``, ``bar.set_postfix_str(...)``); same refresh policy."""
    progress_lock()
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, **_bar_settings())


def _bar_settings() -> dict[str, Any]:
    interactive = sys.stderr.isatty()
    return {
        "file": sys.stderr,
        "mininterval": 0.2 if interactive else 10.0,
        "dynamic_ncols": interactive,
        "disable": not _enabled,
    }
