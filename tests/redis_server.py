"""Redis for tests: the shared one from scripts/services.sh, and private ones to stop.

Tests on the shared Redis each use a prefix of their own (keys and the change channel are
named under it), so they never see each other's buckets or messages. A test that needs
Redis to go away starts a private ``redis-server`` on a free port and stops it; it can
start it again on the same port (an outage and a recovery).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.conftest import IN_CI, require_service

__all__ = ["PrivateRedis", "redis_server_binary"]


def redis_server_binary() -> str:
    """The redis-server to start private servers with (skip, or fail in CI, without one)."""
    import pytest

    found = os.environ.get("DATASOURCES_TEST_REDIS_SERVER") or shutil.which("redis-server")
    if found:
        return found
    if IN_CI:
        pytest.fail("redis-server is not installed: run 'scripts/services.sh start'")
    return require_service("DATASOURCES_TEST_REDIS_SERVER")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A redis-server of the test's own, without persistence, on a fixed free port."""

    def __init__(self, folder: Path) -> None:
        self.binary = redis_server_binary()
        self.port = _free_port()
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                self.binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(10)
