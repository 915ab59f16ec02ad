"""The system-call filter of the sandbox: an allow-list compiled to BPF with libseccomp.

Anything not named below fails with ``EPERM`` (a new system call added to the kernel
tomorrow is refused too: the filter is an allow-list, not a list of known-bad calls). It
is at least as strict as Docker's default profile for a container without capabilities,
and stricter in places: no ``ptrace`` or ``process_vm_*`` (a kernel's memory is the
session's own business), no ``io_uring`` (its operations bypass this filter), no
``userfaultfd``, ``keyctl``, ``bpf``, ``perf_event_open``, mount or namespace calls, no
``mknod``, and no file may be given a set-user-ID or set-group-ID bit (``chmod`` and
``open(O_CREAT)`` with those bits are refused), so the sandbox cannot leave a set-id
program on the host whoever runs it there.

Bubblewrap loads the program (``--seccomp FD``) right before it executes the kernel, so
the filter holds for the kernel and everything it starts, and cannot be removed.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import stat
import tempfile

__all__ = ["ALLOWED", "filter_bpf"]

# Grouped by what they are for; names libseccomp does not know on this architecture
# (32-bit variants, other ABIs) are skipped when the filter is built.
ALLOWED: tuple[str, ...] = (
    # memory
    "brk", "mmap", "mmap2", "munmap", "mremap", "mprotect", "madvise", "mincore", "mlock",
    "mlock2", "munlock", "mlockall", "munlockall", "msync", "membarrier", "pkey_alloc",
    "pkey_free", "pkey_mprotect", "remap_file_pages",
    # files and folders (open/openat/creat/chmod: see the argument rules below)
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "preadv2",
    "pwritev", "pwritev2", "lseek", "_llseek", "close", "close_range", "dup", "dup2", "dup3",
    "fcntl", "fcntl64", "flock", "fsync", "fdatasync", "sync", "syncfs", "sync_file_range",
    "fadvise64", "fadvise64_64", "fallocate", "ftruncate", "ftruncate64", "truncate",
    "truncate64", "stat", "stat64", "lstat", "lstat64", "fstat", "fstat64", "newfstatat",
    "fstatat64", "statx", "statfs", "statfs64", "fstatfs", "fstatfs64", "access",
    "faccessat", "faccessat2", "getdents", "getdents64", "getcwd", "chdir", "fchdir",
    "mkdir", "mkdirat", "rmdir", "unlink", "unlinkat", "rename", "renameat", "renameat2",
    "link", "linkat", "symlink", "symlinkat", "readlink", "readlinkat", "chown", "chown32",
    "fchown", "fchown32", "fchownat", "lchown", "lchown32", "umask", "utime", "utimes",
    "utimensat", "utimensat_time64", "futimesat", "getxattr", "lgetxattr", "fgetxattr",
    "listxattr", "llistxattr", "flistxattr", "setxattr", "lsetxattr", "fsetxattr",
    "removexattr", "lremovexattr", "fremovexattr", "copy_file_range", "sendfile",
    "sendfile64", "splice", "tee", "vmsplice", "readahead", "inotify_init", "inotify_init1",
    "inotify_add_watch", "inotify_rm_watch", "memfd_create", "pipe", "pipe2",
    "io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents", "io_pgetevents",
    # processes and threads (clone: see below; clone3 answers ENOSYS so libc falls back)
    "fork", "vfork", "execve", "execveat", "exit", "exit_group", "wait4", "waitid",
    "waitpid", "kill", "tkill", "tgkill", "getpid", "getppid", "gettid", "getpgid",
    "getpgrp", "setpgid", "getsid", "setsid", "set_tid_address", "set_robust_list",
    "get_robust_list", "rseq", "arch_prctl", "prctl", "getpriority", "setpriority",
    "sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getparam",
    "sched_setparam", "sched_getscheduler", "sched_setscheduler", "sched_getattr",
    "sched_setattr", "sched_get_priority_max", "sched_get_priority_min",
    "sched_rr_get_interval", "getcpu", "getrlimit", "ugetrlimit", "setrlimit", "prlimit64",
    "getrusage", "times", "capget", "pidfd_open", "pidfd_send_signal", "ioprio_get",
    "ioprio_set", "seccomp",
    # identity (inside the user namespace: the sandbox's own uids only)
    "getuid", "getuid32", "geteuid", "geteuid32", "getgid", "getgid32", "getegid",
    "getegid32", "getresuid", "getresuid32", "getresgid", "getresgid32", "getgroups",
    "getgroups32", "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid",
    "setfsuid", "setfsgid", "setgroups", "capset",
    # signals and time
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigsuspend",
    "rt_sigtimedwait", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "sigaltstack", "sigreturn",
    "signalfd", "signalfd4", "pause", "alarm", "nanosleep", "clock_nanosleep",
    "clock_gettime", "clock_getres", "gettimeofday", "time", "getitimer", "setitimer",
    "timer_create", "timer_settime", "timer_gettime", "timer_getoverrun", "timer_delete",
    "timerfd_create", "timerfd_settime", "timerfd_gettime", "restart_syscall",
    # waiting on descriptors, futexes
    "futex", "futex_waitv", "poll", "ppoll", "select", "_newselect", "pselect6",
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait",
    "epoll_pwait2", "eventfd", "eventfd2",
    # sockets (the network namespace is empty: Unix sockets to the service only)
    "socketpair", "bind", "listen", "accept", "accept4", "connect", "getsockname",
    "getpeername", "sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg",
    "shutdown", "setsockopt", "getsockopt",
    # System V IPC and message queues (private IPC namespace)
    "shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semtimedop", "semctl",
    "msgget", "msgsnd", "msgrcv", "msgctl", "mq_open", "mq_unlink", "mq_timedsend",
    "mq_timedreceive", "mq_notify", "mq_getsetattr",
    # information
    "uname", "sysinfo", "getrandom", "ioctl",
)  # fmt: skip

_SET_ID = stat.S_ISUID | stat.S_ISGID
_O_CREATE = os.O_CREAT | 0o20000000  # O_CREAT, or __O_TMPFILE (O_TMPFILE without O_DIRECTORY)
# clone flags that make a new namespace (CLONE_NEWNS … CLONE_NEWCGROUP, CLONE_NEWTIME).
_NEW_NAMESPACES = 0x7E020080


@functools.cache
def filter_bpf() -> bytes:
    """The compiled filter (cBPF) for this machine's architecture.

    Raises:
        OSError: libseccomp (libseccomp.so.2) or its Python binding is missing, or the
            filter cannot be built here.
    """
    try:
        import pyseccomp as sc  # type: ignore[import-untyped]
    except (ImportError, OSError) as exc:  # the binding loads libseccomp.so.2 on import
        raise OSError(f"libseccomp is not usable: {exc}") from None
    refuse = sc.ERRNO(errno.EPERM)
    flt = sc.SyscallFilter(defaction=refuse)
    for name in ALLOWED:
        _allow(flt, sc, name)
    # No set-id bits on any file the sandbox makes or changes.
    for name, mode_arg in (("chmod", 1), ("fchmod", 1), ("fchmodat", 2), ("fchmodat2", 2)):
        _allow(flt, sc, name, sc.Arg(mode_arg, sc.MASKED_EQ, _SET_ID, 0))
    for name, flags_arg, mode_arg in (("open", 1, 2), ("openat", 2, 3)):
        # Without O_CREAT the mode argument is not used (and may hold anything).
        _allow(flt, sc, name, sc.Arg(flags_arg, sc.MASKED_EQ, _O_CREATE, 0))
        _allow(flt, sc, name, sc.Arg(mode_arg, sc.MASKED_EQ, _SET_ID, 0))
    _allow(flt, sc, "creat", sc.Arg(1, sc.MASKED_EQ, _SET_ID, 0))
    # openat2's mode is behind a pointer the filter cannot read: ENOSYS makes callers
    # fall back to openat, which is checked above.
    _rule(flt, sc, sc.ERRNO(errno.ENOSYS), "openat2")
    # Threads and processes, but never a new namespace.
    _allow(flt, sc, "clone", sc.Arg(0, sc.MASKED_EQ, _NEW_NAMESPACES, 0))
    _rule(flt, sc, sc.ERRNO(errno.ENOSYS), "clone3")  # flags behind a pointer, as above
    # Sockets of every family but AF_VSOCK (40), which could reach the host's hypervisor.
    _allow(flt, sc, "socket", sc.Arg(0, sc.NE, 40))
    # personality(): only the values programs query with, not READ_IMPLIES_EXEC & co.
    for persona in (0, 8, 0x20000, 0x20008, 0xFFFFFFFF):
        _allow(flt, sc, "personality", sc.Arg(0, sc.EQ, persona))
    with tempfile.TemporaryFile() as out:
        flt.export_bpf(out)
        out.seek(0)
        return out.read()


def _allow(flt: object, sc: object, name: str, *args: object) -> None:
    _rule(flt, sc, sc.ALLOW, name, *args)  # type: ignore[attr-defined]


def _rule(flt: object, sc: object, action: object, name: str, *args: object) -> None:
    # A name this architecture does not have (e.g. a 32-bit variant): nothing to allow.
    with contextlib.suppress(RuntimeError, ValueError, OSError):
        flt.add_rule(action, name, *args)  # type: ignore[attr-defined]
