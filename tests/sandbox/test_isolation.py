"""The sandbox's identity on the host, its view of /proc, and its system-call filter.

Real bubblewrap, with the service as it runs in CI (root): the code must never be host
root, must not be able to leave a set-id program behind, and must be refused every
system call a container without capabilities is refused.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from datasources.config import SandboxLimits, Settings
from datasources.sandbox.manager import SandboxManager
from datasources.sandbox.runtime import (
    DEFAULT_SANDBOX_ID,
    Identity,
    SandboxUnavailableError,
    isolation_problem,
)
from datasources.sandbox.session import Execution, Session

pytestmark = [pytest.mark.sandbox]


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[tuple[Session, Path]]:
    manager = SandboxManager(
        tmp_path / "ws", mode="bwrap", limits=SandboxLimits(pool_size=0, timeout=20)
    )
    manager.require()
    await manager.start()
    try:
        workspace = tmp_path / "ws" / "chat"
        session, _ = await manager.session("chat", workspace, owner="o")
        assert isinstance(session, Session)
        yield session, workspace
    finally:
        await manager.close()


def _out(result: Execution) -> str:
    return "".join(p.text or "" for p in result.parts)


def _expected_uid() -> int:
    return DEFAULT_SANDBOX_ID if os.geteuid() == 0 else os.getuid()


async def test_files_and_processes_of_the_sandbox_are_not_host_root(
    sandbox: tuple[Session, Path],
) -> None:
    session, workspace = sandbox
    result = await session.execute("open('outputs/mine.txt', 'w').write('x')")
    assert result.ok, result.parts
    owner = (workspace / "outputs" / "mine.txt").stat()
    assert (owner.st_uid, owner.st_gid) == (_expected_uid(), _expected_uid())
    assert session._kernel_pid is not None
    status = await asyncio.to_thread(Path(f"/proc/{session._kernel_pid}/status").read_text)
    ids = {
        line.split(":")[0]: line.split()[1:]
        for line in status.splitlines()
        if line.startswith(("Uid:", "Gid:"))
    }
    assert ids["Uid"] == [str(_expected_uid())] * 4
    assert ids["Gid"] == [str(_expected_uid())] * 4
    capabilities = [line for line in status.splitlines() if line.startswith("CapEff:")]
    assert capabilities == ["CapEff:\t0000000000000000"]


async def test_a_set_id_program_cannot_be_made_for_the_host(
    sandbox: tuple[Session, Path],
) -> None:
    session, workspace = sandbox
    result = await session.execute(
        "import os, shutil\n"
        "shutil.copy('/usr/bin/id', 'outputs/id')\n"
        "for attempt in (lambda: os.chmod('outputs/id', 0o4755),\n"
        "                lambda: os.chmod('outputs/id', 0o2755),\n"
        "                lambda: os.close(os.open('outputs/id2', os.O_CREAT, 0o4755))):\n"
        "    try:\n"
        "        attempt(); print('SET')\n"
        "    except PermissionError:\n"
        "        print('refused')\n"
    )  # fmt: skip
    assert _out(result).split() == ["refused"] * 3, result.parts
    program = workspace / "outputs" / "id"
    assert program.stat().st_mode & 0o6000 == 0
    # An unprivileged host user runs what the sandbox left: it gets no one else's identity.
    assert _run_as_nobody(program) == str(65534 if os.geteuid() == 0 else os.geteuid())


def _run_as_nobody(program: Path) -> str:
    """``program -u`` run by host user 65534 (the folders on the way are closed to it)."""
    fd = os.open(program, os.O_RDONLY)
    try:

        def nobody() -> None:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)

        done = subprocess.run(
            [f"/proc/self/fd/{fd}", "-u"],
            pass_fds=(fd,),
            preexec_fn=nobody if os.geteuid() == 0 else None,
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        os.close(fd)
    return done.stdout.strip()


async def test_proc_inside_shows_no_host_paths(
    sandbox: tuple[Session, Path], tmp_path: Path
) -> None:
    session, _ = sandbox
    result = await session.execute(
        "import glob\n"
        "for name in ['/proc/1/cmdline', '/proc/self/cmdline', '/proc/1/environ',\n"
        "             '/proc/self/environ', '/proc/self/cgroup', '/proc/1/cgroup']:\n"
        "    print(name, open(name, 'rb').read())\n"
        "print(open('/proc/self/mountinfo').read())\n"
    )
    text = _out(result)
    assert "/proc/1/cmdline" in text and "mountinfo" not in text, result.parts
    # Neither the service's folders nor the stage nor the kernel's socket folder.
    assert str(session.sockets) not in text
    assert "datasources-sandbox" not in text
    cmdline = text.split("/proc/self/cmdline")[0]
    assert str(tmp_path) not in cmdline
    for line in text.splitlines():
        if line.startswith("/proc/") and "cgroup" in line:
            assert "ds-" not in line and "process_api" not in line, line
    # outputs/ is a folder of the chat's own filesystem: its path there, not a host folder.
    outputs = [line for line in text.splitlines() if " /workspace/outputs " in line]
    assert outputs and all(line.split()[3] == "/outputs" for line in outputs), outputs


_MOUNTS = (
    "import os\n"
    "for name in ['/proc/self/mountinfo', '/proc/self/mounts', '/proc/1/mountinfo']:\n"
    "    print(name); print(open(name).read())\n"
    "print(open('data/seen.txt').read())\n"
    "try:\n"
    "    open('data/mine.txt', 'w')\n"
    "except OSError as exc:\n"
    "    print('refused', exc.errno)\n"
)


@pytest.mark.parametrize("prepared", [True, False], ids=["created-chat", "unprepared-chat"])
async def test_mountinfo_inside_shows_no_host_path(tmp_path: Path, prepared: bool) -> None:
    # As the service runs: workspaces and the store under one home, a warm pool.
    settings = Settings(home=tmp_path / "home")
    limits = settings.sandbox_limits.model_copy(update={"pool_size": 1, "timeout": 20})
    manager = SandboxManager(settings.workspaces_dir, mode="bwrap", limits=limits)
    manager.require()
    await manager.start()
    try:
        workspace = settings.workspaces_dir / "chat"
        if prepared:
            await manager.prepare("chat", workspace)  # what creating a chat does
        else:
            (workspace / "data").mkdir(parents=True)
        (workspace / "data" / "seen.txt").write_text("fetched before the session")
        while not manager._warm:  # noqa: ASYNC110 - the pool's first slot, adopted below
            await asyncio.sleep(0.05)
        session, new = await manager.session("chat", workspace, owner="o")
        assert new
        (workspace / "data" / "later.txt").write_text("fetched during the session")
        result = await session.execute(_MOUNTS + "print(open('data/later.txt').read())\n")
    finally:
        await manager.close()
    text = _out(result)
    assert "fetched before the session" in text and "fetched during" in text, result.parts
    assert "refused 30" in text, text  # EROFS: data/ is read-only inside
    # The Python runtime is bound at its own path (nothing new to learn): set aside.
    from datasources.sandbox.runtime import _python_roots

    for root in _python_roots():
        text = text.replace(str(root), "<python>")
    repo = Path(__file__).parents[2].absolute()
    for host in (tmp_path, settings.home, settings.workspaces_dir, Path.home(), repo):
        assert str(host) not in text, (host, text)
    info = text.split("/proc/self/mounts")[0].splitlines()
    data = [line.split() for line in info if " /workspace/data " in line]
    assert data and all(fields[3] in ("/", "/data") for fields in data), data
    top = data[-1][5].split(",")  # the mount the code sees
    assert {"ro", "nosuid", "nodev"} <= set(top), data


def _mounted(path: Path) -> bool:
    return os.path.ismount(path)


def _mountinfo() -> str:
    return Path("/proc/self/mountinfo").read_text()


def _loop_backings() -> list[str]:
    """The files behind this machine's loop devices."""
    return [
        path.read_text().strip()
        for path in Path("/sys/block").glob("loop*/loop/backing_file")
        if path.exists()
    ]


