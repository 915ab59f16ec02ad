"""A real Jupyter Enterprise Gateway on loopback, run as production runs it: not as root.

Enterprise Gateway 3.3 is installed by ``make test`` in a virtualenv of its own
(``.venv-gateway``: it pins an older jupyter-client, jupyter-server and pyzmq than the
project's). It runs as an unprivileged uid (the sandbox uid, 2000000000 by default) with a
token; its kernels are local processes of that uid, started from a kernelspec that runs
the project's Python and, as Enterprise Gateway's container kernels do with
``EG_MIRROR_WORKING_DIRS=True``, changes to ``KERNEL_WORKING_DIR`` first. Local kernels
are for tests only: they share the gateway's uid and the machine's network.

This machine's Python may live under a folder the gateway's uid cannot enter (``/root``
is 0700): the gateway then starts in a mount namespace of its own where that folder is a
tmpfs holding only binds of what the gateway and its kernels need (the host is not
changed). Set ``DATASOURCES_TEST_GATEWAY`` to another ``jupyter-enterprisegateway``
executable to use it instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parents[2]
UID = 2_000_000_000
"""The gateway's (and so its kernels') uid: the service's default sandbox uid."""


@dataclass
class Gateway:
    """A running gateway."""

    url: str
    token: str
    base: Path
    """A folder the gateway's uid can enter: homes for the service under test go here."""
    process: subprocess.Popen[bytes]
    log: Path

    def kernels(self) -> list[str]:
        """The ids of the kernels the gateway runs."""
        response = httpx.get(
            f"{self.url}/api/kernels", headers={"Authorization": f"token {self.token}"}
        )
        response.raise_for_status()
        return [kernel["id"] for kernel in response.json()]

    def has_kernel(self, kernel_id: str) -> bool:
        response = httpx.get(
            f"{self.url}/api/kernels/{kernel_id}", headers={"Authorization": f"token {self.token}"}
        )
        return response.status_code == 200

    def home(self, name: str) -> Path:
        """A fresh service home whose workspaces the kernels can reach."""
        home = self.base / "homes" / f"{name}-{secrets.token_hex(3)}"
        home.mkdir(parents=True)
        home.chmod(0o711)
        return home


def _executable() -> Path | None:
    configured = os.environ.get("DATASOURCES_TEST_GATEWAY")
    if configured:
        return Path(configured)
    found = ROOT / ".venv-gateway" / "bin" / "jupyter-enterprisegateway"
    return found if found.exists() else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _closed_ancestors(path: Path) -> list[Path]:
    """Folders on the way to ``path`` that other users cannot enter."""
    closed = []
    for folder in reversed(path.parents):
        if folder != Path("/") and not folder.stat().st_mode & 0o001:
            closed.append(folder)
    return closed


def _needed() -> list[Path]:
    """What the gateway and its kernels must reach: both Pythons and their packages."""
    executable = _executable()
    assert executable is not None
    paths = {
        Path(sys.prefix).resolve(),
        Path(sys.base_prefix).resolve(),
        Path(sys.executable).resolve().parent.parent,
        executable.resolve().parent.parent,
    }
    with contextlib.suppress(OSError):
        paths.add(Path(os.path.realpath(executable.parent / "python")).parent.parent)
    return sorted(paths)


def _launcher(stage: Path) -> list[str]:
    """The command prefix that starts the gateway as ``UID`` with what it needs reachable."""
    closed: dict[Path, list[Path]] = {}
    for path in _needed():
        blocked = _closed_ancestors(path)
        if blocked:
            closed.setdefault(blocked[0], []).append(path)
    drop = ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", "--"]
    if not closed:
        return drop
    lines = ["set -e", f"mount -t tmpfs -o mode=0700 tmpfs {shlex.quote(str(stage))}"]
    number = 0
    for folder, paths in closed.items():
        kept = []
        for path in paths:
            copy = stage / str(number)
            number += 1
            lines.append(f"mkdir {shlex.quote(str(copy))}")
            lines.append(f"mount --rbind {shlex.quote(str(path))} {shlex.quote(str(copy))}")
            kept.append((copy, path))
        lines.append(f"mount -t tmpfs -o mode=0755 tmpfs {shlex.quote(str(folder))}")
        for copy, path in kept:
            lines.append(f"mkdir -p {shlex.quote(str(path))}")
            lines.append(f"mount --rbind {shlex.quote(str(copy))} {shlex.quote(str(path))}")
    lines += [f"umount -l {shlex.quote(str(stage))}", 'exec "$@"']
    script = "\n".join(lines)
    return ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script, "sh",
            *drop]  # fmt: skip


