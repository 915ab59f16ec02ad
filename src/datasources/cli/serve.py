"""``datasources serve``: the HTTP service; ``--demo`` is the embedded default (``make run``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from datasources.cli.common import err, get_state, out, run_command
from datasources.cli.demo import copy_samples
from datasources.config import Settings
from datasources.errors import NotFoundError
from datasources.keys import ApiKeys
from datasources.models import DataSourceConfig
from datasources.registry import DataSourceRegistry
from datasources.users import Users

__all__ = ["DEMO_USER", "DemoUser", "prepare_demo", "prepare_demo_user", "serve"]

DEMO_USER = "demo"


async def prepare_demo(settings: Settings, *, new_key: bool = False) -> str:
    """Register the sample folder; the demo key, kept across runs (a new one if asked).

    The key itself is kept in ``<home>/demo.key`` (0600) beside the store and the
    encryption key, so that scripts written against one ``make run`` keep working after
    the next; the store holds only its hash, as for every key. A missing, unreadable or
    revoked key, or ``new_key``, mints a fresh one and revokes the older demo keys.
    """
    samples = copy_samples(settings)
    async with DataSourceRegistry.from_settings(settings) as registry:
        try:
            await registry.get_data_source("samples")
        except NotFoundError:
            await registry.register_data_source(
                DataSourceConfig(
                    name="samples",
                    type="local_folder",
                    description="Sample CSV and Parquet files bundled with datasources",
                    config={"root": str(samples)},
                    read_only=True,
                    tags=["demo"],
                )
            )
        keys = ApiKeys(registry.store, cache_seconds=0)
        kept_file = settings.home / "demo.key"
        if not new_key:
            kept = await asyncio.to_thread(_read_private, kept_file)
            if kept is not None and await keys.authenticate(kept) is not None:
                return kept
        for old in await keys.list_keys(owner=settings.owner):
            if old.name == "demo" and old.revoked_at is None:
                await keys.revoke(old.id)
        created = await keys.create("demo", owner=settings.owner)
        await asyncio.to_thread(_write_private, kept_file, created.key + "\n")
        return created.key


@dataclass(frozen=True)
class DemoUser:
    """The workbench's demo user as ``serve --demo`` left it.

    Attributes:
        name: The sign-in name (``demo``).
        password_file: Where its password is kept (0600), or None when the demo does not
            know the password (a ``demo`` user someone made for another owner).
        disabled: Whether the operator disabled it (left so; the banner says how to undo).
    """

    name: str
    password_file: Path | None
    disabled: bool = False


async def prepare_demo_user(settings: Settings) -> DemoUser:
    """The workbench's demo user for the demo owner, its password kept in a 0600 file.

    Made once and kept across runs, like the demo key: the random password is written to
    ``<home>/demo.password`` and never printed or logged, so the banner names the file
    rather than the secret. A missing, unreadable, others-readable or no longer matching
    file gets a new password (the old one's sessions end). Call it after
    :func:`prepare_demo`, whose key makes the demo owner exist. A ``demo`` user that
    someone made for another owner, or disabled, is left alone.
    """
    kept_file = settings.home / "demo.password"
    async with DataSourceRegistry.from_settings(settings) as registry:
        users = Users(registry.store)
        try:
            user = await users.get(DEMO_USER)
        except NotFoundError:
            password = secrets.token_urlsafe(18)
            await asyncio.to_thread(_write_private, kept_file, password + "\n")
            await users.create(DEMO_USER, password, owner=settings.owner)
            return DemoUser(DEMO_USER, kept_file)
        if user.owner != settings.owner:
            return DemoUser(DEMO_USER, None, disabled=not user.active)
        if not user.active:
            return DemoUser(DEMO_USER, kept_file, disabled=True)
        kept = await asyncio.to_thread(_read_private, kept_file)
        if kept is None or await users.verify(DEMO_USER, kept) is None:
            password = secrets.token_urlsafe(18)
            await asyncio.to_thread(_write_private, kept_file, password + "\n")
            await users.set_password(user.id, password)
        return DemoUser(DEMO_USER, kept_file)


def _read_private(path: Path) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, encoding="utf-8") as handle:
        if os.fstat(handle.fileno()).st_mode & 0o077:
            return None  # readable by others: not trusted, replaced by a new key
        text = handle.read(256).strip()
    return text or None


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` as a 0600 file, atomically (a new file renamed over)."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def _workbench_line(base: str, user: DemoUser) -> str:
    if user.password_file is None:
        return (
            f"Workbench: open {base}/ and sign in as a user of yours (the user {user.name!r} "
            "belongs to another owner; datasources users create NAME makes one)."
        )
    if user.disabled:
        return (
            f"Workbench: open {base}/ — the user {user.name!r} is disabled "
            f"(datasources users enable {user.name})."
        )
    return (
        f"Workbench: open {base}/ and sign in as {user.name} with the password in "
        f"{user.password_file}"
    )


def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Interface (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default 1).")] = None,
    demo_mode: Annotated[
        bool,
        typer.Option(
            "--demo",
            help="Embedded default: register the sample folder, allow loopback sources and "
            "print the demo API key (kept across runs in <home>/demo.key).",
        ),
    ] = False,
    new_key: Annotated[
        bool, typer.Option("--new-key", help="With --demo: revoke the demo key, make a new one.")
    ] = False,
) -> None:
    """Run the HTTP service (FastAPI on uvicorn)."""
    import uvicorn

    state = get_state(ctx)
    settings = state.settings()
    api = settings.api.model_copy(
        update={
            k: v
            for k, v in {"host": host, "port": port, "workers": workers}.items()
            if v is not None
        }
    )
    settings = settings.model_copy(update={"api": api})
    if demo_mode:
        # The embedded default on one machine: sources on loopback (a local PostgreSQL,
        # Azurite) and the sample folder are allowed; say so, since a shared service
        # must not do this.
        roots = [*settings.local_folder_roots, settings.home / "demo"]
        settings = settings.model_copy(
            update={"allow_private_networks": True, "local_folder_roots": roots}
        )
        key = run_command(prepare_demo(settings, new_key=new_key))
        demo_user = run_command(prepare_demo_user(settings))
        base = f"http://{api.host}:{api.port}"
        out.print(
            "[bold]datasources[/] — embedded default (SQLite store and key file in "
            f"{settings.home}); loopback sources allowed."
        )
        out.print(
            "Local folders allowed under: "
            + ", ".join(str(r) for r in settings.local_folder_roots)
            + " (add more with DATASOURCES_LOCAL_FOLDER_ROOTS).",
            markup=False,
        )
        out.print(
            f"API key (owner local; kept in {settings.home / 'demo.key'} across runs, "
            "--new-key for a fresh one):"
        )
        out.print(key, markup=False)
        out.print("Try:", markup=False)
        out.print(
            f'  curl -H "Authorization: Bearer {key}" {base}/api/v1/datasources', markup=False
        )
        out.print(
            f'  curl -H "Authorization: Bearer {key}" "{base}/api/v1/datasources/samples/items"',
            markup=False,
        )
        out.print(f"  API docs in a browser: {base}/docs", markup=False)
        out.print(_workbench_line(base, demo_user), markup=False)
    else:
        err.print(
            f"datasources: serving http://{api.host}:{api.port} (API docs at /docs); "
            f"state in {settings.home}. Ctrl-C stops it.",
            markup=False,
        )
    level = "debug" if state.verbose else settings.log_level.lower()
    logging.getLogger("datasources.access").setLevel(logging.INFO)
    if api.workers > 1:
        # Each worker builds its own app from the environment: hand the settings over.
        os.environ["DATASOURCES_HOME"] = str(settings.home)
        os.environ["DATASOURCES_ALLOW_PRIVATE_NETWORKS"] = str(settings.allow_private_networks)
        os.environ["DATASOURCES_LOCAL_FOLDER_ROOTS"] = ",".join(
            str(r) for r in settings.local_folder_roots
        )
        uvicorn.run(
            "datasources.api.app:create_app",
            factory=True,
            host=api.host,
            port=api.port,
            workers=api.workers,
            log_config=None,
            log_level=level,
            access_log=False,
            forwarded_allow_ips=_trusted_proxies(),
        )
        return
    from datasources.api import create_app

    uvicorn.run(
        create_app(settings),
        host=api.host,
        port=api.port,
        log_config=None,
        log_level=level,
        access_log=False,
        forwarded_allow_ips=_trusted_proxies(),
    )


def _trusted_proxies() -> str:
    """Peers whose ``X-Forwarded-For``/``-Proto`` are believed: only those the operator
    names in ``FORWARDED_ALLOW_IPS``. uvicorn's own default trusts loopback, which lets any
    local client pick the address the sign-in limiter counts."""
    return os.environ.get("FORWARDED_ALLOW_IPS", "")
