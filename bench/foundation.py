"""Foundation benchmarks: local fetch into a workspace, listing, pooled connector access.

Each case runs in its own process (peak RSS and CPU-seconds are its own), the
contenders of a group interleaved in rotating order. Alternatives, same run:

- fetch: ``shutil.copyfile`` (kernel copy, nothing verified, no fsync) and a hand-written
  read/SHA-256/write loop, with and without fsync; ours both durable and not;
- listing: ``os.walk`` + ``stat`` (builds nothing, does not sort);
- pool: building and connecting a connector per use.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import harness
from bench.harness import Run, fmt, paired, ratio_text, spread, values, verdict

FILE_MB = harness.size("BENCH_FILE_MB", 256, 16)
LIST_FILES = harness.size("BENCH_LIST_FILES", 20000, 2000)
POOL_OPS = harness.size("BENCH_POOL_OPS", 5000, 500)
CHUNK = 4 * 2**20

FETCH = ["ours", "ours_nondurable", "hashed_loop_fsync", "hashed_loop", "copyfile"]
LIST = ["ours", "oswalk"]
POOL = ["registry", "fresh_connector"]

# Durability of each fetch contender, stated in its row.
DURABLE = {
    "ours": "fsync file and folder, atomic rename",
    "ours_nondurable": "no fsync (`Workspace(durable=False)`), atomic rename",
    "hashed_loop_fsync": "fsync file, no rename",
    "hashed_loop": "no fsync",
    "copyfile": "no fsync",
}
LABELS = {
    "ours": "**ours** `fetch_data` (SHA-256, manifest)",
    "ours_nondurable": "**ours** `fetch_data`, `durable=False`",
    "hashed_loop_fsync": "read/SHA-256/write loop + fsync",
    "hashed_loop": "read/SHA-256/write loop",
    "copyfile": "`shutil.copyfile` (no hash)",
}


# -- cases (each in a child process) ------------------------------------------------------------


def case_fetch(which: str, data_dir: str, work: str) -> None:
    src, out = Path(data_dir) / "big.bin", Path(work)
    if which.startswith("ours"):
        from datasources.connectors.local_folder import LocalFolderConnector
        from datasources.workspace import Workspace

        async def run() -> None:
            config = {"root": data_dir, "max_download_bytes": None, "chunk_size": CHUNK}
            async with LocalFolderConnector(config) as connector:
                target = Workspace(out / "ws", durable=which == "ours")
                await connector.fetch_data("big.bin", target)

        asyncio.run(run())
    elif which == "copyfile":
        shutil.copyfile(src, out / "copy.bin")
    else:
        digest = hashlib.sha256()
        with open(src, "rb") as source, open(out / "loop.bin", "wb") as dest:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                dest.write(chunk)
            if which == "hashed_loop_fsync":
                dest.flush()
                os.fsync(dest.fileno())


def case_list(which: str, data_dir: str, work: str) -> int:
    root = Path(data_dir) / "many"
    count = 0
    if which == "ours":
        from datasources.connectors.local_folder import LocalFolderConnector

        async def run() -> int:
            n = 0
            async with LocalFolderConnector({"root": str(root)}) as connector:
                async for _item in connector.iter_items():
                    n += 1
            return n

        count = asyncio.run(run())
    else:
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                os.stat(os.path.join(dirpath, name))
                count += 1
    assert count == LIST_FILES, count
    return count


def case_pool(which: str, data_dir: str, work: str) -> float:
    """Seconds for POOL_OPS uses, after the registry is open and the source borrowed once."""
    from datasources import DataSourceRegistry
    from datasources.connectors.local_folder import LocalFolderConnector

    async def registry() -> float:
        async with DataSourceRegistry() as reg:
            await reg.register_data_source(
                {"name": "b", "type": "local_folder", "config": {"root": data_dir}}
            )
            async with reg.get_connector("b"):
                pass
            start = time.perf_counter()
            for _ in range(POOL_OPS):
                async with reg.get_connector("b") as connector:
                    assert connector.connected
            return time.perf_counter() - start

    async def fresh() -> float:
        start = time.perf_counter()
        for _ in range(POOL_OPS):
            async with LocalFolderConnector({"root": data_dir}, source_id="b") as connector:
                assert connector.connected
        return time.perf_counter() - start

    return asyncio.run(registry() if which == "registry" else fresh())


CASES = {"fetch": case_fetch, "list": case_list, "pool": case_pool}


# -- driver -------------------------------------------------------------------------------------


def _prepare(base: Path) -> Path:
    data = base / "data"
    (data / "many").mkdir(parents=True)
    with open(data / "big.bin", "wb") as fh:
        block = os.urandom(CHUNK)
        for _ in range(max(FILE_MB // 4, 1)):
            fh.write(block)
    for i in range(LIST_FILES):
        folder = data / "many" / f"d{i % 100:03d}"
        folder.mkdir(exist_ok=True)
        (folder / f"f{i:06d}.csv").write_bytes(b"x")
    return data


def _case(group: str, which: str, data: Path) -> Run:
    with tempfile.TemporaryDirectory(dir=harness.SCRATCH) as work:
        return harness.run_child("bench.foundation", group, which, str(data), work)


def run() -> dict[str, Any]:
    harness.SCRATCH.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="foundation-", dir=harness.SCRATCH) as tmp:
        data = _prepare(Path(tmp))
        runs = {
            "fetch": harness.interleave(FETCH, lambda w: _case("fetch", w, data), label="fetch "),
            "list": harness.interleave(LIST, lambda w: _case("list", w, data), label="list "),
            "pool": harness.interleave(POOL, lambda w: _case("pool", w, data), label="pool "),
        }
    return {"config": {"file_mb": FILE_MB, "list_files": LIST_FILES, "pool_ops": POOL_OPS}, **runs}


# -- rendering ----------------------------------------------------------------------------------


def _mbps(mb: float) -> Any:
    return lambda r: mb * 2**20 / 1e6 / r["seconds"]


def _list_rate(n: int) -> Any:
    return lambda r: n / r["seconds"]


def targets(res: dict[str, Any]) -> list[list[str]]:
    n = res["config"]["list_files"]
    rate = _list_rate(n)
    ours, alt = res["list"]["ours"], res["list"]["oswalk"]
    ratios = paired(ours, alt, rate)
    ok = harness.median(ratios)
    return [
        [
            f"iterate {n:,} local files",
            spread(values(ours, rate), 0, "/s"),
            f"`os.walk` + `stat` {spread(values(alt, rate), 0, '/s')}",
            ratio_text(ratios),
            "≥ 0.8x",
            verdict(None if ok is None else ok >= 0.8),
        ]
    ]


def render(res: dict[str, Any]) -> str:
    cfg = res["config"]
    mb, n, ops = cfg["file_mb"], cfg["list_files"], cfg["pool_ops"]
    rate = _mbps(mb)
    fetch = res["fetch"]
    lines = [
        "## Foundation (`bench/foundation.py`)",
        "",
        harness.describe_run(res),
        "",
        f"Fetch a {mb} MiB local file into a workspace. Figures are the median of the runs "
        "with the range (min-max) in brackets; a ratio is taken within each round (same "
        "minute, same machine state) and its median and range shown.",
        "",
        "| contender | durability | MB/s | CPU-s per GiB | peak RSS growth | ours (durable) vs it"
        " | ours (`durable=False`) vs it |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in FETCH:
        r = fetch[name]
        gib = mb / 1024
        lines.append(
            f"| {LABELS[name]} | {DURABLE[name]} | {spread(values(r, rate))} | "
            f"{spread(values(r, 'cpu_s'), 2, scale=1 / gib)} | "
            f"{spread(values(r, 'growth_kib'), 1, 'MiB', 1 / 1024)} | "
            f"{'-' if name == 'ours' else ratio_text(paired(fetch['ours'], r, rate))} | "
            f"{'-' if name == 'ours_nondurable' else ratio_text(paired(fetch['ours_nondurable'], r, rate))} |"  # noqa: E501
        )
    med = {name: harness.median(values(fetch[name], rate)) for name in FETCH}
    fsync_cost = paired(fetch["ours_nondurable"], fetch["ours"], rate)
    loop_ratio = paired(fetch["ours"], fetch["hashed_loop_fsync"], rate)
    lines += [
        "",
        f"Like for like: durable ours against the loop that also hashes and fsyncs "
        f"({ratio_text(loop_ratio)}); `durable=False` against the loop without fsync. "
        f"Dropping the fsync changed our rate by {ratio_text(fsync_cost)} in the same rounds; "
        f"the disk here takes {res['machine']['write_fsync_mb_s']:,.0f} MB/s written and "
        f"fsynced (the machine line). `shutil.copyfile` "
        f"({fmt(med['copyfile'])} MB/s) hashes nothing and syncs nothing: it is the kernel's "
        "copy, shown as the ceiling, not as an alternative that does the same work.",
        "",
    ]
    rate_l = _list_rate(n)
    lst = res["list"]
    list_ratio = paired(lst["ours"], lst["oswalk"], rate_l)
    lines += [
        "| listing | files/s | CPU-s | peak RSS growth | ours vs it |",
        "|---|---|---|---|---|",
        f"| **ours** `iter_items` over {n:,} files in 100 folders | "
        f"{spread(values(lst['ours'], rate_l))} | {spread(values(lst['ours'], 'cpu_s'), 2)} | "
        f"{spread(values(lst['ours'], 'growth_kib'), 1, 'MiB', 1 / 1024)} | - |",
        f"| `os.walk` + `stat` | {spread(values(lst['oswalk'], rate_l))} | "
        f"{spread(values(lst['oswalk'], 'cpu_s'), 2)} | "
        f"{spread(values(lst['oswalk'], 'growth_kib'), 1, 'MiB', 1 / 1024)} | "
        f"{ratio_text(list_ratio)} |",
        "",
        "Each listed file becomes a `DataItem` (etag, timestamp, content type) and each folder "
        "is sorted so listings come in the byte-wise order cursors rely on; `os.walk` builds "
        "nothing and does not sort.",
        "",
    ]
    pool = res["pool"]

    def per_op(r: Run) -> float:
        return float(r["value"]) / int(ops) * 1e6

    borrow, fresh = values(pool["registry"], per_op), values(pool["fresh_connector"], per_op)
    lines += [
        "| connector access | µs per use | ratio |",
        "|---|---|---|",
        f"| borrow from the registry (`registry.get_connector`), {ops:,} times | "
        f"{spread(borrow, 1)} | - |",
        f"| build and connect a `LocalFolderConnector` each time | {spread(fresh, 1)} | "
        f"{ratio_text(paired(pool['fresh_connector'], pool['registry'], per_op))} the cost |",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        harness.child_main(CASES, {"*": ["datasources", "datasources.connectors.local_folder"]})
    else:
        sys.exit("run it as: BENCH=foundation make bench")