def _write_kernelspec(base: Path, kernel_home: Path) -> Path:
    share = base / "share" / "jupyter"
    spec = share / "kernels" / "python3"
    spec.mkdir(parents=True)
    # As a container kernel with EG_MIRROR_WORKING_DIRS=True: start in KERNEL_WORKING_DIR.
    command = f'cd "$KERNEL_WORKING_DIR" && exec {shlex.quote(sys.executable)} ' + (
        '-m ipykernel_launcher -f "$0"'
    )
    kernel = {
        "argv": ["/bin/sh", "-c", command, "{connection_file}"],
        "display_name": "Python 3 (datasources tests)",
        "language": "python",
        "env": {
            "HOME": str(kernel_home),
            "PYTHONUNBUFFERED": "1",
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        },
    }
    (spec / "kernel.json").write_text(json.dumps(kernel))
    return share


def _private(folder: Path) -> Path:
    folder.mkdir(parents=True)
    os.chown(folder, UID, UID)
    folder.chmod(0o700)
    return folder


def start_gateway(*, as_root: bool = False, name: str = "eg") -> Generator[Gateway]:
    """Run a gateway until the generator is closed (a fixture's body)."""
    executable = _executable()
    if executable is None:
        message = "Enterprise Gateway is not installed: make .venv-gateway/.installed"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    if os.geteuid() != 0:
        message = "the gateway's user is switched by a root test run (CI runs as root)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    base = Path(tempfile.mkdtemp(prefix=f"ds-{name}-", dir="/tmp"))
    base.chmod(0o711)
    stage = Path(tempfile.mkdtemp(prefix="ds-eg-stage-", dir="/tmp"))
    try:
        home = _private(base / "gateway-home")
        share = _write_kernelspec(base, _private(base / "kernel-home"))
        (base / "homes").mkdir(mode=0o711)
        (base / "homes").chmod(0o711)
        token = secrets.token_urlsafe(24)
        port = _free_port()
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "HOME": str(home),
            "USER": "root" if as_root else "datasources-kernels",
            "JUPYTER_PATH": str(share),
            "JUPYTER_CONFIG_DIR": str(home / "config"),
            "JUPYTER_DATA_DIR": str(home / "data"),
            "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
            "EG_AUTH_TOKEN": token,  # in the environment, not on a command line
            "EG_LIST_KERNELS": "True",  # lets the tests see which kernels are left
        }
        command = [
            str(executable),
            "--ip=127.0.0.1",
            f"--port={port}",
            "--port_retries=0",
            "--KernelSpecManager.ensure_native_kernel=False",
        ]
        log = base / "gateway.log"
        prefix = [] if as_root else _launcher(stage)
        with log.open("wb") as out:
            process = subprocess.Popen(
                [*prefix, *command],
                env=env,
                cwd=home,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        gateway = Gateway(f"http://127.0.0.1:{port}", token, base, process, log)
        _wait_up(gateway)
        try:
            yield gateway
        finally:
            with contextlib.suppress(httpx.HTTPError):
                for kernel in gateway.kernels():  # what a failed test left
                    httpx.delete(
                        f"{gateway.url}/api/kernels/{kernel}",
                        headers={"Authorization": f"token {token}"},
                        timeout=30,
                    )
            _stop(process)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        with contextlib.suppress(OSError):
            stage.rmdir()


def _wait_up(gateway: Gateway) -> None:
    deadline = time.monotonic() + 60
    while True:
        if gateway.process.poll() is not None:
            raise AssertionError(f"the gateway exited:\n{gateway.log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            response = httpx.get(
                f"{gateway.url}/api/kernelspecs",
                headers={"Authorization": f"token {gateway.token}"},
                timeout=2,
            )
            if response.status_code == 200:
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"the gateway never answered:\n{gateway.log.read_text()[-3000:]}")
        time.sleep(0.1)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM: the gateway shuts its kernels down; then its process group is killed."""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(20)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(10)
