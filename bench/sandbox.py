"""Sandbox benchmark: warm round trip, first result in a new chat, cold start.

Four contenders, interleaved in rotating order over the rounds, SAMPLES each per round
(p50/p95 over all samples; the spread of the per-round medians beside them):

- warm: ``1+1`` in a session that is already running (bubblewrap, ipc sockets);
- new chat: a pre-started session is moved onto a fresh chat workspace and runs ``1+1``
  (the pool is refilled, untimed, before each sample and before the next contender);
- cold: a new sandbox and kernel started from nothing, then ``1+1``;
- the reference: a plain ``jupyter_client`` kernel (no sandbox) started and asked ``1+1``.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import harness
from bench.harness import percentile, spread

SAMPLES = harness.size("BENCH_SANDBOX_SAMPLES", 6, 3)
CONTENDERS = ["warm", "new", "cold", "jupyter"]


async def _refilled(manager: Any) -> None:
    """Wait, untimed, until the manager's pool of pre-started sessions is full again."""
    while len(manager._warm) < manager.limits.pool_size:  # noqa: ASYNC110 - untimed refill
        await asyncio.sleep(0.05)


class _Cases:
    def __init__(self, manager: Any, root: Path) -> None:
        self.manager, self.root = manager, root
        self.session: Any = None
        self.count = 0

    async def warm(self) -> float:
        if self.session is None:
            self.session, _ = await self.manager.session("warm", self.root / "warm")
            for _ in range(5):
                await self.session.execute("1+1")
        start = time.perf_counter()
        result = await self.session.execute("1+1")
        elapsed = time.perf_counter() - start
        assert result.parts[0].text == "2"
        return elapsed

    async def new(self) -> float:
        await _refilled(self.manager)
        self.count += 1
        key = f"chat{self.count}"
        start = time.perf_counter()
        session, new = await self.manager.session(key, self.root / key)
        result = await session.execute("1+1")
        elapsed = time.perf_counter() - start
        assert new and result.parts[0].text == "2"
        await self.manager.end(key)
        return elapsed

    async def cold(self) -> float:
        from datasources.config import SandboxLimits
        from datasources.sandbox.session import Session

        self.count += 1
        start = time.perf_counter()
        session = Session(self.root / f"cold{self.count}", mode="bwrap", limits=SandboxLimits())
        await session.start(warm=False)
        result = await session.execute("1+1")
        elapsed = time.perf_counter() - start
        assert result.parts[0].text == "2"
        await session.close()
        return elapsed

    async def jupyter(self) -> float:
        from jupyter_client.manager import AsyncKernelManager

        start = time.perf_counter()
        kernels = AsyncKernelManager(kernel_name="python3")
        await kernels.start_kernel()
        client = kernels.client()
        client.start_channels()
        await client.wait_for_ready(timeout=60)
        reply = await client.execute_interactive("1+1", timeout=30, output_hook=lambda _m: None)
        elapsed = time.perf_counter() - start
        assert reply["content"]["status"] == "ok"
        client.stop_channels()
        await kernels.shutdown_kernel(now=True)
        return elapsed


async def _run() -> dict[str, Any]:
    from datasources.config import SandboxLimits
    from datasources.sandbox.manager import SandboxManager

    samples: dict[str, list[list[float]]] = {name: [] for name in CONTENDERS}
    with tempfile.TemporaryDirectory(dir=harness.SCRATCH.parent) as tmp:
        root = Path(tmp)
        manager = SandboxManager(root, mode="bwrap", limits=SandboxLimits(pool_size=2))
        manager.require()
        await manager.start()
        cases = _Cases(manager, root)
        try:
            for r, name in harness.rotations(CONTENDERS):
                await _refilled(manager)
                case = getattr(cases, name)
                batch = [await case() * 1000 for _ in range(SAMPLES)]
                samples[name].append(batch)
                print(f"  {name} #{r}: median {statistics.median(batch):.1f} ms", flush=True)
        finally:
            await manager.close()
    return {"config": {"samples": SAMPLES}, "samples": samples}


def run() -> dict[str, Any]:
    return asyncio.run(_run())


LABELS = {
    "warm": "`1+1` in a warm session (bubblewrap, ipc)",
    "new": "first result in a new chat, pool warm",
    "cold": "cold: new sandbox + kernel, then `1+1`",
    "jupyter": "plain `jupyter_client` kernel start + `1+1` (no sandbox)",
}


def render(res: dict[str, Any]) -> str:
    samples: dict[str, list[list[float]]] = res["samples"]
    lines = [
        "## Sandbox (`bench/sandbox.py`)",
        "",
        harness.describe_run(res),
        "",
        f"{res['config']['samples']} samples per contender per round. p50 and p95 are over all "
        "samples of a contender; the last column is the spread of its per-round medians.",
        "",
        "| case | p50 | p95 | per-round medians |",
        "|---|---|---|---|",
    ]
    p50: dict[str, float] = {}
    for name in CONTENDERS:
        every = sorted(x for batch in samples[name] for x in batch)
        p50[name] = percentile(every, 50)
        medians = [statistics.median(batch) for batch in samples[name] if batch]
        lines.append(
            f"| {LABELS[name]} | {p50[name]:.1f} ms | {percentile(every, 95):.1f} ms | "
            f"{spread(medians, 1, 'ms')} |"
        )
    cold_vs = p50["cold"] / p50["jupyter"] if p50["jupyter"] else float("nan")
    lines += [
        "",
        f"Targets: warm round trip at most 15 ms p50 ({harness.verdict(p50['warm'] <= 15)}); "
        "first result in a new chat at most 100 ms p50 with the pool warm "
        f"({harness.verdict(p50['new'] <= 100)}). A pre-started session already has pandas, "
        "pyarrow, duckdb and matplotlib imported; giving it to a chat moves the chat's "
        "folders onto the session's bind mounts, so nothing restarts. The cold start "
        "(``start(warm=False)``: bubblewrap's namespaces and the interpreter, not the "
        f"imports) took {cold_vs:.2f}x the time of a plain `jupyter_client` kernel at p50.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit("run it as: BENCH=sandbox make bench")
