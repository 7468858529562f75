"""Progress bars: a forked child killed while it draws a bar never blocks the parent's bars."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

from cmrec.progress import progress, progress_lock

FORK = multiprocessing.get_context("fork")


def _hold_the_lock(ready: object) -> None:
    progress_lock().acquire()  # as a child does while it draws a bar
    ready.set()  # type: ignore[attr-defined]
    time.sleep(60)


def test_a_child_killed_holding_the_bar_lock_does_not_block_the_parent() -> None:
    assert list(progress(range(3), "before")) == [0, 1, 2]  # the parent has drawn bars already
    ready = FORK.Event()
    child = FORK.Process(target=_hold_the_lock, args=(ready,))
    child.start()
    assert ready.wait(30)
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    child.join(30)
    done: list[int] = []
    drawer = threading.Thread(target=lambda: done.extend(progress(range(3), "after")), daemon=True)
    drawer.start()
    drawer.join(20)
    assert done == [0, 1, 2], "the parent's next bar waited on a lock the killed child held"
