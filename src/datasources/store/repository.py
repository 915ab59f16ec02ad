"""The store: opening (with migrations), and the data-source repository.

Length: one repository class with one short method per query (sources, keys, chats,
messages); it reads as a list, just over the limit.
"""

from __future__ import annotations

import asyncio
import builtins
import fcntl
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, delete, select, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import StaticPool

from datasources.errors import (
    AlreadyExistsError,
    ConfigurationError,
    NotFoundError,
    UnavailableError,
)
from datasources.store.accounts import AccountsMixin
from datasources.store.changes import Change, ChangeAnnouncer
from datasources.store.models import (
    ApiKeyRow,
    Base,
    ChatRow,
    DataSourceRow,
    MessageRow,
    UserRow,
)

__all__ = ["Store", "StoredApiKey", "StoredChat", "StoredMessage", "StoredSource"]

logger = logging.getLogger(__name__)

_MIGRATIONS = Path(__file__).parent / "migrations"
_SOURCES = DataSourceRow.__table__
_KEYS = ApiKeyRow.__table__
_CHATS = ChatRow.__table__
_MESSAGES = MessageRow.__table__
_MIGRATION_LOCK_ID = 0x6461746173  # "datas": serialises replicas migrating one database


@dataclass(frozen=True)
class StoredSource:
    """A data source as stored: plain config plus encrypted secret tokens."""

    owner: str
    id: str
    name: str
    type: str
    description: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    read_only: bool = False
    tags: list[str] = field(default_factory=list)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def with_changes(self, **changes: Any) -> StoredSource:
        """A copy with some fields replaced."""
        return replace(self, **changes)


@dataclass(frozen=True)
class StoredApiKey:
    """An API key as stored: its public id, name, owner and the hash of its secret."""

    id: str
    name: str
    owner: str
    secret_hash: str = field(repr=False)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    revoked_at: datetime | None = None


def _key_record(row: Any) -> StoredApiKey:
    return StoredApiKey(
        id=row.id,
        name=row.name,
        owner=row.owner,
        secret_hash=row.secret_hash,
        created_at=_aware(row.created_at),
        revoked_at=_aware(row.revoked_at) if row.revoked_at is not None else None,
    )


@dataclass(frozen=True)
class StoredChat:
    """A chat as stored."""

    id: str
    owner: str
    title: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class StoredMessage:
    """A chat message as stored: content, references and the reply's typed parts."""

    id: str
    chat_id: str
    role: str
    content: str
    refs: list[dict[str, Any]]
    parts: list[dict[str, Any]]
    created_at: datetime


def _chat_record(row: Any) -> StoredChat:
    return StoredChat(
        id=row.id,
        owner=row.owner,
        title=row.title,
        created_at=_aware(row.created_at),
        updated_at=_aware(row.updated_at),
    )


def _message_record(row: Any) -> StoredMessage:
    return StoredMessage(
        id=row.id,
        chat_id=row.chat_id,
        role=row.role,
        content=row.content,
        refs=list(row.refs or []),
        parts=list(row.parts or []),
        created_at=_aware(row.created_at),
    )


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _to_record(row: Any) -> StoredSource:
    """A StoredSource from an ORM row or a Core row (same attribute names)."""
    return StoredSource(
        owner=row.owner,
        id=row.id,
        name=row.name,
        type=row.type,
        description=row.description or "",
        config=dict(row.config or {}),
        secrets=dict(row.secrets or {}),
        read_only=bool(row.read_only),
        tags=list(row.tags or []),
        created_at=_aware(row.created_at),
        updated_at=_aware(row.updated_at),
    )


def _run_migrations(connection: Connection) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


