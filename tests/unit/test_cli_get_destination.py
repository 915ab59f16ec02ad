"""``datasources get``'s destination follows cp's rules (paper cut 9 of issue 12).

An existing folder takes the item inside (keeping its remote path: the folder is a
workspace); a DEST ending in '/' must be an existing folder; anything else is the file
to write, in a folder that must exist; nothing is overwritten without --overwrite.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from datasources.cli import app

runner = CliRunner()


@pytest.fixture
def home(tmp_path: Path, folder: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    added = runner.invoke(
        app,
        ["--home", str(path), "sources", "add", "f", "-t", "local_folder", "-c", f"root={folder}"],
    )
    assert added.exit_code == 0, added.output
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "remote"
    (path / "2026").mkdir(parents=True)
    (path / "2026" / "sales.csv").write_text("price\n1.5\n")
    (path / "other.csv").write_text("x\n")
    return path


@pytest.fixture
def here(tmp_path: Path) -> Path:
    path = tmp_path / "here"
    path.mkdir()
    return path


def get(home: Path, *args: str) -> Any:
    return runner.invoke(app, ["--home", str(home), "get", "f", *args])


def test_a_file_name_is_the_file_written(home: Path, here: Path) -> None:
    """``get SOURCE file ./my-sales.csv`` writes that file (it made a folder of that name)."""
    done = get(home, "2026/sales.csv", str(here / "my-sales.csv"), "--json")
    assert done.exit_code == 0, done.output
    target = here / "my-sales.csv"
    assert target.is_file() and target.read_text() == "price\n1.5\n"
    body = json.loads(done.output)
    assert body["path"] == str(target) and body["provenance"]["source_id"] == "f"
    assert len(body["provenance"]["sha256"]) == 64
    assert sorted(os.listdir(here)) == ["my-sales.csv"]  # no staging folder left behind


def test_a_relative_file_name_in_the_current_folder(
    home: Path, here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(here)
    done = get(home, "2026/sales.csv", "./my-sales.csv")
    assert done.exit_code == 0, done.output
    assert (here / "my-sales.csv").read_text() == "price\n1.5\n"
    assert "sha256:" in done.output and "sha256:?" not in done.output


def test_an_existing_folder_takes_the_item_inside(home: Path, here: Path) -> None:
    for dest in (str(here), str(here) + "/"):
        done = get(home, "2026/sales.csv", dest)
        assert done.exit_code == 0, done.output
        assert (here / "2026" / "sales.csv").read_text() == "price\n1.5\n"
    manifest = here / ".datasources" / "manifest.jsonl"
    assert manifest.exists() and "2026/sales.csv" in manifest.read_text()


def test_a_trailing_slash_needs_an_existing_folder(home: Path, here: Path) -> None:
    done = get(home, "2026/sales.csv", str(here / "new") + "/")
    assert done.exit_code == 1 and done.output.startswith("error: no folder at")
    assert not (here / "new").exists()


def test_the_folder_of_a_file_name_must_exist(home: Path, here: Path) -> None:
    done = get(home, "2026/sales.csv", str(here / "missing" / "my-sales.csv"))
    assert done.exit_code == 1 and done.output.startswith("error: no folder")
    assert os.listdir(here) == []


def test_an_existing_file_is_kept_unless_overwrite(home: Path, here: Path) -> None:
    mine = here / "my-sales.csv"
    mine.write_text("my own edits")
    refused = get(home, "2026/sales.csv", str(mine))
    assert refused.exit_code == 1 and "--overwrite" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    assert mine.read_text() == "my own edits" and os.listdir(here) == ["my-sales.csv"]
    done = get(home, "2026/sales.csv", str(mine), "--overwrite")
    assert done.exit_code == 0, done.output
    assert mine.read_text() == "price\n1.5\n" and os.listdir(here) == ["my-sales.csv"]


def test_a_dangling_link_in_the_way_is_not_written_through(
    home: Path, here: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere.csv"
    (here / "link.csv").symlink_to(outside)
    refused = get(home, "2026/sales.csv", str(here / "link.csv"))
    assert refused.exit_code == 1 and not outside.exists()


def test_in_a_folder_only_our_own_unchanged_copies_are_refreshed(home: Path, here: Path) -> None:
    first = get(home, "2026/sales.csv", str(here))
    assert first.exit_code == 0, first.output
    again = get(home, "2026/sales.csv", str(here))  # our copy, unchanged: fine
    assert again.exit_code == 0, again.output

    fetched = here / "2026" / "sales.csv"
    fetched.write_text("edited here")  # changed since it was fetched: someone's work now
    refused = get(home, "2026/sales.csv", str(here))
    assert refused.exit_code == 1 and "--overwrite" in refused.output
    assert fetched.read_text() == "edited here"

    (here / "other.csv").write_text("not fetched")  # never fetched here
    refused = get(home, "other.csv", str(here))
    assert refused.exit_code == 1 and (here / "other.csv").read_text() == "not fetched"

    assert get(home, "2026/sales.csv", str(here), "--overwrite").exit_code == 0
    assert fetched.read_text() == "price\n1.5\n"


def test_many_items_need_a_folder(home: Path, here: Path) -> None:
    a_file = here / "a-file"
    a_file.write_text("x")
    refused = get(home, "2026/", str(a_file))
    assert refused.exit_code == 1 and "not a folder" in refused.output
    assert a_file.read_text() == "x"
    made = get(home, "2026/", str(here / "new"))  # a missing folder is made, as cp -r does
    assert made.exit_code == 0, made.output
    assert (here / "new" / "2026" / "sales.csv").exists()