async def test_a_restart_remounts_a_chat_and_deleting_it_frees_every_mount(
    tmp_path: Path,
) -> None:
    settings = Settings(home=tmp_path / "home")
    limits = settings.sandbox_limits.model_copy(update={"pool_size": 1, "timeout": 20})
    root = settings.workspaces_dir
    workspace = root / "chat"
    manager = SandboxManager(root, mode="bwrap", limits=limits)
    await manager.start()
    try:
        await manager.prepare("chat", workspace)
        (workspace / "data" / "fetched.csv").write_text("a\n1\n")
        session, _ = await manager.session("chat", workspace, owner="o")
        assert (await session.execute("open('outputs/made.txt', 'w').write('x')")).ok
    finally:
        await manager.close()
    assert not _mounted(workspace / "data")  # the service stopped: nothing left
    assert str(tmp_path) not in _mountinfo()

    older = root / "older"  # a workspace from before chats had a filesystem
    for sub, name in (("data", "old.csv"), ("outputs", "old.txt")):
        (older / sub).mkdir(parents=True)
        (older / sub / name).write_text(name)

    manager = SandboxManager(root, mode="bwrap", limits=limits)
    await manager.start()  # a restart: the chat's filesystem comes back
    try:
        for sub, name in (("data", "old.csv"), ("outputs", "old.txt")):
            assert _mounted(older / sub) and (older / sub / name).read_text() == name
        assert _mounted(workspace / "data") and _mounted(workspace / "outputs")
        assert (workspace / "data" / "fetched.csv").read_text() == "a\n1\n"
        assert (workspace / "outputs" / "made.txt").read_text() == "x"
        image = manager.root / ".volumes" / "chat.ext4"
        assert any(str(image) in backing for backing in _loop_backings())
        await manager.discard("chat", workspace)  # the chat is deleted
        assert not image.exists()
        assert not _mounted(workspace / "data")
        assert not _mounted(workspace / "outputs")
        assert str(workspace) not in _mountinfo()
        for _ in range(200):  # the loop device is let go as the last mount goes
            if not any(str(image) in backing for backing in _loop_backings()):
                break
            await asyncio.sleep(0.05)
        assert not any(str(image) in backing for backing in _loop_backings())
    finally:
        await manager.close()


