"""HTTP service benchmark: the authenticated listing against bare FastAPI apps.

One uvicorn process per server (same uvicorn, uvloop and httptools for all), all started
once and loaded in turn, in rotating order; the load generator (aiohttp, keep-alive, N
concurrent connections) is a separate process per run. Contenders:

- ours: ``GET /api/v1/datasources`` with a Bearer key, 50 sources in the SQLite store
  (request-id and body-limit middleware, key check, rate limiter, the owner-scoped
  listing served from its cache of pre-encoded JSON documents, the JSON access log);
- bare, cached: a FastAPI app whose one route returns the very bytes ours returns,
  pre-encoded once (``Response(body)``), no auth: the ratio is our per-request overhead;
- bare, re-serialising: the same document as a dict through ``JSONResponse`` on every
  request (what the previous version of this bench compared with);
- ours ``GET /healthz`` (middleware and routing only).

Per run: requests/s, p50 and p99 latency, errors, the server's CPU per request and its
peak RSS (its high-water mark reset before each run), all from the same run.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import harness
from bench.harness import Run, paired, percentile, ratio_text, spread, values, verdict

CONNECTIONS = harness.size("BENCH_API_CONNECTIONS", 64, 32)
SECONDS = float(os.environ.get("BENCH_API_SECONDS", "1" if harness.QUICK else "4"))
WARM_SECONDS = 0.5 if harness.QUICK else 1.0
SOURCES = 50
CONTENDERS = ["ours", "bare_cached", "bare_json", "health"]
LABELS = {
    "ours": f"**ours** authenticated `GET /api/v1/datasources` ({SOURCES} sources)",
    "bare_cached": "bare FastAPI, the same bytes pre-encoded, no auth",
    "bare_json": "bare FastAPI, the same document re-serialised per request, no auth",
    "health": "ours `GET /healthz`",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the apps (imported by uvicorn in the server processes) -------------------------------------


def ours() -> Any:
    """``create_app`` on the prepared home (uvicorn --factory), access log on as in ``serve``."""
    import logging

    from datasources.api import create_app
    from datasources.config import Settings

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("datasources.access").setLevel(logging.INFO)
    return create_app(Settings())


def bare() -> Any:
    """A FastAPI app returning the same document, cached or not (uvicorn --factory)."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response

    raw = Path(os.environ["BENCH_API_BODY"]).read_bytes()
    document = json.loads(raw)
    app = FastAPI()

    if os.environ.get("BENCH_API_CACHED") == "1":

        @app.get("/api/v1/datasources")
        async def cached() -> Response:
            return Response(raw, media_type="application/json")

    else:

        @app.get("/api/v1/datasources")
        async def serialised() -> JSONResponse:
            return JSONResponse(document)

    return app


# -- set-up -------------------------------------------------------------------------------------


async def _prepare(home: Path) -> str:
    from datasources.config import Settings
    from datasources.keys import ApiKeys
    from datasources.registry import DataSourceRegistry

    folder = home / "data"
    folder.mkdir(parents=True, exist_ok=True)
    settings = Settings(home=home)
    async with DataSourceRegistry.from_settings(settings) as registry:
        key = await ApiKeys(registry.store).create("bench")
        scoped = registry.scoped(key.owner)
        for i in range(SOURCES):
            await scoped.register_data_source(
                {
                    "name": f"source-{i:02d}",
                    "type": "local_folder",
                    "config": {"root": str(folder)},
                    "description": "benchmark source",
                    "tags": ["bench"],
                }
            )
    return key.key


def _serve(factory: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "uvicorn", factory, "--factory", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--no-access-log", "--log-level", "warning"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{factory} did not start")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- the load generator (its own process) --------------------------------------------------------


