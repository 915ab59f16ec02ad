"""How a sandboxed Python process is launched: bubblewrap, cgroups, rlimits, environment.

The ``bwrap`` mode gives each session:

- a new mount namespace holding only the read-only system (``/usr``) and Python runtime,
  the chat's ``data/`` (read-only) and ``outputs/`` (writable), a private size-limited
  ``/tmp`` and the folder of the kernel's sockets — not the store, the key file, other
  chats or any home directory;
- new network, PID, IPC and UTS namespaces: no network at all, not even loopback;
- user 65534, a scrubbed environment (nothing from the service's), ``--new-session``
  and ``--die-with-parent``;
- rlimits (address space, CPU time, open files, file size) and, where the cgroup
  hierarchy is writable, a cgroup capping processes and memory.

The ``process`` mode (``DATASOURCES_SANDBOX=process``) keeps the rlimits and the
scrubbed environment and nothing else: the code can read whatever the service's user
can read and reach the network. It exists for machines where bubblewrap cannot run,
and the service says so loudly when it is used.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import resource
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from datasources.config import SandboxLimits
from datasources.errors import UnavailableError

__all__ = ["Cgroup", "LaunchPlan", "SandboxUnavailableError", "bwrap_problem", "plan_launch"]

logger = logging.getLogger(__name__)

SANDBOX_UID = 65534
INSIDE_WORKSPACE = "/workspace"
INSIDE_SOCKETS = "/kernel"


class SandboxUnavailableError(UnavailableError):
    """Code cannot run: the isolation it needs is missing here."""

    code = "sandbox_unavailable"


@functools.cache
def bwrap_problem() -> str | None:
    """Why bubblewrap cannot isolate code on this machine, or None when it can."""
    binary = shutil.which("bwrap")
    if binary is None:
        return "bubblewrap (bwrap) is not installed; on Debian: apt-get install bubblewrap"
    probe = [binary, "--unshare-all", "--die-with-parent", *_system_binds(), "--", "/bin/true"]
    try:
        done = subprocess.run(probe, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap could not start: {type(exc).__name__}"
    if done.returncode != 0:
        return (
            "bubblewrap cannot create namespaces here: "
            + done.stderr.decode("utf-8", "replace").strip()[:200]
        )
    return None


def _system_binds() -> list[str]:
    binds = ["--ro-bind", "/usr", "/usr"]
    for name in ("lib", "lib64", "bin", "sbin"):
        path = Path("/") / name
        if path.is_symlink():
            binds += ["--symlink", os.readlink(path), f"/{name}"]
        elif path.is_dir():
            binds += ["--ro-bind", str(path), f"/{name}"]
    for extra in ("/etc/ssl", "/etc/fonts", "/etc/localtime"):
        if Path(extra).exists():
            binds += ["--ro-bind", extra, extra]
    return binds


def _python_binds() -> list[str]:
    """The interpreter and its packages, read-only, at the same paths as outside."""
    roots = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
    binds: list[str] = []
    for root in sorted(roots):
        if not str(root).startswith("/usr"):
            binds += ["--ro-bind", str(root), str(root)]
    return binds


class Cgroup:
    """A cgroup (v1 or v2) capping one session's processes and memory, where writable."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    @classmethod
    def create(cls, name: str, limits: SandboxLimits) -> Cgroup | None:
        """A new cgroup, or None (logged once) when this machine does not let us make one."""
        made: list[Path] = []
        try:
            unified = Path("/sys/fs/cgroup/cgroup.controllers")
            if unified.exists():
                path = _own_cgroup_v2() / name
                path.mkdir()
                made.append(path)
                (path / "pids.max").write_text(str(limits.processes))
                with contextlib.suppress(OSError):
                    (path / "memory.max").write_text(str(limits.memory_bytes))
            else:
                for controller, files in (
                    ("pids", {"pids.max": limits.processes}),
                    ("memory", {"memory.limit_in_bytes": limits.memory_bytes}),
                ):
                    path = _own_cgroup_v1(controller) / name
                    path.mkdir()
                    made.append(path)
                    for file, value in files.items():
                        (path / file).write_text(str(value))
        except OSError as exc:
            for path in made:
                with contextlib.suppress(OSError):
                    path.rmdir()
            _warn_no_cgroup(str(exc))
            return None
        return cls(made)

    def join(self) -> None:
        """Move the calling process in (run in the child before exec)."""
        for path in self.paths:
            (path / "cgroup.procs").write_text(str(os.getpid()))

    def pids(self) -> list[int]:
        """The host pids of every process in the cgroup."""
        found: set[int] = set()
        for path in self.paths:
            with contextlib.suppress(OSError, ValueError):
                found.update(int(p) for p in (path / "cgroup.procs").read_text().split())
        return sorted(found)

    def remove(self) -> None:
        for path in self.paths:
            with contextlib.suppress(OSError):
                path.rmdir()


