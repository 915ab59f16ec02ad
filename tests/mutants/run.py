"""Break the safety mechanisms on purpose, one at a time, and check the tests notice.

``make mutants`` runs this. Each mutant is a small deliberate breakage of one boundary
(the workspace's path checks, the read-only SQL layers, the quotas). It is applied to a
temporary copy of the tree — never to the working tree — and the tests that claim to
guard that boundary are run against the copy. A mutant is *killed* when those tests fail;
every mutant must be killed, or the tests prove less than their names say. The unmutated
copy is run first and must pass, so a kill means the breakage was caught.

Mutants are written against stable entry points (a function redefined at the end of its
module, or one exact line replaced). When the code they target is rewritten, a mutant
that no longer applies stops the run with an error naming it: update it, do not drop it.

Usage: python tests/mutants/run.py [--list] [NAME ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
IGNORED = (".git", ".venv", "node_modules", ".cache", "__pycache__", ".mypy_cache",
           ".ruff_cache", ".pytest_cache", "*.egg-info")  # fmt: skip


@dataclass(frozen=True)
class Edit:
    """Replace ``old`` (which must occur exactly ``count`` times) by ``new`` in ``path``;
    with ``old`` empty, append ``new`` to the end of the module instead."""

    path: str
    new: str
    old: str = ""
    count: int = 1


@dataclass(frozen=True)
class Mutant:
    name: str
    what: str
    edits: tuple[Edit, ...]
    tests: tuple[str, ...]
    extra: tuple[str, ...] = field(default=())


WS = "src/datasources/workspace.py"
PG = "src/datasources/connectors/postgresql/session.py"
UNIT_PATHS = ("tests/unit/test_workspace.py", "tests/unit/test_local_folder.py")

MUTANTS = [
    Mutant(
        "containment-always-true",
        "workspace.resolve_inside joins and resolves but never checks containment",
        (
            Edit(
                WS,
                """

def resolve_inside(root: Path, relative: PurePosixPath | str) -> Path:  # MUTANT
    rel = relative if isinstance(relative, PurePosixPath) else PurePosixPath(str(relative))
    return root.resolve().joinpath(*rel.parts).resolve(strict=False)
""",
            ),
        ),
        UNIT_PATHS,
    ),
    Mutant(
        "names-never-refused",
        "workspace.safe_relative_path accepts every name as it is",
        (
            Edit(
                WS,
                """

def safe_relative_path(path: str, *, allow_reserved: bool = False) -> PurePosixPath:  # MUTANT
    return PurePosixPath(str(path).replace("\\\\", "/"))
""",
            ),
        ),
        UNIT_PATHS,
    ),
    Mutant(
        "path-checks-off",
        "both path layers off: names joined to the root and the workspace as they come",
        (
            Edit(
                WS,
                """

def safe_relative_path(path: str, *, allow_reserved: bool = False) -> PurePosixPath:  # MUTANT
    return PurePosixPath(str(path).replace("\\\\", "/"))


def resolve_inside(root: Path, relative: PurePosixPath | str) -> Path:  # MUTANT
    rel = relative if isinstance(relative, PurePosixPath) else PurePosixPath(str(relative))
    return root.resolve().joinpath(*rel.parts)
""",
            ),
        ),
        ("tests/unit/test_local_folder.py",),
    ),
    Mutant(
        "sql-parser-accepts-all",
        "the statement layer (pglast) finds no problem in any statement",
        (
            Edit(
                "src/datasources/sql_guard.py",
                """

import dataclasses as _mutant_dc  # MUTANT

_real_analyse = analyse


def analyse(sql: str) -> Statement:  # MUTANT
    try:
        return _mutant_dc.replace(_real_analyse(sql), problem=None)
    except ReadOnlyViolation:
        return Statement(problem=None)


def check_read_only(sql: str) -> str:  # MUTANT
    return sql