async def _load(url: str, headers: dict[str, str]) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    errors = total = 0
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker(deadline: float, record: bool) -> None:
            nonlocal errors, total
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                async with session.get(url) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                total += 1
                if record:
                    latencies.append(time.perf_counter() - start)

        warm = time.perf_counter() + WARM_SECONDS
        await asyncio.gather(*(worker(warm, False) for _ in range(CONNECTIONS)))
        start = time.perf_counter()
        deadline = start + SECONDS
        await asyncio.gather(*(worker(deadline, True) for _ in range(CONNECTIONS)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "requests": len(latencies),
        "total_requests": total,
        "errors": errors,
    }


def _measure(url: str, key: str | None, pid: int) -> Run:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # the server's peak, this run only
        hwm = True
    except OSError:
        hwm = False
    cpu0 = harness.proc_cpu_seconds(pid)
    done = subprocess.run(
        [sys.executable, "-m", "bench.api", "--load", url, json.dumps(headers)],
        capture_output=True,
        text=True,
        check=False,
    )
    cpu1 = harness.proc_cpu_seconds(pid)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return {"error": lines[-1][:200] if lines else "load generator failed"}
    result: Run = json.loads(done.stdout.strip().splitlines()[-1])
    if cpu0 is not None and cpu1 is not None and result["total_requests"]:
        result["server_cpu_us"] = (cpu1 - cpu0) / result["total_requests"] * 1e6
    if hwm:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                result["server_peak_rss_kib"] = int(line.split()[1])
    return result


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=harness.SCRATCH.parent) as tmp:
        home = Path(tmp) / "home"
        key = asyncio.run(_prepare(home))
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("DATASOURCES_")},
            "DATASOURCES_HOME": str(home),
            "DATASOURCES_LOCAL_FOLDER_ROOTS": str(home / "data"),
            "DATASOURCES_ALLOW_PRIVATE_NETWORKS": "true",
            # The limiter runs (it is part of the cost) but must not answer 429 here.
            "DATASOURCES_API__RATE_LIMIT_PER_MINUTE": "100000000",
            "DATASOURCES_API__RATE_LIMIT_BURST": "1000000",
            "DATASOURCES_SANDBOX_LIMITS__POOL_SIZE": "0",
        }
        servers: dict[str, subprocess.Popen[bytes]] = {}
        urls: dict[str, tuple[str, str | None, int]] = {}
        try:
            port = _free_port()
            servers["ours"] = _serve("bench.api:ours", port, env)
            base = f"http://127.0.0.1:{port}"
            import httpx

            listing = f"{base}/api/v1/datasources?limit={SOURCES}"
            reply = httpx.get(listing, headers={"Authorization": f"Bearer {key}"})
            assert len(reply.json()["items"]) == SOURCES, reply.text[:200]
            body_file = Path(tmp) / "body.json"
            body_file.write_bytes(reply.content)
            urls["ours"] = (listing, key, servers["ours"].pid)
            urls["health"] = (f"{base}/healthz", None, servers["ours"].pid)
            for name, cached in (("bare_cached", "1"), ("bare_json", "0")):
                port = _free_port()
                servers[name] = _serve(
                    "bench.api:bare",
                    port,
                    {**env, "BENCH_API_BODY": str(body_file), "BENCH_API_CACHED": cached},
                )
                url = f"http://127.0.0.1:{port}/api/v1/datasources?limit={SOURCES}"
                assert httpx.get(url).content == reply.content
                urls[name] = (url, None, servers[name].pid)
            runs = harness.interleave(CONTENDERS, lambda n: _measure(*urls[n]))
        finally:
            for proc in servers.values():
                _stop(proc)
    return {
        "config": {"connections": CONNECTIONS, "seconds": SECONDS, "warm_seconds": WARM_SECONDS},
        "runs": runs,
    }


# -- rendering ----------------------------------------------------------------------------------


def _rps(r: Run) -> float:
    return float(r["rps"])


def _inverse(key: str) -> Any:
    return lambda r: 1 / float(r[key]) if r.get(key) else None