_REFUSED = [
    # (system call, arguments) — each harmless if it were allowed, none may run.
    ("ptrace", (0, 0, 0, 0)),  # PTRACE_TRACEME
    ("keyctl", (0, 0, 0, 0)),
    ("add_key", (0, 0, 0, 0, 0)),
    ("request_key", (0, 0, 0, 0)),
    ("userfaultfd", (0,)),
    ("bpf", (0, 0, 0)),
    ("unshare", (0x10000000,)),  # CLONE_NEWUSER
    ("unshare", (0x00020000,)),  # CLONE_NEWNS
    ("unshare", (0x40000000,)),  # CLONE_NEWNET
    ("setns", (0, 0)),
    ("mount", (0, 0, 0, 0, 0)),
    ("umount2", (0, 0)),
    ("pivot_root", (0, 0)),
    ("init_module", (0, 0, 0)),
    ("finit_module", (-1, 0, 0)),
    ("delete_module", (0, 0)),
    ("kexec_load", (0, 0, 0, 0)),
    ("reboot", (0, 0, 0, 0)),
    ("swapon", (0, 0)),
    ("perf_event_open", (0, 0, -1, -1, 0)),
    ("open_by_handle_at", (-1, 0, 0)),
    ("io_uring_setup", (1, 0)),
    ("process_vm_readv", (1, 0, 0, 0, 0, 0)),
    ("fsopen", (0, 0)),
    ("open_tree", (-1, 0, 0)),
    ("personality", (0x0400000,)),  # READ_IMPLIES_EXEC
]


