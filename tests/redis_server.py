"""A real Redis server for the tests: the one `.ci/run` starts (``CMREC_TEST_REDIS=HOST:PORT``),
or one started here from Debian's ``redis-server`` on a free port. No mocks."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import redis


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """A redis-server process on 127.0.0.1: started, stopped and restarted on the same port and
    data folder (with ``appendonly`` its data survives a restart).

    Args:
        folder: the server's working directory (its append-only file, its log).
        appendonly: persistence on, every write fsynced (``appendfsync always``).
        password: ``requirepass``, or None.
    """

    def __init__(self, folder: Path, appendonly: bool = False, password: str | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if os.environ.get("CI"):
                pytest.fail("redis-server is missing: .ci/run installs Debian's redis-server")
            pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run installs it)")
        self.binary = binary
        self.folder = folder
        self.port = free_port()
        self.appendonly = appendonly
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        self.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
        command += ["--save", "", "--logfile", str(self.folder / "redis.log")]
        if self.appendonly:
            command += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            command += ["--appendonly", "no"]
        if self.password:
            command += ["--requirepass", self.password]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.BusyLoadingError:
                pass  # loading its append-only file
            except redis.exceptions.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = self.folder / "redis.log"
                    raise RuntimeError(f"redis-server did not start: see {log}") from None
            time.sleep(0.02)
        client.close()

    def kill(self) -> None:
        """SIGKILL the server (what a crash does: only the fsynced append-only file survives)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def store_url(address: str, prefix: str = "t") -> str:
    """A store address under a fresh name: tests sharing one server never see each other's keys."""
    return f"redis://{address}/0/{prefix}-{uuid.uuid4().hex[:12]}"