def targets(res: dict[str, Any]) -> list[list[str]]:
    runs = res["runs"]
    ratio = paired(runs["ours"], runs["bare_cached"], _rps)
    p99 = paired(runs["ours"], runs["bare_cached"], lambda r: float(r["p99_ms"]))
    r_ok, p_ok = harness.median(ratio), harness.median(p99)
    ours_text = f"{spread(values(runs['ours'], _rps), 0, 'req/s')}"
    alt_text = f"bare FastAPI, pre-encoded {spread(values(runs['bare_cached'], _rps), 0, 'req/s')}"
    return [
        [
            "authenticated `GET /api/v1/datasources`: requests/s",
            ours_text,
            alt_text,
            ratio_text(ratio),
            "≥ 0.9x",
            verdict(None if r_ok is None else r_ok >= 0.9),
        ],
        [
            "authenticated `GET /api/v1/datasources`: p99",
            spread(values(runs["ours"], "p99_ms"), 1, "ms"),
            f"bare FastAPI, pre-encoded {spread(values(runs['bare_cached'], 'p99_ms'), 1, 'ms')}",
            ratio_text(p99) + " of its p99",
            "≤ 1.2x the bare p99",
            verdict(None if p_ok is None else p_ok <= 1.2),
        ],
    ]


def render(res: dict[str, Any]) -> str:
    runs, cfg = res["runs"], res["config"]
    lines = [
        "## HTTP service (`bench/api.py`)",
        "",
        harness.describe_run(res),
        "",
        f"One uvicorn process per server (uvloop, httptools), all started once and loaded in "
        f"turn; the load generator (aiohttp, {cfg['connections']} keep-alive connections, "
        f"{cfg['seconds']:g} s measured after {cfg['warm_seconds']:g} s of warm-up) is another "
        "process on the same cores, so requests/s is bounded by the generator as well as by "
        "the server. *Server CPU per request* is the server process's CPU over the run "
        "divided by the requests it answered: the per-request cost with the load generator "
        "taken out. *Server peak RSS* is its high-water mark, reset before each run.",
        "",
        "| endpoint | requests/s | p50 | p99 | server CPU µs/request | server peak RSS | errors "
        "| ours vs it (requests/s) | ours vs it (server CPU) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in CONTENDERS:
        r = runs[name]
        errors = int(sum(values(r, "errors")))
        mine = name == "ours"
        lines.append(
            f"| {LABELS[name]} | {spread(values(r, _rps))} | {spread(values(r, 'p50_ms'), 1)} ms | "
            f"{spread(values(r, 'p99_ms'), 1)} ms | {spread(values(r, 'server_cpu_us'))} | "
            f"{spread(values(r, 'server_peak_rss_kib'), 0, 'MiB', 1 / 1024)} | {errors} | "
            f"{'-' if mine else ratio_text(paired(runs['ours'], r, _rps))} | "
            f"{'-' if mine else ratio_text(paired(runs['ours'], r, _inverse('server_cpu_us')))} |"
        )
    cpu = {n: harness.median(values(runs[n], "server_cpu_us")) for n in CONTENDERS}
    extra = (cpu["ours"] or 0) - (cpu["bare_cached"] or 0)
    p99 = paired(runs["ours"], runs["bare_cached"], lambda r: float(r["p99_ms"]))
    lines += [
        "",
        f"Our per-request overhead over a bare app serving the same pre-encoded bytes: "
        f"{extra:,.0f} µs of server CPU per request (medians), the requests/s ratio "
        f"{ratio_text(paired(runs['ours'], runs['bare_cached'], _rps))} and p99 at "
        f"{ratio_text(p99)} of the bare app's in the same rounds. Per request ours runs the "
        "request-id and body-limit middleware, the API-key check (SHA-256, then a short "
        "in-memory cache of checked keys), the rate limiter, the owner-scoped listing (its "
        "JSON documents cached and joined, not re-serialised) and a redacted JSON access-log "
        "line. The re-serialising bare app is the comparison this bench used before; against "
        f"it ours runs at {ratio_text(paired(runs['ours'], runs['bare_json'], _rps))}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--load":
        print(json.dumps(asyncio.run(_load(sys.argv[2], json.loads(sys.argv[3])))))
    else:
        sys.exit("run it as: BENCH=api make bench")
