"""`cmrec ui` serves MLflow's front page on loopback and stops whole on Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group is still running (zombies do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            return True
    return False


@pytest.mark.slow
def test_ui_serves_the_front_page_and_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    ui = subprocess.Popen(
        [sys.executable, "-m", "cmrec.cli", "ui", "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
        start_new_session=True,
        # Started as a shell starts a background job (`cmrec ui &`): SIGINT ignored, which Python
        # keeps unless the command installs its own handler. Ctrl-C must stop it all the same.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        assert ui.stdout is not None
        line = ui.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+) .*process group (\d+)", line)
        assert found is not None and int(found.group(1)) == port, line
        server_group = int(found.group(2))
        page, deadline = None, time.monotonic() + 120
        while page is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    page = (response.status, response.read().decode(errors="replace"))
            except OSError:
                time.sleep(0.5)
        assert page is not None and page[0] == 200 and "MLflow" in page[1]
        assert _group_alive(server_group)
        os.killpg(ui.pid, signal.SIGINT)  # Ctrl-C in the terminal: the whole foreground group
        assert ui.wait(timeout=60) == 0
        assert not _group_alive(server_group), "a process of the MLflow server outlived `cmrec ui`"
    finally:
        if ui.poll() is None:
            os.killpg(ui.pid, signal.SIGKILL)
