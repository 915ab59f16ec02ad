"""What every benchmark shares: rotation, child processes, CPU and memory, statistics, results.

- Contenders run interleaved in rotating order (``ABC``, ``BCA``, ``CAB``, …), at least
  five rounds in a full run, so a slow minute on this shared machine lands on every
  contender rather than on one.
- A case that moves data runs in a child process (:func:`run_child`): its peak RSS is
  its own (the high-water mark is reset after imports, so neither imports nor an
  earlier case can hide growth) and its CPU-seconds are its own (all threads, plus any
  process it waited for).
- CPU of a server (PostgreSQL backends, Azurite, uvicorn) is read from ``/proc`` by
  :class:`ProcCpu`; where ``/proc`` cannot see the server the figure is left out.
- Results go to ``bench/results/<bench>.json`` (or ``.cache/bench-quick/`` with
  ``BENCH_QUICK=1``); ``docs/performance.md`` is rendered from those files only.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
QUICK = os.environ.get("BENCH_QUICK", "").lower() not in ("", "0", "false", "no")
RUNS = int(os.environ.get("BENCH_RUNS", "2" if QUICK else "5"))
RESULTS = ROOT / ".cache" / "bench-quick" if QUICK else ROOT / "bench" / "results"
DOC = RESULTS / "performance.md" if QUICK else ROOT / "docs" / "performance.md"
SCRATCH = ROOT / ".cache" / "bench-scratch"  # on the disk the workspaces use, not a tmpfs

Run = dict[str, Any]


def sized(name: str, full: str, quick: str) -> list[int]:
    """A list of sizes from the environment, or this mode's default."""
    return [int(x) for x in os.environ.get(name, quick if QUICK else full).split(",") if x]


def size(name: str, full: int, quick: int) -> int:
    return int(os.environ.get(name, str(quick if QUICK else full)))


# -- rotation ---------------------------------------------------------------------------------


def rotations(names: Sequence[str], rounds: int = 0) -> Iterator[tuple[int, str]]:
    """``(round, name)`` for every contender in every round, the order rotating by one."""
    for r in range(rounds or RUNS):
        k = r % len(names)
        for name in [*names[k:], *names[:k]]:
            yield r, name


def interleave(
    names: Sequence[str], measure: Callable[[str], Run], rounds: int = 0, label: str = ""
) -> dict[str, list[Run]]:
    """Run ``measure(name)`` for every contender in rotating order; the runs by contender."""
    runs: dict[str, list[Run]] = {name: [] for name in names}
    for r, name in rotations(names, rounds):
        result = measure(name)
        result["round"] = r
        runs[name].append(result)
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}
        print(f"  {label}{name} #{r}: {shown}", flush=True)
    return runs


# -- statistics -------------------------------------------------------------------------------


def values(runs: Sequence[Run], key: str | Callable[[Run], float | None]) -> list[float]:
    """One figure per run (``key`` a field or a function); failed runs are left out."""
    out: list[float] = []
    for run in runs:
        if "error" in run:
            continue
        v = key(run) if callable(key) else run.get(key)
        if v is not None:
            out.append(float(v))
    return out


def median(xs: Sequence[float]) -> float | None:
    return statistics.median(xs) if xs else None


def paired(
    a: Sequence[Run], b: Sequence[Run], metric: Callable[[Run], float | None]
) -> list[float]:
    """``metric(a) / metric(b)`` for each round both ran in: a ratio measured side by side."""
    by_round = {run["round"]: run for run in b if "error" not in run}
    out = []
    for run in a:
        other = by_round.get(run.get("round", -1))
        if other is None or "error" in run:
            continue
        x, y = metric(run), metric(other)
        if x is not None and y:
            out.append(x / y)
    return out