async def test_each_refused_system_call_fails_with_eperm_and_the_session_lives(
    sandbox: tuple[Session, Path],
) -> None:
    import pyseccomp  # type: ignore[import-untyped]

    session, _ = sandbox
    arch = pyseccomp.system_arch()
    calls = [(name, pyseccomp.resolve_syscall(arch, name), args) for name, args in _REFUSED]
    code = (
        "import ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "libc.syscall.restype = ctypes.c_long\n"
        f"for name, number, args in {calls!r}:\n"
        "    ctypes.set_errno(0)\n"
        "    result = libc.syscall(number, *[ctypes.c_long(a) for a in args])\n"
        "    print(name, result, ctypes.get_errno())\n"
    )
    result = await session.execute(code)
    lines = _out(result).splitlines()
    assert len(lines) == len(_REFUSED), result.parts
    for line in lines:
        _name, value, error = line.split()
        assert (value, error) == ("-1", "1"), line  # EPERM
    # clone3 (flags behind a pointer) answers ENOSYS so that libc falls back to clone.
    number = pyseccomp.resolve_syscall(arch, "clone3")
    probe = await session.execute(
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        f"print(libc.syscall({number}, 0, 0), ctypes.get_errno())"
    )
    assert _out(probe).split() == ["-1", "38"]
    # Threads and processes still work, and the session goes on.
    after = await session.execute(
        "import subprocess, threading\n"
        "t = threading.Thread(target=lambda: None); t.start(); t.join()\n"
        "print(subprocess.run(['echo', '42'], capture_output=True, text=True).stdout.strip())"
    )
    assert _out(after).strip() == "42", after.parts


def test_a_root_identity_is_refused_with_the_reason() -> None:
    problem = isolation_problem(Identity(0, 0), 64, 2 * 1024**3)
    assert problem is not None and "root" in problem


async def test_the_configured_uid_and_gid_are_the_sandboxs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATASOURCES_SANDBOX_UID", "1234567")
    monkeypatch.setenv("DATASOURCES_SANDBOX_GID", "1234568")
    limits = Settings(home=tmp_path / "home").sandbox_limits.model_copy(update={"pool_size": 0})
    manager = SandboxManager(tmp_path / "ws", mode="bwrap", limits=limits)
    await manager.start()
    try:
        workspace = tmp_path / "ws" / "chat"
        session, _ = await manager.session("chat", workspace, owner="o")
        result = await session.execute(
            "import os; open('outputs/f', 'w').write('x'); print(os.getuid())"
        )
        assert result.parts[0].text == "1000\n"  # inside its user namespace
        made = (workspace / "outputs" / "f").stat()
        expected = (1234567, 1234568) if os.geteuid() == 0 else (os.getuid(), os.getgid())
        assert (made.st_uid, made.st_gid) == expected
    finally:
        await manager.close()


async def test_the_kernel_sockets_cannot_be_replaced_from_inside(
    sandbox: tuple[Session, Path],
) -> None:
    session, _ = sandbox
    result = await session.execute(
        "import os\n"
        "socket = [n for n in sorted(os.listdir('/kernel')) if n != 'kernel.json'][0]\n"
        "for attempt in (lambda: os.symlink('/etc/passwd', '/kernel/k-9'),\n"
        "                lambda: os.unlink('/kernel/' + socket),\n"
        "                lambda: os.rename('/kernel/kernel.json', '/kernel/x')):\n"
        "    try:\n"
        "        attempt(); print('CHANGED')\n"
        "    except PermissionError:\n"
        "        print('refused')\n"
    )  # fmt: skip
    assert _out(result).split() == ["refused"] * 3, result.parts
    assert (await session.execute("print(6 * 7)")).parts[0].text == "42\n"


async def test_without_seccomp_bwrap_mode_refuses_code_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The one fake here: this machine has libseccomp, so its absence is simulated.
    def missing() -> bytes:
        raise OSError("libseccomp is not usable: libseccomp.so.2 not found")

    monkeypatch.setattr("datasources.sandbox.runtime.filter_bpf", missing)
    isolation_problem.cache_clear()
    try:
        manager = SandboxManager(
            tmp_path / "ws", mode="bwrap", limits=SandboxLimits(pool_size=1, uid=7654321)
        )
        await manager.start()
        try:
            with pytest.raises(SandboxUnavailableError, match="seccomp"):
                await manager.session("chat", tmp_path / "ws" / "chat", owner="o")
            assert manager._warm == []  # nothing was started without it
        finally:
            await manager.close()
    finally:
        isolation_problem.cache_clear()
