"""Foundation benchmarks: local fetch into a workspace, listing, pooled connector access.

Each case runs in its own subprocess so peak RSS is its own. Alternatives measured in
the same run: ``shutil.copyfile`` (kernel copy, no verification) and a hand-written
read/hash/write loop for fetches; ``os.walk`` + ``stat`` for listing; building and
connecting a connector per use for the pool.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FILE_MB = int(os.environ.get("BENCH_FILE_MB", "512"))
LIST_FILES = int(os.environ.get("BENCH_LIST_FILES", "20000"))
POOL_OPS = int(os.environ.get("BENCH_POOL_OPS", "5000"))


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# -- cases (run in a child process) --------------------------------------------------------


def case_fetch_ours(data_dir: Path, work: Path) -> float:
    from datasources.connectors.local_folder import LocalFolderConnector

    async def run() -> None:
        async with LocalFolderConnector(
            {"root": str(data_dir), "max_download_bytes": None, "chunk_size": 4 * 1024 * 1024}
        ) as connector:
            await connector.fetch_data("big.bin", work / "ws")

    start = time.perf_counter()
    asyncio.run(run())
    return time.perf_counter() - start


def case_fetch_copyfile(data_dir: Path, work: Path) -> float:
    start = time.perf_counter()
    shutil.copyfile(data_dir / "big.bin", work / "copy.bin")
    return time.perf_counter() - start


def case_fetch_hashed_loop(data_dir: Path, work: Path) -> float:
    import hashlib

    start = time.perf_counter()
    digest = hashlib.sha256()
    with open(data_dir / "big.bin", "rb") as src, open(work / "loop.bin", "wb") as dst:
        while chunk := src.read(4 * 1024 * 1024):
            digest.update(chunk)
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    return time.perf_counter() - start


def case_list_ours(data_dir: Path, work: Path) -> float:
    from datasources.connectors.local_folder import LocalFolderConnector

    async def run() -> int:
        count = 0
        async with LocalFolderConnector({"root": str(data_dir / "many")}) as connector:
            async for _item in connector.iter_items():
                count += 1
        return count

    start = time.perf_counter()
    count = asyncio.run(run())
    assert count == LIST_FILES, count
    return time.perf_counter() - start


def case_list_oswalk(data_dir: Path, work: Path) -> float:
    start = time.perf_counter()
    count = 0
    for dirpath, _dirs, files in os.walk(data_dir / "many"):
        for name in files:
            os.stat(os.path.join(dirpath, name))
            count += 1
    assert count == LIST_FILES
    return time.perf_counter() - start


def case_pool_registry(data_dir: Path, work: Path) -> float:
    from datasources import DataSourceRegistry

    async def run() -> float:
        async with DataSourceRegistry() as registry:
            await registry.register_data_source(
                {"name": "b", "type": "local_folder", "config": {"root": str(data_dir)}}
            )
            async with registry.get_connector("b"):
                pass
            start = time.perf_counter()
            for _ in range(POOL_OPS):
                async with registry.get_connector("b") as connector:
                    assert connector.connected
            return time.perf_counter() - start

    return asyncio.run(run())


def case_pool_fresh_connector(data_dir: Path, work: Path) -> float:
    from datasources.connectors.local_folder import LocalFolderConnector

    async def run() -> float:
        start = time.perf_counter()
        for _ in range(POOL_OPS):
            async with LocalFolderConnector({"root": str(data_dir)}, source_id="b") as connector:
                assert connector.connected
        return time.perf_counter() - start

    return asyncio.run(run())


CASES = {name[5:]: fn for name, fn in globals().items() if name.startswith("case_")}


def child(case: str, data_dir: str, work: str) -> None:
    import datasources  # noqa: F401 - imports are not part of any case's memory

    before = _rss_kib()
    seconds = CASES[case](Path(data_dir), Path(work))
    print(json.dumps({"seconds": seconds, "rss_growth_kib": max(_peak_kib() - before, 0)}))


# -- driver --------------------------------------------------------------------------------


def run_case(case: str, data_dir: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=data_dir.parent) as work:
        done = subprocess.run(
            [sys.executable, "-m", "bench.foundation", "--child", case, str(data_dir), work],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def best_of(case: str, data_dir: Path, runs: int = 3) -> dict[str, Any]:
    results = [run_case(case, data_dir) for _ in range(runs)]
    return min(results, key=lambda r: r["seconds"])


def prepare(base: Path) -> Path:
    data = base / "data"
    (data / "many").mkdir(parents=True)
    with open(data / "big.bin", "wb") as fh:
        block = os.urandom(4 * 1024 * 1024)
        for _ in range(FILE_MB // 4):
            fh.write(block)
    for i in range(LIST_FILES):
        folder = data / "many" / f"d{i % 100:03d}"
        folder.mkdir(exist_ok=True)
        (folder / f"f{i:06d}.csv").write_bytes(b"x")
    return data


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="ds-bench-") as tmp:
        data = prepare(Path(tmp))
        mb = FILE_MB
        rows: list[str] = []
        fetch = {c: best_of(c, data) for c in ("fetch_ours", "fetch_copyfile", "fetch_hashed_loop")}
        listing = {c: best_of(c, data) for c in ("list_ours", "list_oswalk")}
        pool = {c: best_of(c, data) for c in ("pool_registry", "pool_fresh_connector")}

    def mbps(r: dict[str, Any]) -> float:
        return float(mb / r["seconds"])

    best_alt = max(mbps(fetch["fetch_copyfile"]), mbps(fetch["fetch_hashed_loop"]))
    rows.append("| case | ours | alternative | ratio | peak RSS growth (ours) |")
    rows.append("|---|---|---|---|---|")
    for alt in ("fetch_copyfile", "fetch_hashed_loop"):
        rows.append(
            f"| fetch {mb} MiB local file into a workspace vs `{alt[6:]}` | "
            f"{mbps(fetch['fetch_ours']):.0f} MB/s | {mbps(fetch[alt]):.0f} MB/s | "
            f"{mbps(fetch['fetch_ours']) / mbps(fetch[alt]):.2f}x | "
            f"{fetch['fetch_ours']['rss_growth_kib'] / 1024:.1f} MiB |"
        )
    ours_list = LIST_FILES / listing["list_ours"]["seconds"]
    alt_list = LIST_FILES / listing["list_oswalk"]["seconds"]
    rows.append(
        f"| iterate {LIST_FILES} files (`iter_items`) vs `os.walk`+`stat` | "
        f"{ours_list:,.0f} files/s | "
        f"{alt_list:,.0f} files/s | {ours_list / alt_list:.2f}x | "
        f"{listing['list_ours']['rss_growth_kib'] / 1024:.1f} MiB |"
    )
    pooled = pool["pool_registry"]["seconds"] / POOL_OPS * 1e6
    fresh = pool["pool_fresh_connector"]["seconds"] / POOL_OPS * 1e6
    rows.append(
        f"| borrow a connector (`registry.get_connector`) vs build+connect one | {pooled:.0f} µs | "
        f"{fresh:.0f} µs | {fresh / pooled:.2f}x faster | - |"
    )
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    table = "\n".join(rows)
    print(table)
    update_section(
        "foundation",
        f"## Foundation (`bench/foundation.py`)\n\n"
        f"Machine: {machine}; best of 3 runs each, every case in its own process; "
        f"written {time.strftime('%Y-%m-%d')}.\n\n{table}\n\n"
        f"Best alternative for fetch: {best_alt:.0f} MB/s. `shutil.copyfile` uses the kernel's "
        "copy and verifies nothing and does not fsync; our fetch also hashes (SHA-256), "
        "fsyncs, renames atomically and records provenance, so it is bounded by the disk — "
        "the fair "
        "comparison is the hand-written read/hash/write loop.\n\n"
        "Listing is slower than a bare `os.walk` + `stat`: each file becomes a `DataItem` "
        "(etag, timestamp, content type, about 8 µs) and each folder is sorted so listings "
        "come in the byte-wise order cursors rely on; `os.walk` builds nothing and does not "
        "sort. The pool row shows why sources are borrowed rather than rebuilt.\n",
    )


def update_section(name: str, body: str) -> None:
    """Replace (or append) one benchmark's section of docs/performance.md."""
    doc = ROOT / "docs" / "performance.md"
    text = doc.read_text() if doc.exists() else "# Performance\n"
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    section = f"{start}\n{body.rstrip()}\n{end}"
    if start in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    doc.write_text(text)
    print(f"wrote {doc} ({name})")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        main()
