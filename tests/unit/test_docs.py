"""The docs' claims that can be checked mechanically: every error code is documented."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import datasources
from datasources.api.errors import status_for
from datasources.errors import DataSourceError

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _all_error_classes() -> set[type[DataSourceError]]:
    # Error classes live beside what raises them: import every module to meet them all.
    for module in pkgutil.walk_packages(datasources.__path__, "datasources."):
        if ".migrations" not in module.name:
            importlib.import_module(module.name)
    found: set[type[DataSourceError]] = set()
    todo = [DataSourceError]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo.extend(cls.__subclasses__())
    return {c for c in found if c.__module__.startswith("datasources.")}


def test_every_error_code_is_in_the_api_error_table_with_its_status() -> None:
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    rows = {}
    for line in text.splitlines():
        match = re.match(r"^\| (\d{3})(?: / (\d{3}))? \| (.+?) \|", line)
        if match:
            codes = re.findall(r"`([a-z_]+)`", match.group(3))
            statuses = [int(s) for s in match.groups()[:2] if s]
            for code in codes:
                rows[code] = statuses
    missing = []
    for cls in _all_error_classes():
        status = status_for(cls())
        if cls.code not in rows or status not in rows[cls.code]:
            missing.append(f"{cls.code} ({cls.__name__}) -> {status}")
    assert not missing, "docs/api.md's error table lacks: " + ", ".join(sorted(missing))
