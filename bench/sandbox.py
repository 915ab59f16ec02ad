"""Sandbox benchmark: warm round trip, first result in a new chat, cold start.

In one run, each over RUNS repetitions (p50/p95):

- warm: ``1+1`` in a session that is already running (bubblewrap, ipc sockets);
- new chat: a pre-started session is moved onto a fresh chat workspace and runs ``1+1``
  (the pool is refilled, untimed, between runs);
- cold: a new sandbox and kernel started from nothing, then ``1+1``;
- the reference: a plain ``jupyter_client`` kernel (no sandbox) started and asked ``1+1``.
"""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.foundation import update_section

RUNS = int(os.environ.get("BENCH_SANDBOX_RUNS", "50"))


def _p(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100)[q - 1] if len(samples) > 1 else samples[0]


async def _warm(manager: Any, root: Path) -> list[float]:
    session, _ = await manager.session("warm", root / "warm")
    samples = []
    for _ in range(RUNS + 5):
        start = time.perf_counter()
        result = await session.execute("1+1")
        samples.append((time.perf_counter() - start) * 1000)
        assert result.parts[0].text == "2"
    return samples[5:]


async def _new_chat(manager: Any, root: Path) -> list[float]:
    samples = []
    for i in range(RUNS):
        while len(manager._warm) < manager.limits.pool_size:  # noqa: ASYNC110 - untimed refill
            await asyncio.sleep(0.05)
        start = time.perf_counter()
        session, new = await manager.session(f"chat{i}", root / f"chat{i}")
        result = await session.execute("1+1")
        samples.append((time.perf_counter() - start) * 1000)
        assert new and result.parts[0].text == "2"
        await manager.end(f"chat{i}")
    return samples


async def _cold(root: Path) -> list[float]:
    from datasources.config import SandboxLimits
    from datasources.sandbox.session import Session

    samples = []
    for i in range(RUNS):
        start = time.perf_counter()
        session = Session(root / f"cold{i}", mode="bwrap", limits=SandboxLimits())
        await session.start(warm=False)
        result = await session.execute("1+1")
        samples.append((time.perf_counter() - start) * 1000)
        assert result.parts[0].text == "2"
        await session.close()
    return samples


async def _plain_jupyter() -> list[float]:
    from jupyter_client.manager import AsyncKernelManager

    samples = []
    for _ in range(RUNS):
        start = time.perf_counter()
        manager = AsyncKernelManager(kernel_name="python3")
        await manager.start_kernel()
        client = manager.client()
        client.start_channels()
        await client.wait_for_ready(timeout=60)
        reply = await client.execute_interactive("1+1", timeout=30, output_hook=lambda _m: None)
        samples.append((time.perf_counter() - start) * 1000)
        assert reply["content"]["status"] == "ok"
        client.stop_channels()
        await manager.shutdown_kernel(now=True)
    return samples


async def run() -> dict[str, list[float]]:
    from datasources.config import SandboxLimits
    from datasources.sandbox.manager import SandboxManager

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manager = SandboxManager(root, mode="bwrap", limits=SandboxLimits(pool_size=2))
        manager.require()
        await manager.start()
        try:
            results = {
                "warm": await _warm(manager, root),
                "new": await _new_chat(manager, root),
            }
        finally:
            await manager.close()
        results["cold"] = await _cold(root)
        results["jupyter"] = await _plain_jupyter()
    return results


def main() -> None:
    results = asyncio.run(run())
    labels = {
        "warm": "`1+1` in a warm session (bubblewrap, ipc)",
        "new": "first result in a new chat, pool warm",
        "cold": "cold: new sandbox + kernel, then `1+1`",
        "jupyter": "plain `jupyter_client` kernel start + `1+1` (no sandbox)",
    }
    lines = ["| case | p50 | p95 |", "|---|---|---|"]
    for key in ("warm", "new", "cold", "jupyter"):
        s = results[key]
        lines.append(f"| {labels[key]} | {_p(s, 50):.1f} ms | {_p(s, 95):.1f} ms |")
    table = "\n".join(lines)
    print(table)
    warm_ok = _p(results["warm"], 50) <= 15
    new_ok = _p(results["new"], 50) <= 100
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    update_section(
        "sandbox",
        "## Sandbox (`bench/sandbox.py`)\n\n"
        f"Machine: {machine}; {RUNS} runs each; written {time.strftime('%Y-%m-%d')}.\n\n"
        f"{table}\n\n"
        f"Targets: warm round trip at most 15 ms p50 ({'met' if warm_ok else '**missed**'}); "
        f"first result in a new chat at most 100 ms p50 with the pool warm "
        f"({'met' if new_ok else '**missed**'}). A pre-started session already has pandas, "
        "pyarrow, duckdb and matplotlib imported; giving it to a chat moves the chat's "
        "folders onto the session's bind mounts (two renames each), so nothing restarts. "
        "The cold start pays bubblewrap's namespaces and the interpreter, not the imports "
        "(``start(warm=False)``).\n",
    )


if __name__ == "__main__":
    main()
