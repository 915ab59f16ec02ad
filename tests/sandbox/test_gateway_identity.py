"""Who a gateway's kernel runs as when the service itself is not root.

Found by review: a service that is not root (as every deployment under deploy/ runs it)
asked the gateway for kernels under its *own* uid and gid (``sandbox_identity`` returns
the service's ids when it cannot switch user). A kernel with the service's uid owns
everything the service owns on the shared workspace volume: the chat's ``data/``, the
manifests, ``displays/`` and ``<workspaces>/.kernels/`` — where it can write another
chat's record so that chat's next turn attaches to the attacker's kernel. The service now
asks for the configured sandbox identity (2000000000 by default) whether or not it is root,
refuses one that is its own (or root), and, unable to give ``outputs/`` away without root,
opens that one folder to the kernel.

The service's ids are simulated (a unit of the manager, no gateway); what the kernel's
identity may then do on the folders is checked with a real process of that identity.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from datasources.config import GatewaySettings, SandboxLimits
from datasources.sandbox.gateway_manager import GatewayManager
from datasources.sandbox.runtime import DEFAULT_SANDBOX_ID
from tests.conftest import IN_CI

SERVICE_UID, SERVICE_GID = 1000, 100


@pytest.fixture
def as_service(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The service's process runs as 1000:100, as in deploy/."""
    if os.geteuid() != 0:
        message = "the kernel's identity is tried by a root test run (CI runs as root)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    monkeypatch.setattr(os, "geteuid", lambda: SERVICE_UID)
    monkeypatch.setattr(os, "getuid", lambda: SERVICE_UID)
    monkeypatch.setattr(os, "getgid", lambda: SERVICE_GID)
    monkeypatch.setattr(os, "getegid", lambda: SERVICE_GID)
    monkeypatch.setattr(os, "getgroups", lambda: [SERVICE_GID])
    yield


def manager(root: Path, **limits: int) -> GatewayManager:
    return GatewayManager(
        root,
        limits=SandboxLimits(min_free_disk_bytes=0, pool_size=0, **limits),
        gateway=GatewaySettings(url="http://127.0.0.1:9"),
    )


def test_a_kernel_is_never_asked_to_run_as_the_service(as_service: None, tmp_path: Path) -> None:
    gateway = manager(tmp_path)
    env = gateway._kernel_env(tmp_path / "chat")
    assert (env["KERNEL_UID"], env["KERNEL_GID"]) != (str(SERVICE_UID), str(SERVICE_GID))
    assert env["KERNEL_UID"] != str(SERVICE_UID) and env["KERNEL_GID"] != str(SERVICE_GID)
    assert env == {
        "KERNEL_WORKING_DIR": str(tmp_path / "chat"),
        "KERNEL_UID": str(DEFAULT_SANDBOX_ID),
        "KERNEL_GID": str(DEFAULT_SANDBOX_ID),
    }
    assert gateway.problem() is None
    configured = manager(tmp_path, uid=4321, gid=4322)._kernel_env(tmp_path / "chat")
    assert (configured["KERNEL_UID"], configured["KERNEL_GID"]) == ("4321", "4322")


@pytest.mark.parametrize(("uid", "gid"), [(SERVICE_UID, 4321), (4321, SERVICE_GID)])
def test_the_services_own_identity_is_refused_with_the_setting(
    as_service: None, tmp_path: Path, uid: int, gid: int
) -> None:
    problem = manager(tmp_path, uid=uid, gid=gid).problem()
    assert problem is not None and "DATASOURCES_SANDBOX_UID" in problem


def _try_as(uid: int, gid: int, target: Path) -> bool:
    """Whether a process of ``uid:gid`` (no other groups) may create ``target``."""

    def become() -> None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)

    done = subprocess.run(
        ["/bin/sh", "-c", 'set -C; : > "$1"', "sh", str(target)],
        preexec_fn=become,
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


@pytest.fixture
def open_root() -> Iterator[Path]:
    """A workspace root whose path the kernel's uid can traverse (pytest's is root-only)."""
    base = Path(tempfile.mkdtemp(prefix="ds-identity-", dir="/tmp"))
    base.chmod(0o711)
    try:
        yield base / "workspaces"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_the_kernel_may_write_its_outputs_and_nothing_else_of_the_service(
    as_service: None, open_root: Path
) -> None:
    gateway = manager(open_root)
    chat = open_root / "0123456789abcdef01234567"
    gateway._ready(chat)
    gateway.kernels.put("fedcba9876543210fedcba98", "kernel-of-another-chat")
    env = gateway._kernel_env(chat)
    uid, gid = int(env["KERNEL_UID"]), int(env["KERNEL_GID"])
    assert (chat / "outputs").stat().st_mode & stat.S_ISVTX  # nobody removes another's files
    assert _try_as(uid, gid, chat / "outputs" / "result.csv")
    assert not _try_as(uid, gid, chat / "data" / "planted.csv")
    assert not _try_as(uid, gid, chat / "planted")
    assert not _try_as(uid, gid, open_root / ".kernels" / "0123456789abcdef01234567")
