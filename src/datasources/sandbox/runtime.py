"""How a sandboxed Python process is launched: identity, bubblewrap, cgroup, seccomp, rlimits.

The ``bwrap`` mode gives each session:

- a host identity that is never root: a dedicated unprivileged uid and gid
  (``DATASOURCES_SANDBOX_UID`` / ``_GID``, default 2000000000 when the service runs as
  root; the service's own uid otherwise). Bubblewrap runs *unprivileged* as that uid and
  makes its own user namespace, so nothing inside holds a capability on the host, and
  files the code writes are owned on the host by that uid;
- one cgroup holding every process it starts (bubblewrap, the kernel, anything forked),
  with memory and process limits, killed as a unit (``cgroup.kill`` on cgroup v2, freeze
  + kill + thaw on v1): nothing is told apart by its name;
- a seccomp allow-list (:mod:`datasources.sandbox.seccomp`);
- a new mount namespace holding only the read-only system (``/usr``) and Python runtime,
  the chat's ``data/`` (read-only) and ``outputs/`` (writable), both ``nosuid,nodev``, a
  private size-limited ``/tmp``, and the kernel's sockets on a small private tmpfs; not
  the store, the key file, other chats or any home directory;
- new network, PID, IPC, UTS and cgroup namespaces: no network at all, not even loopback;
- a scrubbed environment, ``--new-session``, ``--die-with-parent`` and rlimits.

When the service runs as root, the launch first prepares a *stage* in a mount namespace
of its own (still as root): the chat's folders bound ``nosuid,nodev`` (read-only for
``data/``) and a tmpfs for the sockets, under one path the sandbox user can reach; then
it drops to the sandbox uid and executes bubblewrap on the stage. The service's folders
(mode 0700, owned by root) stay closed to that uid.

Where any of this cannot be had (no unprivileged user namespaces, no writable cgroup,
no libseccomp), :func:`isolation_problem` says why and the ``bwrap`` mode refuses to
run code rather than run it with less.

The ``process`` mode (``DATASOURCES_SANDBOX=process``) keeps the rlimits and the
scrubbed environment and nothing else: the code can read whatever the service's user
can read and reach the network. It exists for machines where bubblewrap cannot run,
and the service says so loudly when it is used.

Length: one launch, read top to bottom: identity, stage, cgroup, seccomp and the
bubblewrap arguments are only ever used together, and each step's check decides whether
the launch refuses rather than runs with less; split, that decision would be scattered.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import logging
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasources.config import SandboxLimits
from datasources.errors import LimitExceededError, UnavailableError
from datasources.sandbox.disk import (
    _CLONE_NEWNS,
    _MS_BIND,
    _MS_NODEV,
    _MS_NOSUID,
    _MS_RDONLY,
    _MS_REC,
    _MS_REMOUNT,
    _MS_SLAVE,
    _libc,
)
from datasources.sandbox.seccomp import filter_bpf

__all__ = [
    "DEFAULT_SANDBOX_ID",
    "Cgroup",
    "Identity",
    "LaunchPlan",
    "SandboxUnavailableError",
    "SessionLimitError",
    "bwrap_problem",
    "isolation_problem",
    "plan_launch",
    "sandbox_identity",
]

logger = logging.getLogger(__name__)

DEFAULT_SANDBOX_ID = 2_000_000_000
"""Host uid and gid of sandboxes when the service is root and none is configured.