def _own_cgroup_v2() -> Path:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return Path("/sys/fs/cgroup") / line[3:].lstrip("/")
    return Path("/sys/fs/cgroup")


def _own_cgroup_v1(controller: str) -> Path:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if controller in names.split(","):
            return Path("/sys/fs/cgroup") / controller / path.lstrip("/")
    raise OSError(f"no {controller} cgroup")


@functools.cache
def _warn_no_cgroup(reason: str) -> None:
    logger.warning(
        "Sandboxes run without a cgroup (%s): process and memory caps rest on rlimits only.",
        reason,
    )


@dataclass
class LaunchPlan:
    """Everything needed to start one sandboxed kernel."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    preexec: Callable[[], None]
    socket_dir_inside: str
    cgroup: Cgroup | None


def _rlimits(limits: SandboxLimits) -> list[tuple[int, int]]:
    return [
        (resource.RLIMIT_AS, limits.memory_bytes),
        (resource.RLIMIT_CPU, limits.cpu_seconds),
        (resource.RLIMIT_NOFILE, limits.open_files),
        (resource.RLIMIT_FSIZE, limits.file_size_bytes),
        (resource.RLIMIT_CORE, 0),
    ]


def _kernel_env(home: str) -> dict[str, str]:
    """The whole environment the code sees: nothing of the service's."""
    return {
        "HOME": home,
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        # Agg rendering, and figures sent as PNG displays at the end of each cell.
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }


def plan_launch(
    mode: str, slot: Path, sockets: Path, limits: SandboxLimits, connection_file: str
) -> LaunchPlan:
    """The command that starts a kernel for ``slot`` (its ``data/`` and ``outputs/``)."""
    cgroup = Cgroup.create(f"ds-{secrets.token_hex(6)}", limits)
    rlimits = _rlimits(limits)

    def preexec() -> None:
        if cgroup is not None:
            cgroup.join()
        for kind, value in rlimits:
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(kind, (value, value))

    kernel = [sys.executable, "-m", "ipykernel_launcher", "-f", connection_file]
    if mode == "process":
        env = _kernel_env(str(sockets))  # a private folder, not outputs/ (caches land in HOME)
        return LaunchPlan(kernel, env, str(slot), preexec, str(sockets), cgroup)
    problem = bwrap_problem()
    if problem is not None:
        if cgroup is not None:
            cgroup.remove()
        raise SandboxUnavailableError(
            f"Code cannot run in isolation here: {problem}. Set DATASOURCES_SANDBOX=process "
            "to run it without isolation (see docs/security.md)."
        )
    env = _kernel_env("/tmp")
    argv = [
        shutil.which("bwrap") or "bwrap",
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        *_system_binds(),
        "--proc", "/proc",
        "--dev", "/dev",
        # /tmp before anything that may live under it (a venv in /tmp): a tmpfs mounted
        # later would hide those binds.
        "--size", str(limits.tmp_bytes), "--tmpfs", "/tmp",
        *_python_binds(),
        "--bind", str(sockets), INSIDE_SOCKETS,
        "--ro-bind", str(slot / "data"), f"{INSIDE_WORKSPACE}/data",
        "--bind", str(slot / "outputs"), f"{INSIDE_WORKSPACE}/outputs",
        "--chdir", INSIDE_WORKSPACE,
        "--uid", str(SANDBOX_UID),
        "--gid", str(SANDBOX_UID),
        "--hostname", "sandbox",
        "--clearenv",
        "--remount-ro", "/",  # last: every mount point above exists now
    ]  # fmt: skip
    for key, value in env.items():
        argv += ["--setenv", key, value]
    argv += ["--", *kernel[:-1], f"{INSIDE_SOCKETS}/kernel.json"]
    return LaunchPlan(argv, {}, str(slot), preexec, INSIDE_SOCKETS, cgroup)