def percentile(sorted_samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0 to 100) of already sorted samples, nearest rank."""
    if not sorted_samples:
        return float("nan")
    index = min(len(sorted_samples) - 1, max(0, round(q / 100 * len(sorted_samples) + 0.5) - 1))
    return sorted_samples[index]


def fmt(x: float | None, digits: int = 0, unit: str = "") -> str:
    if x is None:
        return "-"
    text = f"{x:,.{digits}f}"
    return f"{text} {unit}".rstrip() if unit else text


def spread(xs: Sequence[float], digits: int = 0, unit: str = "", scale: float = 1.0) -> str:
    """``median (min-max)`` of per-run figures, as every table here shows them."""
    if not xs:
        return "failed"
    m, lo, hi = statistics.median(xs) * scale, min(xs) * scale, max(xs) * scale
    if len(xs) == 1:
        return fmt(m, digits, unit)
    u = f" {unit}" if unit else ""
    return f"{m:,.{digits}f}{u} ({lo:,.{digits}f}\u2013{hi:,.{digits}f})"


def ratio_text(xs: Sequence[float], digits: int = 2) -> str:
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}x"
    return f"{statistics.median(xs):.{digits}f}x ({min(xs):.{digits}f}\u2013{max(xs):.{digits}f})"


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "**missed**")


def first_error(runs: Sequence[Run]) -> str | None:
    errors = [r["error"] for r in runs if "error" in r]
    return errors[0] if errors else None


# -- children: one process per case -----------------------------------------------------------


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (Linux ≥ 4.0); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def timed(fn: Callable[[], Any]) -> Run:
    """Run ``fn`` once in this (child) process; its time, CPU-seconds and memory with it."""
    import resource

    reset = reset_peak_rss()
    base = _status_kib("VmRSS")
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0, start = time.process_time(), time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak = _status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "seconds": seconds,
        "cpu_s": cpu + (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime),
        "peak_rss_kib": peak,
        "base_rss_kib": base,
        "growth_kib": max(peak - base, 0),
        "value": value,
    }


def child_main(
    cases: Mapping[str, Callable[..., Any]], imports: Mapping[str, Sequence[str]] | None = None
) -> None:
    """``python -m bench.x --child CASE ARGS…``: import, then time one case; JSON on stdout.

    ``imports[case]`` (or ``imports["*"]``) are imported first: a service pays for them
    once, so they are outside the case's time, and its peak RSS counts from after them.
    """
    import importlib

    case, args = sys.argv[2], sys.argv[3:]
    for module in (imports or {}).get(case, (imports or {}).get("*", ())):
        importlib.import_module(module)
    result = timed(lambda: cases[case](*args))
    print(json.dumps(result), flush=True)


def run_child(module: str, case: str, *args: str, timeout: float = 1800) -> Run:
    """Run one case of ``module`` in a fresh interpreter; its JSON, or ``{"error": …}``."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", module, "--child", case, *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    out = done.stdout.strip().splitlines()
    try:
        result: Run = json.loads(out[-1]) if out else {}
    except json.JSONDecodeError:
        result = {}
    if "seconds" not in result:
        lines = done.stderr.strip().splitlines()
        return {"error": lines[-1][:200] if lines else f"exit status {done.returncode}"}
    if done.returncode != 0:  # measured and reported, then failed on the way out: noted
        result["exit_status"] = done.returncode
    return result


# -- CPU of other processes (servers), from /proc -----------------------------------------------