Above the ranges Debian and systemd hand out (system, dynamic, container users end below
1879048192) and below 2**31, so no other account owns it by accident."""
INSIDE_UID = 1000
INSIDE_WORKSPACE = "/workspace"
INSIDE_SOCKETS = "/kernel"
STAGE = Path("/run/datasources-sandbox")
"""An empty folder on the host; each launch mounts its own stage over it, privately."""


class SandboxUnavailableError(UnavailableError):
    """Code cannot run: the isolation it needs is missing here."""

    code = "sandbox_unavailable"


class SessionLimitError(LimitExceededError):
    """Too many live sessions (for this owner, or on the service): try again later.

    ``details["retry_after"]`` says in how many seconds (the HTTP layer's Retry-After).
    """

    code = "too_many_sessions"
    transient = True


@dataclass(frozen=True)
class Identity:
    """The host uid and gid a sandbox runs as."""

    uid: int
    gid: int

    @property
    def drops_privileges(self) -> bool:
        """True when the service must switch user (and stage the folders) to launch."""
        return os.geteuid() == 0


def sandbox_identity(limits: SandboxLimits) -> Identity:
    """The identity sandboxes get: configured, or a default that is never root.

    Raises:
        SandboxUnavailableError: the configured uid or gid is 0.
    """
    if os.geteuid() != 0:
        # Not root: the service cannot give anyone else's uid; its own has no privilege.
        return Identity(os.getuid(), os.getgid())
    uid = DEFAULT_SANDBOX_ID if limits.uid is None else limits.uid
    gid = uid if limits.gid is None else limits.gid
    if uid == 0 or gid == 0:
        raise SandboxUnavailableError(
            "The sandbox cannot run as root: set DATASOURCES_SANDBOX_UID and "
            "DATASOURCES_SANDBOX_GID to an unprivileged uid and gid (see docs/deployment.md)."
        )
    return Identity(uid, gid)


@functools.cache
def bwrap_problem() -> str | None:
    """Why bubblewrap cannot run on this machine at all, or None when it can."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed; on Debian: apt-get install bubblewrap"
    return None


@functools.cache
def isolation_problem(identity: Identity, processes: int, memory_bytes: int) -> str | None:
    """Why sandboxes cannot get their whole isolation here (as ``identity``), or None.

    Probes each mechanism the way a launch uses it: the seccomp filter compiles, a cgroup
    with the limits can be made, and bubblewrap starts unprivileged as ``identity`` with
    the filter loaded.
    """
    if identity.uid == 0 or identity.gid == 0:
        return "sandboxes would run as host root"
    try:
        filter_bpf()
    except OSError as exc:
        return f"no seccomp filter ({exc}); install libseccomp2"
    try:
        cgroup = Cgroup.create(f"ds-probe-{secrets.token_hex(4)}", processes, memory_bytes)
    except OSError as exc:
        return (
            f"no cgroup can be made for sandboxes ({exc}); give the service a delegated "
            "cgroup (see docs/deployment.md)"
        )
    plan = _bwrap_plan(identity, None, None, cgroup, [], ["/bin/true"], {})
    try:
        done = subprocess.run(
            plan.argv,
            preexec_fn=plan.preexec,
            pass_fds=plan.pass_fds,
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"bubblewrap could not start as uid {identity.uid}: {exc}"
    finally:
        plan.close_fds()
        cgroup.kill()
        cgroup.remove()
    if done.returncode != 0:
        return (
            f"bubblewrap cannot start unprivileged as uid {identity.uid} (are unprivileged "
            "user namespaces allowed? sysctl user.max_user_namespaces, "
            "kernel.unprivileged_userns_clone): "
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


def _python_roots() -> list[Path]:
    """The interpreter's and its packages' folders outside ``/usr``."""
    roots = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
    return [root for root in sorted(roots) if not str(root).startswith("/usr")]


def _python_binds(staged: bool) -> list[str]:
    """The interpreter and its packages, read-only, at the same paths as outside.

    Staged, they come from the stage (the sandbox user may not reach them, e.g. under
    ``/root``).
    """
    binds: list[str] = []
    for number, root in enumerate(_python_roots()):
        source = f"{STAGE}/python{number}" if staged else str(root)
        binds += ["--ro-bind", source, str(root)]
    return binds


class Cgroup:
    """One session's cgroup (v2, or v1 ``pids`` + ``memory`` + ``freezer``).

    Every process of the session is in it from before bubblewrap starts, so whatever the
    code forks is too, whatever it calls itself; :meth:`kill` ends them all at once.
    """

    def __init__(self, paths: dict[str, Path]) -> None:
        self.paths = paths
        """Controller (``unified`` on v2) -> the cgroup's folder."""

    @classmethod
    def create(cls, name: str, processes: int, memory_bytes: int) -> Cgroup:
        """A new cgroup with the limits.

        Raises:
            OSError: this machine (or this service's user) cannot make one.
        """
        made: dict[str, Path] = {}
        try:
            if Path("/sys/fs/cgroup/cgroup.controllers").exists():
                path = _own_cgroup_v2() / name
                path.mkdir()
                made["unified"] = path
                (path / "pids.max").write_text(str(processes))
                (path / "memory.max").write_text(str(memory_bytes))
                if not (path / "cgroup.kill").exists():
                    raise OSError("cgroup v2 without cgroup.kill (Linux < 5.14)")
            else:
                for controller, files in (
                    ("pids", {"pids.max": processes}),
                    ("memory", {"memory.limit_in_bytes": memory_bytes}),
                    ("freezer", {}),
                ):
                    path = _own_cgroup_v1(controller) / name
                    path.mkdir()
                    made[controller] = path
                    for file, value in files.items():
                        (path / file).write_text(str(value))
        except OSError:
            cls(made).remove()
            raise
        return cls(made)

    def join(self) -> None:
        """Move the calling process in (run in the child before exec)."""
        for path in self.paths.values():
            (path / "cgroup.procs").write_text(str(os.getpid()))

    def pids(self) -> list[int]:
        """The host pids of every process in the cgroup."""
        path = self.paths.get("unified") or self.paths.get("freezer") or self.paths.get("pids")
        if path is None:
            return []
        with contextlib.suppress(OSError, ValueError):
            return sorted(int(p) for p in (path / "cgroup.procs").read_text().split())
        return []

    def kill(self) -> None:
        """SIGKILL every process in the cgroup, as one unit; returns once it is empty.

        On cgroup v1 the freezer stops them first, so none can fork while the others are
        being killed; then every pid gets SIGKILL and the group is thawed so they die.
        """
        unified = self.paths.get("unified")
        if unified is not None:
            with contextlib.suppress(OSError):
                (unified / "cgroup.kill").write_text("1")
        else:
            freezer = self.paths["freezer"]
            with contextlib.suppress(OSError):
                (freezer / "freezer.state").write_text("FROZEN")
                for _ in range(200):
                    if (freezer / "freezer.state").read_text().strip() == "FROZEN":
                        break
                    time.sleep(0.005)
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                (freezer / "freezer.state").write_text("THAWED")
        for _ in range(400):  # processes leave a cgroup a moment after they die
            if not self.pids():
                return
            time.sleep(0.005)

    def remove(self) -> None:
        """Remove the (empty) cgroup; errors are ignored (a v1 hierarchy keeps it)."""
        for path in self.paths.values():
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
    raise OSError(f"no {controller} cgroup controller")


@dataclass
class LaunchPlan:
    """Everything needed to start one sandboxed kernel."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    preexec: Callable[[], None]
    socket_dir_inside: str
    cgroup: Cgroup | None
    pass_fds: tuple[int, ...] = ()
    staged: bool = False
    """The sockets are on the launch's private stage: reach them via ``/proc/<pid>/root``."""
    _fds: list[int] = field(default_factory=list)

    def host_socket_dir(self, pid: int, sockets: Path) -> Path:
        """Where the service finds the kernel's sockets, once process ``pid`` runs."""
        if self.staged:
            return Path(f"/proc/{pid}/root{STAGE}/kernel")
        return sockets

    def close_fds(self) -> None:
        """Close the parent's copies of descriptors passed to the child."""
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()


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


def _check(result: int, what: str) -> None:
    if result != 0:
        number = ctypes.get_errno()
        raise OSError(number, f"{what}: {os.strerror(number)}")


def _stage(
    libc: Any, identity: Identity, folders: list[tuple[bytes, bytes, bool]], kernel_json: bytes
) -> None:
    """In the child, as root: a private mount namespace with the launch's stage on STAGE.

    ``folders`` are (host path, name on the stage, writable). Each is bound ``nosuid,nodev``
    (and read-only unless writable); ``kernel/`` is on the stage's own tmpfs, owned by the
    sandbox user, with the connection file in it.
    """
    stage = bytes(STAGE)
    _check(libc.unshare(_CLONE_NEWNS), "unshare")
    # Our mounts stay ours; the host's later mounts still reach us (slave).
    _check(libc.mount(None, b"/", None, _MS_REC | _MS_SLAVE, None), "make-rslave")
    _check(
        libc.mount(b"tmpfs", stage, b"tmpfs", _MS_NOSUID | _MS_NODEV, b"mode=0755,size=4m"),
        "stage",
    )
    for source, name, writable in folders:
        target = stage + b"/" + name
        os.mkdir(target)
        _check(libc.mount(source, target, None, _MS_BIND, None), "bind")
        flags = _MS_BIND | _MS_REMOUNT | _MS_NOSUID | _MS_NODEV | (0 if writable else _MS_RDONLY)
        _check(libc.mount(None, target, None, flags, None), "remount")
    kernel = stage + b"/kernel"
    os.mkdir(kernel, 0o700)
    os.chown(kernel, identity.uid, identity.gid)
    fd = os.open(kernel + b"/kernel.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, kernel_json)
        os.fchown(fd, identity.uid, identity.gid)
    finally:
        os.close(fd)


def _bwrap_plan(
    identity: Identity,
    slot: Path | None,
    sockets: Path | None,
    cgroup: Cgroup,
    rlimits: list[tuple[int, int]],
    command: list[str],
    connection: dict[str, Any],
    tmp_bytes: int = 16 * 1024**2,
) -> LaunchPlan:
    """The bubblewrap command and the child's set-up, for a kernel over ``slot``.

    ``slot`` None: a probe (no workspace, no kernel).
    """
    seccomp = os.memfd_create("ds-seccomp", 0)
    os.write(seccomp, filter_bpf())
    os.lseek(seccomp, 0, os.SEEK_SET)
    staged = identity.drops_privileges
    libc = _libc() if staged else None
    if staged:
        # Root's own folder under /run: the mount point of every launch's private stage.
        STAGE.mkdir(mode=0o755, exist_ok=True)
    folders = [
        (bytes(root), f"python{number}".encode(), False)
        for number, root in enumerate(_python_roots())
    ]
    if slot is not None:
        folders += [
            (bytes(slot / "data"), b"data", False),
            (bytes(slot / "outputs"), b"outputs", True),
        ]
    kernel_json = json.dumps(connection).encode()

    def preexec() -> None:
        cgroup.join()
        for kind, value in rlimits:
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(kind, (value, value))
        if staged:
            _stage(libc, identity, folders, kernel_json)
            os.setgroups([])
            os.setgid(identity.gid)
            os.setuid(identity.uid)
        # Past this point nothing can regain a privilege (bwrap checks it too).
        if os.getuid() == 0 or os.geteuid() == 0:
            raise OSError("refusing to start a sandbox as root")

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
        "--size", str(tmp_bytes), "--tmpfs", "/tmp",
        *_python_binds(staged),
    ]  # fmt: skip
    if slot is not None:
        if staged:
            argv += [
                "--bind", f"{STAGE}/kernel", INSIDE_SOCKETS,
                "--ro-bind", f"{STAGE}/data", f"{INSIDE_WORKSPACE}/data",
                "--bind", f"{STAGE}/outputs", f"{INSIDE_WORKSPACE}/outputs",
            ]  # fmt: skip
        else:
            assert sockets is not None
            argv += [
                "--bind", str(sockets), INSIDE_SOCKETS,
                "--ro-bind", str(slot / "data"), f"{INSIDE_WORKSPACE}/data",
                "--bind", str(slot / "outputs"), f"{INSIDE_WORKSPACE}/outputs",
            ]  # fmt: skip
        argv += ["--chdir", INSIDE_WORKSPACE]
    argv += [
        "--uid", str(INSIDE_UID),
        "--gid", str(INSIDE_UID),
        "--hostname", "sandbox",
        "--clearenv",
        "--seccomp", str(seccomp),
        "--remount-ro", "/",  # last: every mount point above exists now
    ]  # fmt: skip
    for key, value in _kernel_env("/tmp").items():
        argv += ["--setenv", key, value]
    # The options go through a descriptor: bubblewrap is pid 1 inside, and its command
    # line (/proc/1/cmdline) would show the host's paths.
    args = os.memfd_create("ds-bwrap-args", 0)
    os.write(args, b"".join(arg.encode() + b"\0" for arg in argv[1:]))
    os.lseek(args, 0, os.SEEK_SET)
    return LaunchPlan(
        [argv[0], "--args", str(args), "--", *command],
        {},
        "/",
        preexec,
        INSIDE_SOCKETS,
        cgroup,
        pass_fds=(seccomp, args),
        staged=staged and slot is not None,
        _fds=[seccomp, args],
    )


def plan_launch(
    mode: str,
    slot: Path,
    sockets: Path,
    limits: SandboxLimits,
    connection: dict[str, Any],
) -> LaunchPlan:
    """The command that starts a kernel for ``slot`` (its ``data/`` and ``outputs/``).

    ``connection`` is the kernel's connection file, as the kernel must see it; in
    ``process`` mode and for a service that is not root it is written to ``sockets``.

    Raises:
        SandboxUnavailableError: ``bwrap`` mode cannot have its whole isolation here.
    """
    rlimits = _rlimits(limits)
    name = f"ds-{secrets.token_hex(6)}"
    if mode == "process":
        cgroup: Cgroup | None
        try:
            cgroup = Cgroup.create(name, limits.processes, limits.memory_bytes)
        except OSError as exc:
            _warn_no_cgroup(str(exc))
            cgroup = None
        host_file = sockets / "kernel.json"
        host_file.write_text(json.dumps({**connection, "ip": str(sockets / "k")}))
        host_file.chmod(0o600)

        def preexec() -> None:
            if cgroup is not None:
                cgroup.join()
            for kind, value in rlimits:
                with contextlib.suppress(ValueError, OSError):
                    resource.setrlimit(kind, (value, value))

        kernel = [sys.executable, "-m", "ipykernel_launcher", "-f", str(host_file)]
        env = _kernel_env(str(sockets))  # a private folder, not outputs/ (caches land in HOME)
        return LaunchPlan(kernel, env, str(slot), preexec, str(sockets), cgroup)
    identity = sandbox_identity(limits)
    problem = bwrap_problem() or isolation_problem(identity, limits.processes, limits.memory_bytes)
    if problem is not None:
        raise SandboxUnavailableError(
            f"Code cannot run in isolation here: {problem}. Set DATASOURCES_SANDBOX=process "
            "to run it without isolation (see docs/security.md)."
        )
    try:
        cgroup = Cgroup.create(name, limits.processes, limits.memory_bytes)
    except OSError as exc:
        logger.warning("A sandbox cgroup could not be made: %s", exc)
        raise SandboxUnavailableError(
            "The Python session did not start; the service log says why."
        ) from None
    inside = {**connection, "ip": f"{INSIDE_SOCKETS}/k"}
    if not identity.drops_privileges:
        # The service's own uid is the sandbox's: its private socket folder is enough.
        host_file = sockets / "kernel.json"
        host_file.write_text(json.dumps(inside))
        host_file.chmod(0o600)
    kernel = [sys.executable, "-m", "ipykernel_launcher", "-f", f"{INSIDE_SOCKETS}/kernel.json"]
    return _bwrap_plan(
        identity, slot, sockets, cgroup, rlimits, kernel, inside, tmp_bytes=limits.tmp_bytes
    )


@functools.cache
def _warn_no_cgroup(reason: str) -> None:
    logger.warning(
        "Process-mode sessions run without a cgroup (%s): process and memory caps rest on "
        "rlimits only.",
        reason,
    )
