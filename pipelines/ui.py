"""`cmrec ui`: MLflow's web UI over the project's tracking store, until Ctrl-C.

Starts ``mlflow ui`` on 127.0.0.1 (loopback only, unless --host says otherwise) against the store
`cmrec train` logs to (``sqlite:///mlflow.db`` in this folder, or MLFLOW_TRACKING_URI). The server
and its workers run in a process group of their own, which Ctrl-C (or SIGTERM) stops whole: no
worker is left behind.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from urllib.parse import urlparse

from cmrec.errors import CmrecError
from cmrec.pipelines._common import run_command
from cmrec.tracking import tracking_uri

DESCRIPTION = "Start MLflow's web UI on the project's tracking store (127.0.0.1; Ctrl-C stops it)."
STOP_TIMEOUT_S = 10.0
# Backend stores `mlflow ui` accepts ("" is a plain folder path).
STORE_SCHEMES = {"", "file", "sqlite", "postgresql", "mysql", "mssql"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    parser.add_argument(
        "--store", help="tracking store URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"
    )


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise CmrecError(f"--port must be in [1, 65535], got {args.port}")
    uri = args.store or tracking_uri()
    scheme = urlparse(uri).scheme.split("+", 1)[0]  # postgresql+psycopg2 -> postgresql
    if scheme not in STORE_SCHEMES:
        flag = "--store" if args.store else "MLFLOW_TRACKING_URI"
        raise CmrecError(
            f"{flag}: {uri!r} is not a tracking store the MLflow UI can serve (give sqlite:///PATH, "
            "a folder path, or a postgresql://, mysql:// or mssql:// database URI)"
        )
    _check_port_free(args.host, args.port)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    command += ["--host", args.host, "--port", str(args.port), "--workers", "1"]

    # Ctrl-C and SIGTERM raise KeyboardInterrupt here, SIGINT even in a background job that
    # inherited it ignored (`run_guarded` takes both for every command): the server's group is
    # then stopped below, and stopping the UI that way is its normal end.
    server: subprocess.Popen[bytes] | None = None
    try:
        server = subprocess.Popen(command, start_new_session=True)  # its own process group
        print(
            f"MLflow UI on http://{args.host}:{args.port} (store {uri}; process group {server.pid}); "
            "Ctrl-C stops it",
            flush=True,
        )
        status = server.wait()
        # The UI runs until Ctrl-C: a server that ends by itself has failed, whatever its status.
        raise CmrecError(
            f"the MLflow server stopped by itself (exit status {status}; its messages are above)"
        )
    except KeyboardInterrupt:
        return 0
    finally:
        if server is not None and server.poll() is None:
            _stop_group(server)


def _check_port_free(host: str, port: int) -> None:
    """Refuse a port another server holds (MLflow's server would log the failure and exit 0)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise CmrecError(f"--host {host}: not an address of this machine ({exc.strerror})") from exc
    family, kind, _, _, address = infos[0]
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise CmrecError(
                f"--port {port}: cannot listen on {host}:{port} ({exc.strerror}); choose another --port"
            ) from exc


def _stop_group(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's whole process group; SIGKILL to what is left after a grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            server.poll()
            try:
                os.killpg(server.pid, 0)  # anyone left in the group?
            except ProcessLookupError:
                return
            time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    return run_command(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