def proc_cpu_seconds(pid: int) -> float | None:
    """CPU-seconds a process has used so far, all its threads (ns resolution where possible)."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def pids_matching(match: Callable[[str], bool]) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if match(cmdline):
            pids.append(int(entry.name))
    return pids


class ProcCpu:
    """CPU-seconds used by the processes ``match`` picks (by command line) while it is open.

    A background thread samples every ``interval`` seconds, so processes that start and
    exit inside the window (a PostgreSQL backend per connection) count too, less at most
    their last ``interval``. Processes already running count from when it opened. With
    ``interval=None`` only both ends are read (no thread to disturb a timing).
    """

    def __init__(self, match: Callable[[str], bool], interval: float | None = 0.05) -> None:
        self.match, self.interval = match, interval
        self._base: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.seconds: float | None = None

    def _sample(self, first: bool = False) -> None:
        for pid in pids_matching(self.match):
            cpu = proc_cpu_seconds(pid)
            if cpu is None:
                continue
            if first:
                self._base[pid] = cpu
            self._last[pid] = cpu

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> ProcCpu:
        self._sample(first=True)
        if self.interval is not None:  # None: long-lived processes, read at both ends only
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._sample()
        if self._last:
            self.seconds = sum(cpu - self._base.get(pid, 0.0) for pid, cpu in self._last.items())


def postgres_backends(database: str) -> Callable[[str], bool]:
    """Match the server processes serving ``database`` (their title names it)."""
    return lambda cmdline: cmdline.startswith("postgres:") and f" {database} " in cmdline


def server_visible(match: Callable[[str], bool]) -> bool:
    return bool(pids_matching(match))


# -- the machine --------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _fs_type(path: Path) -> str:
    best, kind = "", "?"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mount = parts[1]
            if str(path).startswith(mount) and len(mount) > len(best):
                best, kind = mount, parts[2]
    except OSError:
        pass
    return kind


def disk_probe(folder: Path) -> dict[str, float]:
    """fsyncs/s of 4 KiB writes, and MB/s of a sequential write ended by fsync (as ``dd``)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "fsync-probe"
    count, deadline = 0, time.perf_counter() + (0.3 if QUICK else 1.0)
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while time.perf_counter() < deadline:
            os.pwrite(fd, b"x" * 4096, 0)
            os.fsync(fd)
            count += 1
        fsyncs = count / (time.perf_counter() - start)
        mib = 16 if QUICK else 256
        block = os.urandom(4 * 2**20)
        os.ftruncate(fd, 0)
        start = time.perf_counter()
        for _ in range(mib // 4):
            os.write(fd, block)
        os.fsync(fd)
        write_mbps = mib * 2**20 / 1e6 / (time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()
    return {"fsyncs_per_s": fsyncs, "write_fsync_mb_s": write_mbps}


def machine() -> dict[str, Any]:
    try:
        mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        mem = 0.0
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "memory_gib": round(mem, 1),
        "scratch_fs": _fs_type(SCRATCH),
        **disk_probe(SCRATCH),
    }


def _cpu_times() -> tuple[float, float]:
    fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def busy_cores(seconds: float = 0.0) -> float:
    """How many cores other work kept busy over ``seconds`` while this process slept."""
    seconds = seconds or (0.3 if QUICK else 2.0)
    busy0, total0 = _cpu_times()
    time.sleep(seconds)
    busy1, total1 = _cpu_times()
    return (busy1 - busy0) / max(total1 - total0, 1e-9) * (os.cpu_count() or 1)


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def describe_machine(m: dict[str, Any]) -> str:
    return (
        f"{m['cores']} cores ({m['cpu']}), {m['memory_gib']:.0f} GiB RAM, Linux {m['kernel']}, "
        f"Python {m['python']}; disk under the scratch folder ({m['scratch_fs']}): "
        f"{m['fsyncs_per_s']:,.0f} fsyncs/s of 4 KiB, {m['write_fsync_mb_s']:,.0f} MB/s "
        "sequential write ended by fsync"
    )


def describe_run(res: dict[str, Any]) -> str:
    """The line under every section's title: when, what, where, and how busy it was."""
    before, after = res.get("busy_before"), res.get("busy_after")
    if before is None or after is None:
        busy = ""
    else:
        shared = max(before, after) >= 0.25
        busy = (
            f" Other work on the machine kept {before:.1f} cores busy just before it started "
            f"and {after:.1f} just after it ended"
            f"{': the machine was shared, so figures are noisier' if shared else ''}."
        )
    return (
        f"Measured {res['date']} on commit `{res['commit']}`"
        f"{' (with uncommitted changes)' if res.get('dirty') else ''}, "
        f"in {res['duration_s'] / 60:.1f} min; {res['rounds']} rounds, contenders in "
        f"rotating order.{busy} Machine: {describe_machine(res['machine'])}."
    )


# -- results ----------------------------------------------------------------------------------


def save(name: str, data: dict[str, Any], started: float, info: dict[str, Any]) -> Path:
    """Write one bench's results, with when, where and on what code they were measured."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {
        "bench": name,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--", "src", "bench", ":!bench/results")),
        "quick": QUICK,
        "rounds": RUNS,
        "duration_s": time.time() - started,
        **info,
        **data,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    return path


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data
