"""``datasources users``: create, list, disable, enable, passwd — passwords never echoed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from datasources.cli import app
from datasources.config import Settings
from datasources.registry import DataSourceRegistry
from datasources.users import Users

runner = CliRunner()
PASSWORD = "correct horse battery"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


def cli(home: Path, *args: str, input: str | None = None) -> Any:
    return runner.invoke(app, ["--home", str(home), *args], input=input)


def ok(home: Path, *args: str, input: str | None = None) -> str:
    result = cli(home, *args, input=input)
    assert result.exit_code == 0, result.output
    return str(result.output)


def verify(home: Path, name: str, password: str) -> bool:
    async def check() -> bool:
        async with DataSourceRegistry.from_settings(Settings(home=home)) as registry:
            return await Users(registry.store).verify(name, password) is not None

    return asyncio.run(check())


def test_users_create_list_disable_enable_passwd(home: Path) -> None:
    created = json.loads(ok(home, "--json", "users", "create", "alice", "--password-stdin",
                            input=PASSWORD + "\n"))  # fmt: skip
    assert created["name"] == "alice" and created["owner"].startswith("o_")
    assert verify(home, "alice", PASSWORD)
    key = json.loads(ok(home, "--json", "keys", "create", "ci"))
    shared = json.loads(ok(home, "--json", "users", "create", "bob", "--owner", key["owner"],
                           "--password-stdin", input=PASSWORD + "\n"))  # fmt: skip
    assert shared["owner"] == key["owner"]
    missing = cli(home, "users", "create", "carol", "--owner", "o_nobody", "--password-stdin",
                  input=PASSWORD + "\n")  # fmt: skip
    assert missing.exit_code == 1 and "does not exist" in missing.output
    listed = ok(home, "users", "list")
    assert "alice" in listed and "bob" in listed and "active" in listed
    rows = json.loads(ok(home, "--json", "users", "list"))
    assert [r["name"] for r in rows] == ["alice", "bob"]
    assert set(rows[0]) == {"id", "name", "owner", "created_at", "disabled_at"}
    ok(home, "users", "disable", "alice")
    assert not verify(home, "alice", PASSWORD)
    assert json.loads(ok(home, "--json", "users", "list"))[0]["disabled_at"] is not None
    ok(home, "users", "enable", created["id"])
    assert verify(home, "alice", PASSWORD)
    ok(home, "users", "passwd", "alice", "--password-stdin", input="a brand new password\n")
    assert not verify(home, "alice", PASSWORD) and verify(home, "alice", "a brand new password")
    for args in (("users", "disable", "nobody"), ("users", "passwd", "nobody",
                                                  "--password-stdin")):  # fmt: skip
        failed = cli(home, *args, input=PASSWORD + "\n")
        assert failed.exit_code == 1 and "not found" in failed.output


def test_passwords_never_come_from_arguments_or_show_up(home: Path) -> None:
    short = cli(home, "users", "create", "alice", "--password-stdin", input="hunter2\n")
    assert short.exit_code == 1 and "8 to 1024" in short.output and "hunter2" not in short.output
    empty = cli(home, "users", "create", "alice", "--password-stdin", input="")
    assert empty.exit_code == 2
    no_tty = cli(home, "users", "create", "alice", input=PASSWORD + "\n")
    assert no_tty.exit_code == 2 and "--password-stdin" in no_tty.output
    out = ok(home, "users", "create", "alice", "--password-stdin", input=PASSWORD + "\n")
    listed = ok(home, "--json", "users", "list") + ok(home, "users", "list")
    for text in (out, listed, no_tty.output):
        assert PASSWORD not in text and "argon2" not in text
    positional = cli(home, "users", "create", "bob", PASSWORD)
    assert positional.exit_code == 2  # no password argument exists to be misused
