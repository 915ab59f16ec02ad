"""The contract suite is itself tested: run against a deliberately unsafe connector
(``tests/mutants/naive_connector.py``: names joined to its root and workspace with no
checks) its hostile-name tests must fail, every one. A suite that let that connector
through would prove nothing about the connectors that pass it."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from datasources.testing.contract import HOSTILE_NAMES, HOSTILE_PREFIXES

NAIVE = Path(__file__).parents[1] / "mutants" / "naive_connector.py"
REPO = Path(__file__).parents[2]


def _outcomes(tmp_path: Path) -> dict[str, str]:
    jail = tmp_path / "jail"
    jail.mkdir()
    report = tmp_path / "report.xml"
    env = {**os.environ, "NAIVE_JAIL": str(jail)}
    subprocess.run(
        [sys.executable, "-m", "pytest", str(NAIVE), "-q", "-p", "no:cacheprovider",
         f"--basetemp={jail}", f"--junitxml={report}", "-o", "addopts="],
        cwd=REPO, env=env, capture_output=True, timeout=300, check=False,
    )  # fmt: skip
    outcomes: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        kinds = {child.tag for child in case} & {"failure", "error", "skipped"}
        outcomes[case.attrib["name"]] = next(iter(kinds), "passed")
    return outcomes


def test_the_hostile_name_tests_fail_on_a_naive_connector(tmp_path: Path) -> None:
    outcomes = _outcomes(tmp_path)
    hostile = {
        name: outcome
        for name, outcome in outcomes.items()
        if name.startswith(
            (
                "test_fetch_hostile_names_never_escape",
                "test_metadata_and_streams_refuse_hostile_names",
                "test_uploads_refuse_hostile_names",
                "test_listings_never_leave_the_source",
                "test_source_holding_the_manifest_name",
            )
        )
    }
    refused = len(HOSTILE_NAMES) - 1  # the manifest's name has its own test
    # Every name, every operation (fetch, metadata + stream, upload), the manifest test,
    # and the listings whose prefix leads out on POSIX ("..\\" does not, on this OS).
    posix_prefixes = [p for p in HOSTILE_PREFIXES if "\\" not in p]
    assert len(hostile) == 2 * refused + len(HOSTILE_NAMES) + len(HOSTILE_PREFIXES) + 1
    survivors = {
        name
        for name, outcome in hostile.items()
        if outcome == "passed" and not name.endswith("[..\\\\]")
    }
    assert survivors == set(), survivors
    failed = sum(outcome == "failure" for outcome in hostile.values())
    assert failed >= 2 * refused + len(HOSTILE_NAMES) + len(posix_prefixes) + 1
