"""The CLI, driven in-process with typer's runner and once as a real subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from datasources.cli import app
from datasources.credentials import load_key_file

runner = CliRunner()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    (path / "sub").mkdir(parents=True)
    (path / "a.csv").write_text("x,y\n1,2\n")
    (path / "sub" / "b.txt").write_text("hello")
    return path


def cli(home: Path, *args: str, env: dict[str, str] | None = None, input: str | None = None) -> Any:
    return runner.invoke(app, ["--home", str(home), *args], env=env, input=input)


def ok(home: Path, *args: str, **kwargs: Any) -> str:
    result = cli(home, *args, **kwargs)
    assert result.exit_code == 0, result.output
    return str(result.output)


def test_add_list_show_test_ls_get_put_remove(home: Path, folder: Path, tmp_path: Path) -> None:
    out = ok(
        home,
        "sources",
        "add",
        "My Files",
        "--type",
        "local_folder",
        "-c",
        f"root={folder}",
        "--tag",
        "t1",
    )
    assert "my-files" in out
    listed = json.loads(ok(home, "--json", "sources", "list"))
    assert [s["id"] for s in listed] == ["my-files"] and listed[0]["tags"] == ["t1"]
    shown = json.loads(ok(home, "--json", "sources", "show", "My Files"))
    assert shown["config"]["root"] == str(folder)
    assert "ok" in ok(home, "sources", "test", "my-files")

    page = json.loads(ok(home, "--json", "ls", "my-files"))
    assert [i["path"] for i in page["items"]] == ["a.csv", "sub/"]
    page = json.loads(ok(home, "--json", "ls", "my-files", "-r", "-n", "1"))
    assert [i["path"] for i in page["items"]] == ["a.csv"] and page["next_cursor"]
    page = json.loads(ok(home, "--json", "ls", "my-files", "-r", "--cursor", page["next_cursor"]))
    assert [i["path"] for i in page["items"]] == ["sub/b.txt"]
    assert "a.csv" in ok(home, "ls", "my-files")

    dest = tmp_path / "ws"
    dest.mkdir()  # an existing folder takes the item at its remote path (a new name: a file)
    got = json.loads(ok(home, "--json", "get", "my-files", "sub/b.txt", str(dest)))
    assert Path(got["path"]).read_text() == "hello"
    assert got["provenance"]["source_id"] == "my-files"
    assert (dest / "sub" / "b.txt").read_text() == "hello"

    local = tmp_path / "new.csv"
    local.write_text("n\n")
    ok(home, "put", "my-files", str(local), "up/new.csv")
    assert (folder / "up" / "new.csv").read_text() == "n\n"
    result = cli(home, "put", "my-files", str(local), "up/new.csv")
    assert result.exit_code == 1 and "already exists" in result.output
    assert "--overwrite" in result.output and "overwrite=True" not in result.output
    ok(home, "put", "my-files", str(local), "up/new.csv", "--overwrite")

    ok(home, "sources", "remove", "my-files")
    assert json.loads(ok(home, "--json", "sources", "list")) == []


def test_failures_are_one_line_and_non_zero(home: Path, folder: Path) -> None:
    for args in (
        ["sources", "show", "missing"],
        ["ls", "missing"],
        ["sources", "add", "x", "--type", "nope"],
        ["sources", "add", "x", "--type", "local_folder", "-c", "root=/definitely/not/here"],
        ["sources", "add", "x", "--type", "local_folder", "-c", "noequals"],
    ):
        result = cli(home, *args)
        assert result.exit_code != 0, args
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), result.output
        assert "Traceback" not in result.output
    ok(
        home,
        "sources",
        "add",
        "ro",
        "--type",
        "local_folder",
        "-c",
        f"root={folder}",
        "--read-only",
    )
    result = cli(home, "put", "ro", str(folder / "a.csv"), "x.csv")
    assert result.exit_code == 1 and "read-only" in result.output
    for hostile in ("../x", "/etc/passwd", "a/../../x"):
        result = cli(home, "get", "ro", hostile, str(folder.parent / "ws"))
        assert result.exit_code == 1
    result = cli(home, "ls", "ro", "--cursor", "garbage")
    assert result.exit_code == 1 and "cursor" in result.output


def test_secrets_from_env_and_prompt_never_printed(
    home: Path, folder: Path, canary: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        "datasources.sources.connector_types.BUILTINS",
        {
            "local_folder": "datasources.connectors.local_folder:LocalFolderConnector",
            "token_folder": "tests.plugins:TokenFolderConnector",
        },
    )
    outputs = []
    token = "valid-" + canary
    outputs.append(
        ok(
            home,
            "-v",
            "sources",
            "add",
            "env-src",
            "--type",
            "token_folder",
            "-c",
            f"root={folder}",
            "--config-env",
            "token=MY_TOKEN",
            env={"MY_TOKEN": token},
        )
    )
    outputs.append(
        ok(
            home,
            "-v",
            "sources",
            "add",
            "prompted",
            "--type",
            "token_folder",
            "-c",
            f"root={folder}",
            "--prompt",
            "token",
            input=token + "\n",
        )
    )
    inline = cli(
        home,
        "-v",
        "sources",
        "add",
        "inline",
        "--type",
        "token_folder",
        "-c",
        f"root={folder}",
        "-c",
        f"token={token}",
    )
    assert inline.exit_code == 0 and "shell history" in inline.output
    outputs.append(inline.output.replace(f"token={token}", ""))
    for args in (
        ("sources", "list"),
        ("sources", "show", "env-src"),
        ("sources", "test", "prompted"),
        ("ls", "env-src"),
        ("sources", "show", "inline"),
    ):
        outputs.append(ok(home, "-v", *args))
        outputs.append(ok(home, "-v", "--json", *args))
    wrong = cli(
        home,
        "-v",
        "sources",
        "add",
        "bad",
        "--type",
        "token_folder",
        "-c",
        f"root={folder}",
        "--config-env",
        "token=MY_TOKEN",
        env={"MY_TOKEN": "wrong-" + canary},
    )
    outputs.append(wrong.output)
    tested = cli(home, "-v", "sources", "test", "bad")
    assert tested.exit_code == 1 and "rejected" in tested.output
    outputs.append(tested.output)
    for output in outputs:
        assert canary not in output
    db = (home / "datasources.db").read_bytes()
    assert canary.encode() not in db
    result = cli(
        home,
        "sources",
        "add",
        "x",
        "--type",
        "token_folder",
        "-c",
        f"root={folder}",
        "--config-env",
        "token=NOT_SET_ANYWHERE",
    )
    assert result.exit_code == 2 and "NOT_SET_ANYWHERE" in result.output


def test_generate_key_and_rotate_key_file(
    home: Path, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        "datasources.sources.connector_types.BUILTINS",
        {"token_folder": "tests.plugins:TokenFolderConnector"},
    )
    key = json.loads(ok(home, "--json", "secrets", "generate-key"))["key"]
    assert len(key) == 44
    ok(
        home,
        "sources",
        "add",
        "t",
        "--type",
        "token_folder",
        "-c",
        f"root={folder}",
        "--config-env",
        "token=T",
        env={"T": "valid-abc"},
    )
    first = load_key_file(home / "secret.key", create=False)
    assert len(first) == 1
    result = json.loads(ok(home, "--json", "secrets", "rotate", "--new-key"))
    assert result == {"rotated": 1, "keys": 2}
    keys = load_key_file(home / "secret.key", create=False)
    assert len(keys) == 2 and keys[1] == first[0]
    ok(home, "secrets", "rotate", "--drop-old-keys")
    assert load_key_file(home / "secret.key", create=False) == keys[:1]
    assert "ok" in ok(home, "sources", "test", "t")


def test_env_keys_take_precedence(home: Path, folder: Path) -> None:
    from datasources.credentials import generate_key

    env = {"DATASOURCES_SECRET_KEYS": generate_key()}
    ok(home, "sources", "add", "plain", "--type", "local_folder", "-c", f"root={folder}", env=env)
    assert not (home / "secret.key").exists()
    result = cli(home, "secrets", "rotate", "--new-key", env=env)
    assert result.exit_code == 2


def test_demo_runs_twice(home: Path) -> None:
    first = ok(home, "demo")
    assert "Registered samples" in first and "bytes transferred" in first
    assert "read-only" in first
    second = ok(home, "demo")
    assert "already registered" in second and "0 bytes transferred" in second
    manifest = home / "workspaces" / "demo" / ".datasources" / "manifest.jsonl"
    assert manifest.exists()


def test_console_script_subprocess(home: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATASOURCES_")}
    env["DATASOURCES_HOME"] = str(home)
    cmd = [sys.executable, "-m", "datasources.cli"]
    done = subprocess.run(
        [*cmd, "--json", "sources", "list"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and json.loads(done.stdout) == []
    done = subprocess.run(
        [*cmd, "sources", "show", "nope"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stderr.strip() == "error: Data source 'nope' not found."
    env["DATASOURCES_POOL__MAX_SIZE"] = "not-a-number"
    done = subprocess.run(
        [*cmd, "sources", "list"], env=env, capture_output=True, text=True, timeout=60
    )
    assert (
        done.returncode == 2 and "pool.max_size" in done.stderr and "Traceback" not in done.stderr
    )


def test_config_file_and_bad_destinations(home: Path, folder: Path, tmp_path: Path) -> None:
    good = tmp_path / "cfg.json"
    good.write_text(json.dumps({"root": str(folder), "chunk_size": 65536}))
    ok(home, "sources", "add", "from-file", "--type", "local_folder", "--config-file", str(good))
    shown = json.loads(ok(home, "--json", "sources", "show", "from-file"))
    assert shown["config"]["chunk_size"] == 65536
    for content in ("[1, 2]", "{not json", ""):
        bad = tmp_path / "bad.json"
        bad.write_text(content)
        result = cli(
            home, "sources", "add", "x", "--type", "local_folder", "--config-file", str(bad)
        )
        assert result.exit_code == 2 and result.output.startswith("error:")
    result = cli(
        home,
        "sources",
        "add",
        "x",
        "--type",
        "local_folder",
        "--config-file",
        str(tmp_path / "nope"),
    )
    assert result.exit_code == 2
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("x")
    result = cli(home, "get", "from-file", "a.csv", str(a_file))
    assert result.exit_code == 1 and "already exists" in result.output  # as cp -n would
    assert a_file.read_text() == "x"


def test_get_many_by_prefix_and_glob(home: Path, folder: Path, tmp_path: Path) -> None:
    (folder / "sub" / "c.csv").write_text("c")
    ok(
        home,
        "sources",
        "add",
        "f",
        "--type",
        "local_folder",
        "-c",
        f"root={folder}",
        "-c",
        "max_download_bytes=4",
    )
    result = cli(home, "get", "f", "sub/", str(tmp_path / "ws"))
    assert result.exit_code == 1  # b.txt is over the 4-byte limit; c.csv still lands
    assert "sub/c.csv" in result.output and "error: sub/b.txt" in result.output
    assert (tmp_path / "ws" / "sub" / "c.csv").read_text() == "c"
    report = json.loads(ok(home, "--json", "get", "f", "**/c.csv", str(tmp_path / "ws2")))
    assert report["fetched"] == ["sub/c.csv"] and report["failed"] == []


def test_keys_create_list_revoke(home: Path) -> None:
    created = json.loads(ok(home, "--json", "keys", "create", "ci-bot"))
    assert set(created) == {"id", "name", "owner", "key"} and created["key"].startswith("dsk_")
    assert created["owner"] == f"o_{created['id']}"
    shared = json.loads(ok(home, "--json", "keys", "create", "bot-2", "--owner", created["owner"]))
    assert shared["owner"] == created["owner"]
    failed = cli(home, "keys", "create", "x", "--owner", "nobody-yet")
    assert failed.exit_code == 1 and "does not exist" in failed.output
    listed = json.loads(ok(home, "--json", "keys", "list"))
    assert [k["name"] for k in listed] == ["ci-bot", "bot-2"]
    assert created["key"] not in json.dumps(listed)
    human = ok(home, "keys", "list")
    assert "ci-bot" in human and created["key"] not in human
    ok(home, "keys", "revoke", "ci-bot")
    states = {k["name"]: k["revoked_at"] for k in json.loads(ok(home, "--json", "keys", "list"))}
    assert states["ci-bot"] is not None and states["bot-2"] is None
    assert cli(home, "keys", "revoke", "no-such-key").exit_code == 1
    assert cli(home, "keys", "create", "bad\nname").exit_code == 1


def test_serve_demo_starts_the_service_with_a_key(home: Path) -> None:
    """``make run``: the real command in a subprocess, answering real HTTP."""
    import socket
    import time

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "DATASOURCES_HOME": str(home),
        "DATASOURCES_SANDBOX_LIMITS__POOL_SIZE": "0",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "datasources.cli", "serve", "--demo", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(9)]
        key = lines[3].strip()
        assert key.startswith("dsk_"), lines
        assert "Local folders allowed under" in lines[1] and str(home / "demo") in lines[1]
        base = f"http://127.0.0.1:{port}"
        # The workbench and the demo user's first sign-in, with the password in a file.
        password_file = home / "demo.password"
        assert lines[8].strip() == (
            f"Workbench: open {base}/ and sign in as demo with the password in {password_file}"
        ), lines
        password = password_file.read_text().strip()
        assert password not in "".join(lines)
        for _ in range(200):
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        listed = httpx.get(f"{base}/api/v1/datasources", headers={"Authorization": f"Bearer {key}"})
        assert [s["id"] for s in listed.json()["items"]] == ["samples"]
        items = httpx.get(
            f"{base}/api/v1/datasources/samples/items", headers={"Authorization": f"Bearer {key}"}
        )
        assert "sales.csv" in {i["path"] for i in items.json()["items"]}
        with httpx.Client(base_url=base, headers={"Origin": base}) as browser:
            signed = browser.post("/login", data={"name": "demo", "password": password})
            assert signed.status_code == 303, signed.text
            mine = browser.get("/api/v1/datasources")
            assert [s["id"] for s in mine.json()["items"]] == ["samples"]  # the key's owner
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=15)
    assert key not in err  # the access log names key ids, never keys
    assert password not in err
    assert '"event": "request"' in err


def test_chat_in_the_terminal_against_the_embedded_service(
    home: Path, folder: Path, tmp_path: Path
) -> None:
    ok(home, "sources", "add", "files", "--type", "local_folder", "-c", f"root={folder}")
    script = "\n".join(
        [
            "@files:a.csv",
            "```python",  # a block spans lines and is sent whole
            "x = 21",
            "print(x * 2)",
            "```",
            "/quit",
        ]
    )
    env = {
        "DATASOURCES_SANDBOX_LIMITS__POOL_SIZE": "0",
        "DATASOURCES_LOCAL_FOLDER_ROOTS": str(folder),
    }
    result = cli(home, "chat", "--source", "files", "--save-to", str(tmp_path / "img"),
                 env=env, input=script + "\n")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Sources: @files." in result.output and "a.csv" in result.output
    assert "\n42\n" in result.output  # the two-line block ran as one cell
    assert "NameError" not in result.output
    assert cli(home, "chat", "--source", "nope", input="/quit\n").exit_code == 1
    ok(home, "sources", "add", "Other Files", "--type", "local_folder", "-c", f"root={folder}")
    other = cli(home, "chat", "--source", "files", env=env, input="@other-files:a.csv\n/quit\n")
    assert other.exit_code == 0 and "@other-files is not one of this chat's sources" in other.output
    both = cli(home, "chat", env=env, input="/quit\n")
    assert "Sources: @files, @other-files (Other Files)." in both.output
    remote = cli(home, "chat", "--url", "http://127.0.0.1:9", "--api-key", "k", input="/quit\n")
    assert remote.exit_code == 1 and "cannot be reached" in remote.output


def test_global_options_work_after_the_subcommand(home: Path, folder: Path) -> None:
    """``--json`` and ``--home`` go before or after the command, as users write them."""
    runner.invoke(app, ["sources", "add", "F", "--type", "local_folder", "-c", f"root={folder}",
                        "--home", str(home)])  # fmt: skip
    after = runner.invoke(app, ["sources", "list", "--json", "--home", str(home)])
    assert after.exit_code == 0, after.output
    assert [s["id"] for s in json.loads(after.output)] == ["f"]
    before = runner.invoke(app, ["--json", "--home", str(home), "sources", "list"])
    assert json.loads(before.output) == json.loads(after.output)

    created = runner.invoke(app, ["keys", "create", "ci-bot", "--json", f"--home={home}"])
    assert created.exit_code == 0, created.output
    body = json.loads(created.output)
    assert body["name"] == "ci-bot" and body["key"].startswith("dsk_")
    # After "--" an argument is an argument, even when it looks like a global option.
    dashed = runner.invoke(app, ["--home", str(home), "keys", "create", "--", "--json"])
    assert dashed.exit_code == 0, dashed.output
    names = [k["name"] for k in json.loads(ok(home, "keys", "list", "--json"))]
    assert names == ["ci-bot", "--json"]


def test_hoisting_leaves_other_arguments_in_order() -> None:
    from datasources.cli import hoist_global_options

    assert hoist_global_options(["get", "s", "a.csv", "--json", "ws", "-v"]) == [
        "--json", "-v", "get", "s", "a.csv", "ws"
    ]  # fmt: skip
    assert hoist_global_options(["ls", "--home", "/h", "x"]) == ["--home", "/h", "ls", "x"]
    assert hoist_global_options(["q", "--", "--json"]) == ["q", "--", "--json"]


def test_usage_errors_are_one_line_and_flags_look_like_flags(home: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATASOURCES_")}
    env["DATASOURCES_HOME"] = str(home)
    cmd = [sys.executable, "-m", "datasources.cli"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=60)

    for args, words in (
        (["sources", "nope"], "No such command 'nope'"),
        (["sources", "add", "x"], "Missing option '--type'"),
        (["ls"], "Missing argument"),
        (["query", "s", "select 1", "--max-rows", "zero"], "Invalid value for '--max-rows'"),
    ):
        done = run(*args)
        assert done.returncode == 2, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines
        assert done.stdout == ""
    helped = run("sources", "add", "--help")
    assert helped.returncode == 0
    assert "<bool>" not in helped.stdout and "--read-only " in helped.stdout
    assert "╭" not in helped.stdout + run("--help").stdout  # plain text, no boxes


def test_sources_update_changes_keys_without_re_entering_secrets(
    home: Path, folder: Path, tmp_path: Path
) -> None:
    ok(home, "sources", "add", "F", "--type", "local_folder", "-c", f"root={folder}")
    ok(home, "sources", "update", "F", "-c", "chunk_size=65536", "--tag", "x", "--read-only")
    shown = json.loads(ok(home, "sources", "show", "F", "--json"))
    assert shown["config"]["chunk_size"] == 65536 and shown["tags"] == ["x"] and shown["read_only"]
    ok(home, "sources", "update", "f", "--unset", "chunk_size", "--writable", "--name", "G")
    shown = json.loads(ok(home, "sources", "show", "G", "--json"))
    assert "chunk_size" not in shown["config"] and not shown["read_only"]

    nothing = cli(home, "sources", "update", "G")
    assert nothing.exit_code == 2 and "nothing to change" in nothing.output
    bad = cli(home, "sources", "update", "G", "-c", "chunk_size=-1")
    assert bad.exit_code == 1 and "chunk_size" in bad.output
    missing = cli(home, "sources", "update", "nope", "-c", "a=b")
    assert missing.exit_code == 1 and "not found" in missing.output
    assert json.loads(ok(home, "sources", "show", "G", "--json"))["config"]["root"] == str(folder)


def test_sources_update_keeps_a_secret_only_for_the_same_target(home: Path) -> None:
    env = {"PGPW": "pw-" + "s3cr3t-value"}
    ok(home, "sources", "add", "db", "--type", "postgresql", "-c", "host=127.0.0.1",
       "-c", "database=x", "-c", "user=u", "--config-env", "password=PGPW", env=env)  # fmt: skip
    ok(home, "sources", "update", "db", "-c", "max_rows=5")
    shown = ok(home, "sources", "show", "db", "--json")
    assert json.loads(shown)["config"]["max_rows"] == 5 and env["PGPW"] not in shown
    moved = cli(home, "sources", "update", "db", "-c", "host=10.1.2.3")
    assert moved.exit_code == 1 and "password" in moved.output and "again" in moved.output
    ok(home, "sources", "update", "db", "-c", "host=10.1.2.3", "--config-env", "password=PGPW",
       env=env)  # fmt: skip


def test_adding_a_source_the_service_would_refuse_says_so(home: Path, folder: Path) -> None:
    added = cli(home, "sources", "add", "F", "--type", "local_folder", "-c", f"root={folder}")
    assert added.exit_code == 0
    assert "the HTTP service will refuse this source" in added.output
    assert "DATASOURCES_LOCAL_FOLDER_ROOTS" in added.output
    env = {"DATASOURCES_LOCAL_FOLDER_ROOTS": str(folder.parent)}
    allowed = cli(
        home, "sources", "add", "G", "-t", "local_folder", "-c", f"root={folder}", env=env
    )
    assert allowed.exit_code == 0 and "refuse" not in allowed.output


def test_sources_add_can_test_the_connection(home: Path, folder: Path, tmp_path: Path) -> None:
    tested = ok(home, "sources", "add", "F", "-t", "local_folder", "-c", f"root={folder}", "--test")
    assert "Connection test: ok" in tested
    added = cli(home, "sources", "add", "G", "-t", "local_folder", "-c", f"root={folder}",
                "--test", "--json")  # fmt: skip
    body = json.loads(added.stdout)
    assert body["id"] == "g" and body["test"]["ok"] is True
    closed = ["-t", "postgresql", "-c", "host=127.0.0.1", "-c", "port=1", "-c", "database=x",
              "-c", "user=u"]  # fmt: skip
    failed = cli(home, "sources", "add", "H", *closed, "--test")
    assert failed.exit_code == 1 and "Connection test: FAILED" in failed.output
    assert json.loads(ok(home, "sources", "show", "H", "--json"))["id"] == "h"  # kept
    untested = ok(home, "sources", "add", "I", *closed)
    assert "Connection test" not in untested  # not a terminal here: no test by default


def test_a_missing_home_is_refused_unless_created(tmp_path: Path) -> None:
    typo = tmp_path / "sate"
    refused = runner.invoke(app, ["--home", str(typo), "sources", "list"])
    assert (
        refused.exit_code == 2
        and "no state folder" in refused.output
        and "--create" in refused.output
    )
    assert not typo.exists()
    made = runner.invoke(app, ["sources", "list", "--home", str(typo), "--create"])
    assert made.exit_code == 0, made.output
    assert typo.is_dir()
    again = runner.invoke(app, ["--home", str(typo), "sources", "list"])
    assert again.exit_code == 0


def test_piped_chat_input_sends_fenced_blocks_whole() -> None:
    from datasources.cli.chat import fence_open, piped_messages

    lines = ["hello\n", "```python\n", "a = 1\n", "\n", "print(a)\n", "```\n", "/sql select 1\n"]
    assert list(piped_messages(lines)) == [
        "hello", "```python\na = 1\n\nprint(a)\n```", "/sql select 1"
    ]  # fmt: skip
    assert list(piped_messages(["```py\n", "x"])) == ["```py\nx"]  # unclosed: sent at the end
    assert fence_open("```python\nx") and not fence_open("```python\nx\n```")
    assert not fence_open("run ```print(1)``` now")


def test_chat_in_a_real_terminal_sends_a_typed_block_whole(home: Path, folder: Path) -> None:
    """Typed into a pseudo-terminal: Enter inside an open ``` block starts a new line."""
    import pty
    import select
    import time

    ok(home, "sources", "add", "files", "--type", "local_folder", "-c", f"root={folder}")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DATASOURCES_")},
        "DATASOURCES_HOME": str(home),
        "DATASOURCES_SANDBOX_LIMITS__POOL_SIZE": "0",
        "DATASOURCES_LOCAL_FOLDER_ROOTS": str(folder),
        "TERM": "xterm",
        "COLUMNS": "120",
        "PROMPT_TOOLKIT_NO_CPR": "1",  # this pseudo-terminal answers no cursor queries
    }
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI in the terminal
        os.execve(sys.executable, [sys.executable, "-m", "datasources.cli", "chat"], env)
    seen = b""

    def read_until(marker: bytes, seconds: float = 60) -> None:
        nonlocal seen
        deadline = time.monotonic() + seconds
        while marker not in seen:
            left = deadline - time.monotonic()
            assert left > 0, f"{marker!r} never appeared in {seen[-2000:]!r}"
            ready, _, _ = select.select([fd], [], [], min(left, 1))
            if ready:
                try:
                    seen += os.read(fd, 65536)
                except OSError:
                    break

    try:
        read_until(b"you>")
        for line in ("```python", "x = 20 + 1", "print(x * 2, 'done')", "```"):
            os.write(fd, line.encode() + b"\r")
            time.sleep(0.2)  # typing speed: each key is handled before the next line
        read_until(b"42 done")
        assert b"NameError" not in seen
        os.write(fd, b"/quit\r")
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, seen[-2000:]
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_trusts_no_forwarding_proxy_unless_the_operator_names_one(
    home: Path, monkeypatch: pytest.MonkeyPatch, workers: str
) -> None:
    """Found by review: uvicorn's default trusts ``X-Forwarded-For`` from loopback, so any
    local client (every client of ``make run``) chose the address the sign-in limiter counts."""
    import uvicorn

    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: seen.append(kw))
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    ok(home, "serve", "--workers", workers)
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.0.0.7")
    ok(home, "serve", "--workers", workers)
    assert [kw["forwarded_allow_ips"] for kw in seen] == ["", "10.0.0.7"]
