"""The `cmrec` command keeps freed memory for reuse (glibc), unless told not to."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cmrec.allocator import keep_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_applies_on_glibc_and_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert keep_freed_memory() is True
    monkeypatch.setenv("CMREC_SYSTEM_MALLOC", "1")
    assert keep_freed_memory() is False


def test_the_cli_applies_it_before_torch_is_imported() -> None:
    probe = (
        "import sys, cmrec.allocator as a\n"
        "seen = []\n"
        "real = a.keep_freed_memory\n"
        "a.keep_freed_memory = lambda: seen.append('torch' in sys.modules) or real()\n"
        "import cmrec.cli\n"
        "print(seen)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[False]"  # called once, and torch was not loaded yet
