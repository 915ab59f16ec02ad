"""``make bench``: run the benchmarks, keep their results, re-render docs/performance.md.

``python -m bench [name …]`` runs the named benchmarks (all by default; names may also be
comma-separated), writes each one's results to ``bench/results/<name>.json`` as soon as it
finishes, and renders the page from every results file. ``python -m bench --render`` only
renders. ``BENCH_QUICK=1`` uses small sizes and writes under ``.cache/bench-quick/``.
"""

from __future__ import annotations

import importlib
import os
import sys
import time

from bench import harness, report

NEEDS = {
    "azure_blob": "DATASOURCES_TEST_AZURITE_CONNECTION_STRING",
    "postgres": "DATASOURCES_TEST_POSTGRES_DSN",
    "postgres_export": "DATASOURCES_TEST_POSTGRES_DSN",
}


def main(argv: list[str]) -> None:
    if argv == ["--render"]:
        print(f"wrote {report.render()}")
        return
    names = [n for arg in argv for n in arg.split(",") if n] or list(report.BENCHES)
    unknown = [n for n in names if n not in report.BENCHES]
    if unknown:
        sys.exit(f"unknown benchmark {unknown}; known: {', '.join(report.BENCHES)}")
    missing = [n for n in names if n in NEEDS and NEEDS[n] not in os.environ]
    if missing:
        sys.exit(f"{', '.join(missing)} need the test services: run through 'make bench'")
    if not harness.QUICK and harness.RUNS < 5:
        sys.exit("a full run takes at least 5 rounds (BENCH_RUNS); BENCH_QUICK=1 for fewer")
    for name in names:
        print(f"== {name}", flush=True)
        started = time.time()
        info = {"machine": harness.machine(), "busy_before": harness.busy_cores()}
        data = importlib.import_module(f"bench.{name}").run()
        info["busy_after"] = harness.busy_cores()
        path = harness.save(name, data, started, info)
        print(f"== {name}: {time.time() - started:.0f} s, results in {path}", flush=True)
        report.render()
    print(f"wrote {harness.DOC}")


if __name__ == "__main__":
    main(sys.argv[1:])