class Store(ChangeAnnouncer, AccountsMixin):
    """The registry's database.

    Args:
        url: SQLAlchemy async URL (``sqlite+aiosqlite:///…`` or ``postgresql+asyncpg://…``).
        migrate: Run Alembic migrations on open (``create_all`` for in-memory SQLite).
    """

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self._url = url
        self._migrate = migrate
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[Any] | None = None
        self._reader: Engine | None = None
        self._observers = []

    @classmethod
    def memory(cls) -> Store:
        """A private in-memory SQLite store (for ``DataSourceRegistry()``)."""
        return cls("sqlite+aiosqlite://", migrate=False)

    def __repr__(self) -> str:
        url = make_url(self._url)
        return f"Store({url.render_as_string(hide_password=True)!r})"

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite database file, if this is a file-backed SQLite store."""
        url = make_url(self._url)
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            return Path(url.database or "")
        return None

    async def open(self) -> None:
        """Create the engine and bring the schema up to date."""
        if self._engine is not None:
            return
        try:
            url = make_url(self._url)
        except sa_exc.ArgumentError:
            raise ConfigurationError("The store's database URL is malformed.") from None
        kwargs: dict[str, Any] = {}
        path = self.sqlite_path
        if url.get_backend_name() == "sqlite":
            if path is None:
                kwargs["poolclass"] = StaticPool
            else:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                if not path.exists():  # the store holds only tokens, but keep it private
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        else:
            kwargs.update(pool_pre_ping=True, pool_size=5, max_overflow=10)
        try:
            engine = create_async_engine(url, **kwargs)
        except (sa_exc.ArgumentError, ModuleNotFoundError):
            raise ConfigurationError(
                "The store's database URL names an unsupported driver; use sqlite+aiosqlite or "
                "postgresql+asyncpg."
            ) from None
        if url.get_backend_name() == "sqlite":
            from sqlalchemy import event

            @event.listens_for(engine.sync_engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                cursor = dbapi_conn.cursor()
                cursor.execute("PRAGMA foreign_keys=ON")
                if path is not None:
                    cursor.execute("PRAGMA journal_mode=WAL")
                    cursor.execute("PRAGMA busy_timeout=5000")
                cursor.close()

        lock_fd: int | None = None
        try:
            if path is not None and self._migrate:
                # Several workers opening one SQLite file must not migrate it at once
                # (PostgreSQL gets an advisory lock below instead).
                lock_fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
                await asyncio.to_thread(fcntl.flock, lock_fd, fcntl.LOCK_EX)
            async with engine.begin() as conn:
                if not self._migrate:
                    await conn.run_sync(Base.metadata.create_all)
                else:
                    if url.get_backend_name() == "postgresql":
                        await conn.execute(
                            text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID}
                        )
                    await conn.run_sync(_run_migrations)
        except (OSError, sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
            await engine.dispose()
            logger.error("Cannot open the store: %s", exc)
            raise UnavailableError("The registry's database cannot be reached.") from None
        except BaseException:
            await engine.dispose()
            raise
        finally:
            if lock_fd is not None:
                os.close(lock_fd)  # closing releases the lock
        self._engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        if path is not None:
            # Reads on a SQLite file run in one worker-thread hop on a plain sqlite3
            # connection: aiosqlite's hop per cursor call cost ~1 ms a query here (5x).
            self._reader = create_engine(
                f"sqlite:///{path}", connect_args={"check_same_thread": False, "timeout": 5}
            )

    async def close(self) -> None:
        """Dispose of the engine. Safe to call twice."""
        if self._engine is not None:
            await self._engine.dispose()
        if self._reader is not None:
            await asyncio.to_thread(self._reader.dispose)
        self._engine = None
        self._reader = None
        self._sessions = None

    def _session(self) -> Any:
        if self._sessions is None:
            raise UnavailableError("The store is not open.")
        return self._sessions()

    async def ping(self) -> bool:
        """Whether the database answers."""
        try:
            async with self._session() as session:
                await session.execute(text("SELECT 1"))
            return True
        except (UnavailableError, sa_exc.SQLAlchemyError, OSError):
            return False

    # -- repository ------------------------------------------------------------------

    async def add(self, record: StoredSource) -> StoredSource:
        """Insert; :class:`AlreadyExistsError` if the id or name is taken for that owner."""
        row = DataSourceRow(**asdict(record))
        change = Change("source", record.id, record.owner)
        try:
            async with self._session() as session, session.begin():
                session.add(row)
                await session.flush()
                await self._announce(session, change)
        except sa_exc.IntegrityError:
            raise AlreadyExistsError(
                f"A data source with id {record.id!r} or name {record.name!r} already exists."
            ) from None
        await self._told(change)
        return record

    async def _read(self, query: Any) -> builtins.list[Any]:
        """Rows of a Core SELECT, by the fastest path this database has."""
        if self._reader is not None:
            reader = self._reader

            def run() -> builtins.list[Any]:
                with reader.connect() as conn:
                    return builtins.list(conn.execute(query).all())

            try:
                return await asyncio.to_thread(run)
            except sa_exc.OperationalError as exc:
                logger.error("Store read failed: %s", type(exc).__name__)
                raise UnavailableError("The registry's database cannot be read.") from None
        if self._engine is None:
            raise UnavailableError("The store is not open.")
        async with self._engine.connect() as conn:
            return builtins.list((await conn.execute(query)).all())

    async def get(self, owner: str, source_id: str) -> StoredSource | None:
        """One source of ``owner`` by id."""
        rows = await self._read(
            select(_SOURCES).where(_SOURCES.c.owner == owner, _SOURCES.c.id == source_id)
        )
        return _to_record(rows[0]) if rows else None

    async def get_by_name(self, owner: str, name: str) -> StoredSource | None:
        """One source of ``owner`` by its unique name."""
        rows = await self._read(
            select(_SOURCES).where(_SOURCES.c.owner == owner, _SOURCES.c.name == name)
        )
        return _to_record(rows[0]) if rows else None

    async def list(
        self, owner: str, *, limit: int | None = None, after_id: str | None = None
    ) -> builtins.list[StoredSource]:
        """Sources of ``owner`` in id order; keyset-paginated with ``after_id``."""
        query = select(_SOURCES).where(_SOURCES.c.owner == owner).order_by(_SOURCES.c.id)
        if after_id is not None:
            query = query.where(_SOURCES.c.id > after_id)
        if limit is not None:
            query = query.limit(limit)
        return [_to_record(r) for r in await self._read(query)]

    async def update(self, record: StoredSource) -> StoredSource:
        """Replace a stored source's mutable fields."""
        change = Change("source", record.id, record.owner)
        try:
            async with self._session() as session, session.begin():
                row = await session.get(
                    DataSourceRow, (record.owner, record.id), with_for_update=True
                )
                if row is None:
                    raise NotFoundError(f"Data source {record.id!r} not found.")
                row.name = record.name
                row.description = record.description
                row.config = record.config
                row.secrets = record.secrets
                row.read_only = record.read_only
                row.tags = record.tags
                row.updated_at = record.updated_at
                await session.flush()
                await self._announce(session, change)
        except sa_exc.IntegrityError:
            raise AlreadyExistsError(
                f"A data source named {record.name!r} already exists."
            ) from None
        await self._told(change)
        return record

    async def delete(self, owner: str, source_id: str) -> bool:
        """Delete; whether a row was removed."""
        change = Change("source", source_id, owner)
        async with self._session() as session, session.begin():
            result = await session.execute(
                delete(DataSourceRow).where(
                    DataSourceRow.owner == owner, DataSourceRow.id == source_id
                )
            )
            removed = bool(getattr(result, "rowcount", 0))
            if removed:
                await self._announce(session, change)
        if removed:
            await self._told(change)
        return removed

    async def transform_secrets(self, transform: Callable[[StoredSource], dict[str, str]]) -> int:
        """Rewrite every source's secret tokens in one transaction (all or nothing).

        ``transform`` gets each source that has secrets and returns its new tokens; if it
        raises for any source, nothing is written. Returns how many sources changed.
        """
        changed = 0
        async with self._session() as session, session.begin():
            query = select(DataSourceRow).order_by(DataSourceRow.owner, DataSourceRow.id)
            if self.dialect == "postgresql":
                query = query.with_for_update()
            result = await session.execute(query)
            for row in result.scalars():
                if not row.secrets:
                    continue
                row.secrets = transform(_to_record(row))
                changed += 1
        return changed

    # -- API keys --------------------------------------------------------------------

    async def add_api_key(self, key: StoredApiKey) -> StoredApiKey:
        """Insert a key (ids are random; a clash is an error, never an overwrite)."""
        try:
            async with self._session() as session, session.begin():
                session.add(ApiKeyRow(**asdict(key)))
        except sa_exc.IntegrityError:
            raise AlreadyExistsError(f"An API key with id {key.id!r} already exists.") from None
        return key

    async def get_api_key(self, key_id: str) -> StoredApiKey | None:
        """One key by id, revoked or not."""
        rows = await self._read(select(_KEYS).where(_KEYS.c.id == key_id))
        return _key_record(rows[0]) if rows else None

    async def list_api_keys(self, owner: str | None = None) -> builtins.list[StoredApiKey]:
        """Every key (or one owner's), oldest first."""
        query = select(ApiKeyRow).order_by(ApiKeyRow.created_at, ApiKeyRow.id)
        if owner is not None:
            query = query.where(ApiKeyRow.owner == owner)
        async with self._session() as session:
            result = await session.execute(query)
            return [_key_record(r) for r in result.scalars()]

    async def owner_exists(self, owner: str) -> bool:
        """Whether any key (revoked or not), user or data source belongs to ``owner``."""
        async with self._session() as session:
            for model in (ApiKeyRow, UserRow, DataSourceRow):
                result = await session.execute(
                    select(model.owner).where(model.owner == owner).limit(1)
                )
                if result.first() is not None:
                    return True
        return False

    async def revoke_api_key(self, key_id: str, when: datetime) -> bool:
        """Mark a key revoked; whether it existed and was active."""
        change = Change("api_key", key_id)
        async with self._session() as session, session.begin():
            row = await session.get(ApiKeyRow, key_id, with_for_update=True)
            if row is None or row.revoked_at is not None:
                return False
            row.revoked_at = when
            await session.flush()
            await self._announce(session, change)
        await self._told(change)
        return True

    # -- chats -----------------------------------------------------------------------

    async def add_chat(self, chat: StoredChat) -> StoredChat:
        async with self._session() as session, session.begin():
            session.add(ChatRow(**asdict(chat)))
        return chat

    async def get_chat(self, owner: str, chat_id: str) -> StoredChat | None:
        rows = await self._read(
            select(_CHATS).where(_CHATS.c.owner == owner, _CHATS.c.id == chat_id)
        )
        return _chat_record(rows[0]) if rows else None

    async def list_chats(
        self, owner: str, *, limit: int, after_id: str | None = None
    ) -> builtins.list[StoredChat]:
        query = select(_CHATS).where(_CHATS.c.owner == owner).order_by(_CHATS.c.id).limit(limit)
        if after_id is not None:
            query = query.where(_CHATS.c.id > after_id)
        return [_chat_record(r) for r in await self._read(query)]

    async def list_old_chats(self, before: datetime) -> builtins.list[StoredChat]:
        """Chats of every owner untouched since ``before``."""
        query = select(_CHATS).where(_CHATS.c.updated_at < before).limit(1000)
        return [_chat_record(r) for r in await self._read(query)]

    async def touch_chat(self, chat_id: str, when: datetime) -> None:
        async with self._session() as session, session.begin():
            row = await session.get(ChatRow, chat_id)
            if row is not None:
                row.updated_at = when

    async def rename_chat(
        self, owner: str, chat_id: str, title: str, when: datetime
    ) -> StoredChat | None:
        """Give a chat of ``owner`` a new title; None if there is no such chat."""
        async with self._session() as session, session.begin():
            row = await session.get(ChatRow, chat_id, with_for_update=True)
            if row is None or row.owner != owner:
                return None
            row.title = title
            row.updated_at = when
            return _chat_record(row)

    async def delete_chat(self, owner: str, chat_id: str) -> bool:
        async with self._session() as session, session.begin():
            await session.execute(delete(MessageRow).where(MessageRow.chat_id == chat_id))
            result = await session.execute(
                delete(ChatRow).where(ChatRow.owner == owner, ChatRow.id == chat_id)
            )
            return bool(getattr(result, "rowcount", 0))

    async def add_message(self, message: StoredMessage) -> StoredMessage:
        async with self._session() as session, session.begin():
            session.add(MessageRow(**asdict(message)))
        return message

    async def list_messages(
        self, chat_id: str, *, limit: int, after_id: str | None = None
    ) -> builtins.list[StoredMessage]:
        query = (
            select(_MESSAGES)
            .where(_MESSAGES.c.chat_id == chat_id)
            .order_by(_MESSAGES.c.id)
            .limit(limit)
        )
        if after_id is not None:
            query = query.where(_MESSAGES.c.id > after_id)
        return [_message_record(r) for r in await self._read(query)]