""",
            ),
        ),
        ("tests/integration/test_postgresql.py", "tests/api/test_query_refs.py"),
        ("-k", "each_layer_alone or query_references"),
    ),
    Mutant(
        "sql-catalog-accepts-all",
        "the catalog layer (functions by allow-list, relations by schemas) allows everything",
        (
            Edit(
                "src/datasources/sql_guard.py",
                "\n\nCatalog.check = lambda self, statement, schemas=None: None  # MUTANT\n",
            ),
        ),
        ("tests/integration/test_postgresql.py",),
        ("-k", "each_layer_alone"),
    ),
    Mutant(
        "sql-read-write-transaction",
        "queries run in a READ WRITE transaction on a session that defaults to writable",
        (
            Edit(
                PG,
                old='mode = "READ ONLY" if self.transaction_check else "READ WRITE"',
                new='mode = "READ WRITE"',
            ),
            Edit(
                PG,
                old='"default_transaction_read_only": "on" if self.transaction_check else "off",',
                new='"default_transaction_read_only": "off",',
            ),
        ),
        ("tests/integration/test_postgresql.py",),
        ("-k", "each_layer_alone"),
    ),
    Mutant(
        "sql-privileged-roles-allowed",
        "the privilege layer finds no privileged role on any connection",
        (
            Edit(
                PG,
                old="        reasons = privileges(role)\n",
                new="        reasons: list[str] = []  # MUTANT\n",
            ),
        ),
        ("tests/integration/test_postgresql.py",),
        ("-k", "privileged"),
    ),
    Mutant(
        "quota-never-exceeded-while-writing",
        "the chat's byte budget no longer caps the file being written",
        (
            Edit(
                WS,
                old="max_bytes = self.byte_budget if max_bytes is None "
                "else min(max_bytes, self.byte_budget)",
                new="pass",
            ),
        ),
        ("tests/unit/test_quota_while_fetching.py", "tests/api/test_quota.py"),
    ),
    Mutant(
        "quota-not-checked-before-fetching",
        "the chat fetches without comparing listed sizes to the quota left",
        (
            Edit(
                "src/datasources/chat/service.py",
                old="item.size is not None and item.size > workspace.byte_budget",
                new="False",
            ),
            Edit(
                "src/datasources/chat/service.py",
                old="if total > workspace.byte_budget:",
                new="if False:",
            ),
        ),
        ("tests/api/test_chat.py",),
        ("-k", "quota"),
    ),
    Mutant(
        "size-limit-never-exceeded",
        "max_download_bytes is checked neither before nor during a fetch",
        (
            Edit(WS, "\n\nAtomicFile._check_limit = lambda self, end: None  # MUTANT\n"),
            Edit(
                "src/datasources/connectors/base.py",
                "\n\nBaseConnector.check_size = lambda self, path, size: None  # MUTANT\n",
            ),
        ),
        ("tests/unit/test_quota_while_fetching.py", "tests/unit/test_local_folder.py"),
    ),
    Mutant(
        "azure-ranges-any-version",
        "Azure range requests no longer ask for the version that was described (If-Match)",
        (
            Edit(
                "src/datasources/connectors/azure_blob/transfer.py",
                old="""headers["If-Match"] = f'"{item.etag}"'""",
                new="pass",
                count=2,
            ),
        ),
        ("tests/integration/test_azure_consistency.py",),
    ),
    Mutant(
        "downloads-read-whole",
        "a local file is read whole into memory before it is streamed on",
        (
            Edit(
                "src/datasources/connectors/local_folder.py",
                old="while data := await asyncio.to_thread(os.read, fd, chunk_size):",
                new="while data := await asyncio.to_thread(os.read, fd, 1 << 30):",
            ),
        ),
        ("tests/api/test_remote_sources.py", "tests/unit/test_fetch_memory.py"),
        ("-k", "stream"),
    ),
    Mutant(
        "sandbox-keeps-root",
        "the launch neither drops to the sandbox uid nor checks it did: the code runs as root",
        (
            Edit(
                "src/datasources/sandbox/runtime.py",
                old="            os.setgid(identity.gid)\n            os.setuid(identity.uid)\n",
                new="            pass  # MUTANT: no setgid/setuid\n",
            ),
            Edit(  # and the launch's own last check that it is not root
                "src/datasources/sandbox/runtime.py",
                old="        if os.getuid() == 0 or os.geteuid() == 0:\n",
                new="        if False:  # MUTANT\n",
            ),
        ),
        ("tests/sandbox/test_isolation.py",),
        ("-k", "not_host_root or configured_uid"),
    ),
]


def _copy_tree(dest: Path) -> None:
    shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(*IGNORED), symlinks=True)


def _apply(tree: Path, mutant: Mutant) -> dict[Path, str]:
    originals: dict[Path, str] = {}
    for edit in mutant.edits:
        path = tree / edit.path
        if path not in originals:
            originals[path] = path.read_text()
        current = path.read_text()
        if edit.old:
            found = current.count(edit.old)
            if found != edit.count:
                raise SystemExit(
                    f"mutant {mutant.name}: {edit.old!r} occurs {found} times in {edit.path} "
                    f"(expected {edit.count}); the code moved: update the mutant"
                )
            current = current.replace(edit.old, edit.new)
        else:
            current += edit.new
        path.write_text(current)
    return originals


def _pytest(tree: Path, args: list[str], env: dict[str, str]) -> tuple[int, str]:
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
               "-rf", "-o", "addopts=", *args]  # fmt: skip
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    failed = [line.split(" - ")[0][7:] for line in lines if line.startswith("FAILED ")]
    summary = lines[-1] if lines else done.stderr.strip()[-300:]
    return done.returncode, (f"by {failed[0]}" if failed else summary)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="run only these mutants")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    options = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not options.names or m.name in options.names]
    if options.list or not chosen:
        for mutant in MUTANTS:
            print(f"{mutant.name:38} {mutant.what}")
        return 0 if chosen or options.list else 2
    with tempfile.TemporaryDirectory(prefix="datasources-mutants-") as tmp:
        tree = Path(tmp) / "tree"
        _copy_tree(tree)
        env = {**os.environ, "PYTHONPATH": str(tree / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
        where = subprocess.run(
            [sys.executable, "-c", "import datasources; print(datasources.__file__)"],
            cwd=tree, env=env, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        if not Path(where).is_relative_to(tree):
            print(f"the copy's package is not the one imported ({where}); aborting")
            return 2
        print(f"Baseline: the unmutated copy at {tree}")
        for mutant in chosen:
            code, summary = _pytest(tree, [*mutant.tests, *mutant.extra], env)
            if code != 0:
                print(f"  {mutant.name}: its tests fail without the mutant: {summary}")
                return 2
        results: list[tuple[Mutant, str, str, float]] = []
        for mutant in chosen:
            originals = _apply(tree, mutant)
            start = time.monotonic()
            try:
                code, summary = _pytest(tree, [*mutant.tests, *mutant.extra], env)
            finally:
                for path, text in originals.items():
                    path.write_text(text)
            verdict = {0: "SURVIVED", 1: "killed"}.get(code, f"error (pytest exit {code})")
            results.append((mutant, verdict, summary, time.monotonic() - start))
            print(f"  {mutant.name:38} {verdict:9} {summary}", flush=True)
    print()
    print(f"{'mutant':38} {'verdict':9} {'time':>6}  what it breaks")
    for mutant, verdict, _summary, seconds in results:
        print(f"{mutant.name:38} {verdict:9} {seconds:5.1f}s  {mutant.what}")
    killed = sum(verdict == "killed" for _m, verdict, _s, _t in results)
    print(f"\n{killed} of {len(results)} mutants killed")
    return 0 if killed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
