"""Private servers a test may restart: a PostgreSQL cluster and an Azurite, on free ports.

The shared PostgreSQL and Azurite of ``scripts/services.sh`` serve every test on the
machine, so a test that needs a server to go away and come back starts its own here:
``initdb`` + ``pg_ctl`` in a temporary folder (as the ``postgres`` user when the suite
runs as root, since PostgreSQL refuses to run as root), or ``azurite-blob`` with its own
data folder. Each is stopped and its folder removed when the context ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import IN_CI

__all__ = ["PrivateAzurite", "PrivatePostgres", "private_azurite", "private_postgres"]

_REPO = Path(__file__).resolve().parents[1]
_AZURITE = _REPO / "node_modules" / ".bin" / "azurite-blob"
_DEV_KEY = (  # the emulator's published development key, not a secret
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _unavailable(message: str) -> None:
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def _pg_bindir() -> Path | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PrivatePostgres:
    """One PostgreSQL cluster of the test's own, with trust auth on 127.0.0.1."""

    def __init__(self, bindir: Path, folder: Path, port: int) -> None:
        self.bindir, self.folder, self.port = bindir, folder, port
        self.data = folder / "data"
        self.dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = self.folder / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{args[0]} failed: {done.stderr}\n{tail}")

    def _ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c fsync=off"
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"),
            "-w", "-t", "60", "-o", options, *extra, action,
        )  # fmt: skip

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    async def start(self) -> None:
        await asyncio.to_thread(self._ctl, "start")

    async def stop(self) -> None:
        await asyncio.to_thread(self._ctl, "stop", "-m", "fast")

    async def restart(self) -> None:
        """Stop (fast: every session is ended) and start again; returns once it accepts."""
        await asyncio.to_thread(self._ctl, "restart", "-m", "fast")


@contextlib.asynccontextmanager
async def private_postgres() -> AsyncIterator[PrivatePostgres]:
    """A fresh cluster on a free port, removed afterwards."""
    bindir = _pg_bindir()
    if bindir is None:
        _unavailable("PostgreSQL's initdb is not installed")
        raise AssertionError("unreachable")
    # The postgres user must reach the folder: /var/tmp, not the test's private tmp_path.
    folder = Path(tempfile.mkdtemp(prefix="ds-private-pg-", dir="/var/tmp"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    server = PrivatePostgres(bindir, folder, free_port())
    try:
        await asyncio.to_thread(server.init)
        await server.start()
        yield server
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(server._ctl, "stop", "-m", "immediate")
        shutil.rmtree(folder, ignore_errors=True)


class PrivateAzurite:
    """One Azurite blob service of the test's own."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder, port
        self.url = f"http://127.0.0.1:{port}/devstoreaccount1"
        self.connection_string = (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            f"AccountKey={_DEV_KEY};BlobEndpoint={self.url};"
        )
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            str(_AZURITE),
            "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
            "--location", str(self.folder), "--silent", "--disableTelemetry",
            "--skipApiVersionCheck",
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        await self._until_it_answers()

    async def _until_it_answers(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while True:
            try:
                _reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if loop.time() > deadline:
                    raise RuntimeError("the private Azurite did not start") from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 20)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()

    async def restart(self) -> None:
        await self.stop()
        await self.start()


@contextlib.asynccontextmanager
async def private_azurite() -> AsyncIterator[PrivateAzurite]:
    """A fresh Azurite on a free port with its own data folder, removed afterwards."""
    if not _AZURITE.exists():
        _unavailable("Azurite is not installed: make node_modules/.installed")
    folder = Path(tempfile.mkdtemp(prefix="ds-private-azurite-"))
    server = PrivateAzurite(folder, free_port())
    try:
        await server.start()
        yield server
    finally:
        await server.stop()
        shutil.rmtree(folder, ignore_errors=True)
