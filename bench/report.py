"""Render ``docs/performance.md`` from the results files alone (``bench/results/*.json``)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from bench import harness

BENCHES = ["foundation", "azure_blob", "postgres", "postgres_export", "api", "sandbox"]

HEADER = """\
# Performance

Written by `make bench` (the `bench/` package): do not edit by hand. Each benchmark compares
our code with the strongest alternatives measured in the same run and keeps its raw
measurements in `bench/results/<bench>.json`; this page is rendered from those files alone,
and every figure on it, and every sentence that states a number or a comparison, is computed
from the results file of the run that measured it (the prose is a template filled from
results; nothing is carried over by hand from an earlier run).

- `make bench` runs every benchmark; `BENCH=name make bench` (names: {names}) runs one,
  rewrites its results file and re-renders the whole page, so the other sections keep the
  figures of the run that measured them, and each section names its own date, commit and
  machine. `python -m bench --render` re-renders without measuring. `BENCH_QUICK=1` runs
  small sizes for a smoke test and writes to `.cache/bench-quick/`, never here.
- Contenders run interleaved in rotating order (ABC, BCA, CAB, …), {rounds} rounds in a full
  run. A figure is the median of the rounds with the range (min-max) in brackets. A ratio
  "ours vs X" is taken within each round (the same minute on the same machine) and its median
  and range shown; above 1.0x ours is faster.
- Peak RSS is measured in a child process per case, its high-water mark reset after the
  imports, so neither imports nor an earlier case hide growth. CPU-seconds are the client
  process's (all threads); a server's CPU (PostgreSQL backends, Azurite, uvicorn) is read from
  `/proc` and shown where it matters.
- Durability is stated per row: "fsync" rows have the data on disk when the call returns,
  the others only in the page cache.
- Sizes keep a full run near 15 minutes on two cores; each is an environment variable, e.g.
  `BENCH_AZURE_SIZES_MB=256,1024,4096`, `BENCH_AZURE_BLOBS=20000`, `BENCH_AZURE_UPLOAD_MB`,
  `BENCH_PG_EXPORT_ROWS=1000000,5000000,20000000`, `BENCH_FILE_MB`, `BENCH_LIST_FILES`,
  `BENCH_PG_LOOKUPS`, `BENCH_API_SECONDS`, `BENCH_API_CONNECTIONS`, `BENCH_SANDBOX_SAMPLES`,
  `BENCH_RUNS` (rounds, at least 5); the sizes a section ran with are in its tables.
- Nothing here is asserted in tests.
"""


def _module(name: str) -> Any:
    return importlib.import_module(f"bench.{name}")


def render() -> Path:
    results = {name: harness.load(name) for name in BENCHES}
    parts = [HEADER.format(names=", ".join(f"`{n}`" for n in BENCHES), rounds=harness.RUNS)]
    if harness.QUICK:
        parts.append("**Quick mode (`BENCH_QUICK=1`): small sizes, figures are a smoke test.**\n")
    target_rows: list[list[str]] = []
    for name, res in results.items():
        module = _module(name)
        if res is not None and hasattr(module, "targets"):
            target_rows += module.targets(res)
    if target_rows:
        parts.append(
            "## Targets\n\n"
            "The paths issue 14 sets targets for, each as a ratio measured in one run (see the "
            "section it comes from for durability, CPU and memory). A status is judged on the "
            "median of the per-round ratios; where the range straddles the target, the "
            "verdict is within this machine's noise.\n\n"
            "| path | ours | best alternative, same run | ratio | target | status |\n"
            "|---|---|---|---|---|---|\n"
            + "\n".join("| " + " | ".join(row) + " |" for row in target_rows)
            + "\n"
        )
    for name, res in results.items():
        if res is None:
            parts.append(f"## `{name}`\n\nNot measured yet: run `BENCH={name} make bench`.\n")
            continue
        parts.append(_module(name).render(res).rstrip() + "\n")
    harness.DOC.parent.mkdir(parents=True, exist_ok=True)
    harness.DOC.write_text("\n".join(parts))
    return harness.DOC
