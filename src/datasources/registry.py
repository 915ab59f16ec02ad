"""The registry: which data sources exist, what serves them, and pooled access to them.

Connector classes are found by type name, lazily: built-ins by dotted path, third-party
ones through the entry-point group ``datasources.connectors``. Sources are kept in a
:class:`~datasources.store.Store` (in memory by default, SQLite or PostgreSQL with
:meth:`DataSourceRegistry.from_settings`), with secret fields encrypted one by one.

Each source has one live connector per process (:mod:`datasources.lifecycle`), opened
on first use and closed when the source changes, is removed or the registry closes; it
owns the source's driver pool (``Settings.pool``)::

    async with DataSourceRegistry.from_settings(settings) as registry:
        await registry.register_data_source(DataSourceConfig(...))
        async with registry.get_connector("my-folder") as connector:
            await connector.list_items()

``await registry.get_connector(id)`` (the earlier system's shape) returns the same shared
connector; its ``disconnect()`` does nothing, since the registry owns it.
"""

from __future__ import annotations

import asyncio
import bisect
import importlib
import logging
import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import entry_points
from typing import Any, Self

from pydantic import ValidationError

from datasources.config import PoolSettings, Settings
from datasources.connectors.base import (
    BaseConnector,
    ConnectorConfig,
    DriverLimits,
    validation_problems,
)
from datasources.credentials import MASK, CredentialManager
from datasources.errors import (
    AlreadyExistsError,
    ConfigurationError,
    DataSourceError,
    MissingDependencyError,
    NotFoundError,
    UnknownDataSourceTypeError,
)
from datasources.lifecycle import Live, LiveConnectors, PoolStats
from datasources.models import ConnectionStatus, DataSourceConfig
from datasources.netpolicy import OutboundPolicy
from datasources.store import Store, StoredSource

__all__ = ["ENTRY_POINT_GROUP", "ConnectorLease", "DataSourceRegistry"]

logger = logging.getLogger(__name__)

_LISTING_CACHE_MAX = 1000
"""Owners with more sources than this are listed from the store every time."""

ENTRY_POINT_GROUP = "datasources.connectors"

# type -> "module:Class". Imported only when a source of that type is used.
_BUILTINS: dict[str, str] = {
    "local_folder": "datasources.connectors.local_folder:LocalFolderConnector",
    "azure_blob": "datasources.connectors.azure_blob:AzureBlobConnector",
    "postgresql": "datasources.connectors.postgresql:PostgreSQLConnector",
}
# type -> the extra that installs its dependencies.
_EXTRAS: dict[str, str] = {"azure_blob": "azure", "postgresql": "postgresql"}

_UPDATABLE = frozenset({"name", "description", "config", "read_only", "tags"})


def _load_class(type_name: str, target: str) -> type[BaseConnector[Any]]:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or "a required package"
        if missing == module_name or module_name.startswith(f"{missing}."):
            raise UnknownDataSourceTypeError(
                f"The connector module for type {type_name!r} cannot be found."
            ) from None
        extra = _EXTRAS.get(type_name)
        hint = f"pip install 'datasources[{extra}]'" if extra else f"pip install {missing}"
        raise MissingDependencyError(
            f"The {type_name} connector needs the package {missing!r}: {hint}",
            details={"package": missing, "install": hint},
        ) from None
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseConnector)):
        raise UnknownDataSourceTypeError(f"{target!r} is not a connector class.")
    return cls


@dataclass
class _Listing:
    """One owner's sources as cached: models and their JSON documents, in id order."""

    expires: float
    ids: list[str]
    sources: list[DataSourceConfig]
    documents: list[bytes]

    def window(self, limit: int | None, after: str | None) -> tuple[int, int]:
        start = bisect.bisect_right(self.ids, after) if after is not None else 0
        return start, len(self.ids) if limit is None else start + limit


@dataclass
class _Shared:
    """State shared by a registry and its owner-scoped views."""

    store: Store
    credentials: CredentialManager
    pool_settings: PoolSettings
    outbound: OutboundPolicy | None = None
    allow_privileged_roles: bool = False
    classes: dict[str, type[BaseConnector[Any]]] = field(default_factory=dict)
    live: LiveConnectors = field(init=False)
    listings: dict[str, _Listing] = field(default_factory=dict)
    refreshing: dict[str, asyncio.Future[_Listing | None]] = field(default_factory=dict)
    generations: dict[str, int] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    opened: bool = False
    closed: bool = False

    def __post_init__(self) -> None:
        self.live = LiveConnectors(revalidate_after=self.pool_settings.revalidate_after)

    @property
    def limits(self) -> DriverLimits:
        settings = self.pool_settings
        return DriverLimits(
            max_connections=settings.max_connections,
            min_connections=settings.min_size,
            idle_timeout=settings.idle_timeout,
            max_lifetime=settings.max_lifetime,
            acquire_timeout=settings.acquire_timeout,
        )


class ConnectorLease:
    """What :meth:`DataSourceRegistry.get_connector` returns.

    ``async with lease as connector`` borrows the source's live connector for the block
    (a connector replaced meanwhile is closed only after its borrowers are done);
    ``await lease`` returns the same shared connector, whose ``disconnect()`` does
    nothing: the registry closes it.
    """

    def __init__(self, registry: DataSourceRegistry, ref: str) -> None:
        self._registry = registry
        self._ref = ref
        self._live: Live | None = None

    async def __aenter__(self) -> BaseConnector[Any]:
        live = await self._registry._live(self._ref)
        self._registry._shared.live.borrow(live)
        self._live = live
        return live.connector

    async def __aexit__(self, *exc: Any) -> None:
        live, self._live = self._live, None
        if live is not None:
            await self._registry._shared.live.release(live)

    def __await__(self) -> Generator[Any, None, BaseConnector[Any]]:
        return self._registry._shared_connector(self._ref).__await__()


class DataSourceRegistry:
    """Registered data sources of one owner, their connectors and their pools.

    Args:
        store: Where sources are kept; default a private in-memory store.
        credentials: Encrypts secret fields; default an ephemeral in-memory key (for
            the in-memory store only: a persistent store needs a real key).
        owner: Whose sources this registry sees.
        pool_settings: Limits of each source's driver pool (per process).
        outbound: The outbound-target policy sources are checked against (None: none).
        allow_privileged_roles: The operator's opt-in to database sources whose role is
            privileged (``Settings.allow_privileged_database_roles``).
    """

    def __init__(
        self,
        *,
        store: Store | None = None,
        credentials: CredentialManager | None = None,
        owner: str = "local",
        pool_settings: PoolSettings | None = None,
        outbound: OutboundPolicy | None = None,
        allow_privileged_roles: bool = False,
    ) -> None:
        if credentials is None:
            # An in-memory store dies with the process, and so does this key.
            credentials = CredentialManager.ephemeral() if store is None else CredentialManager()
        self._shared = _Shared(
            store=store or Store.memory(),
            credentials=credentials,
            pool_settings=pool_settings or PoolSettings(),
            outbound=outbound,
            allow_privileged_roles=allow_privileged_roles,
        )
        self.owner = owner

    @classmethod
    def from_settings(
        cls, settings: Settings, *, enforce_outbound: bool = False
    ) -> DataSourceRegistry:
        """A persistent registry: the configured store, keys and pool limits.

        ``enforce_outbound`` applies the settings' outbound-target policy (the HTTP
        service does; the CLI, run by the operator, does not).
        """
        keys = settings.key_list()
        credentials = (
            CredentialManager(keys)
            if keys
            else CredentialManager.from_key_file(
                settings.resolved_key_file, create=settings.create_key_file
            )
        )
        return cls(
            store=Store(settings.resolved_database_url),
            credentials=credentials,
            owner=settings.owner,
            pool_settings=settings.pool,
            outbound=settings.outbound_policy() if enforce_outbound else None,
            allow_privileged_roles=settings.allow_privileged_database_roles,
        )

    def scoped(self, owner: str) -> DataSourceRegistry:
        """A view of the same store and connectors that sees only ``owner``'s sources."""
        view = object.__new__(DataSourceRegistry)
        view._shared = self._shared
        view.owner = owner
        return view

    def __repr__(self) -> str:
        return f"DataSourceRegistry(owner={self.owner!r}, store={self._shared.store!r})"

    @property
    def store(self) -> Store:
        """The underlying store."""
        return self._shared.store

    @property
    def outbound(self) -> OutboundPolicy | None:
        """The outbound-target policy sources are checked against (None: none)."""
        return self._shared.outbound

    @property
    def credentials(self) -> CredentialManager:
        """The credential manager."""
        return self._shared.credentials

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        """Open the store (runs migrations). Called implicitly by the first operation."""
        shared = self._shared
        if shared.opened:
            return
        async with shared.lock:
            if not shared.opened:
                await shared.store.open()
                shared.opened = True

    async def close(self) -> None:
        """Close every source's connector (borrowers get a few seconds) and the store."""
        shared = self._shared
        await shared.live.close()
        await shared.store.close()
        shared.opened = False

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- connector classes -------------------------------------------------------------

    def register_connector_class(self, type_name: str, cls: type[BaseConnector[Any]]) -> None:
        """Serve ``type_name`` with ``cls`` (overrides built-ins and entry points)."""
        if not (isinstance(cls, type) and issubclass(cls, BaseConnector)):
            raise ConfigurationError(f"{cls!r} is not a BaseConnector subclass.")
        self._shared.classes[str(type_name)] = cls

    def connector_class(self, type_name: str) -> type[BaseConnector[Any]]:
        """The connector class for a type: registered, built-in or from an entry point."""
        type_name = str(type_name)
        classes = self._shared.classes
        if type_name in classes:
            return classes[type_name]
        if type_name in _BUILTINS:
            cls = _load_class(type_name, _BUILTINS[type_name])
        else:
            matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == type_name]
            if not matches:
                known = ", ".join(self.available_types())
                extra = _EXTRAS.get(type_name)
                hint = f" (it may need: pip install 'datasources[{extra}]')" if extra else ""
                raise UnknownDataSourceTypeError(
                    f"No connector is installed for type {type_name!r}{hint}. Available: {known}.",
                    details={"type": type_name},
                )
            cls = _load_class(type_name, matches[0].value)
        classes[type_name] = cls
        return cls

    def available_types(self) -> list[str]:
        """Every type name this registry can serve."""
        names = set(_BUILTINS) | set(self._shared.classes)
        names |= {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
        return sorted(names)

    # -- sources -----------------------------------------------------------------------

    async def _resolve(self, ref: str) -> StoredSource:
        await self.open()
        store = self._shared.store
        record = await store.get(self.owner, ref)
        if record is None:
            record = await store.get_by_name(self.owner, ref)
        if record is None:
            raise NotFoundError(f"Data source {ref!r} not found.", details={"source": ref})
        return record

    def _public(
        self, record: StoredSource, *, secrets: Mapping[str, str] | None = None
    ) -> DataSourceConfig:
        config = dict(record.config)
        if secrets is None:
            config.update(dict.fromkeys(record.secrets, MASK))
        else:
            config.update(secrets)
        return DataSourceConfig(
            id=record.id,
            type=record.type,
            name=record.name,
            description=record.description,
            config=config,
            read_only=record.read_only,
            tags=record.tags,
            created_at=record.created_at,
            updated_at=record.updated_at,
        )

    async def _validated(
        self, cls: type[BaseConnector[Any]], raw: Mapping[str, Any]
    ) -> tuple[ConnectorConfig, dict[str, Any], dict[str, str]]:
        model = cls.validate_config(raw)
        await cls.check_config(model)
        if self._shared.outbound is not None:
            await cls.check_targets(model, self._shared.outbound)
        await cls.check_access(
            model,
            outbound=self._shared.outbound,
            allow_privileged_role=self._shared.allow_privileged_roles,
        )
        secrets = cls.secret_values(model)
        plain = model.model_dump(mode="json", exclude=set(cls.secret_fields), exclude_unset=True)
        return model, plain, secrets

    async def register_data_source(
        self, config: DataSourceConfig | Mapping[str, Any]
    ) -> DataSourceConfig:
        """Validate, encrypt secrets and store a new source; returns it with secrets masked."""
        if not isinstance(config, DataSourceConfig):
            try:
                config = DataSourceConfig.model_validate(dict(config))
            except ValidationError as exc:
                raise ConfigurationError.from_fields(validation_problems(exc)) from None
        cls = self.connector_class(config.type)
        if any(value == MASK for value in config.config.values()):
            raise ConfigurationError(
                "A config value is the mask '********'; send the real secret when registering."
            )
        _model, plain, secrets = await self._validated(cls, config.config)
        tokens = self._shared.credentials.encrypt_secrets(secrets)
        await self.open()
        store = self._shared.store
        if await store.get(self.owner, config.id) is not None:
            raise AlreadyExistsError(f"A data source with id {config.id!r} already exists.")
        if await store.get_by_name(self.owner, config.name) is not None:
            raise AlreadyExistsError(f"A data source named {config.name!r} already exists.")
        now = datetime.now(UTC)
        record = StoredSource(
            owner=self.owner,
            id=config.id,
            name=config.name,
            type=str(config.type),
            description=config.description,
            config=plain,
            secrets=tokens,
            read_only=config.read_only,
            tags=list(config.tags),
            created_at=now,
            updated_at=now,
        )
        await store.add(record)
        self._forget_listing()
        logger.info("Registered data source %r (type %s).", record.id, record.type)
        return self._public(record)

    async def list_data_sources(
        self, *, limit: int | None = None, after: str | None = None
    ) -> list[DataSourceConfig]:
        """This owner's sources in id order, secrets masked (keyset pagination by id).

        An owner's listing is kept in memory for ``pool_settings.listing_cache_seconds``:
        writes through this process clear it at once; another replica's writes show
        within that many seconds.
        """
        listing = await self._listing()
        if listing is None:
            records = await self._shared.store.list(self.owner, limit=limit, after_id=after)
            return [self._public(r) for r in records]
        start, end = listing.window(limit, after)
        # Copies, so a caller that edits one cannot change what the next caller gets.
        return [
            s.model_copy(update={"config": dict(s.config), "tags": list(s.tags)})
            for s in listing.sources[start:end]
        ]

    async def list_data_sources_json(self, *, limit: int, after: str | None = None) -> list[bytes]:
        """The same page as :meth:`list_data_sources`, each source as its JSON document.

        For servers that pass listings on: the documents are serialised once per cached
        listing, not once per request.
        """
        listing = await self._listing()
        if listing is None:
            return [
                s.model_dump_json().encode()
                for s in await self.list_data_sources(limit=limit, after=after)
            ]
        start, end = listing.window(limit, after)
        return listing.documents[start:end]

    async def _listing(self) -> _Listing | None:
        """The owner's cached listing; None when listings are not cached.

        One refresh runs at a time per owner. While it runs, requests keep the listing
        that just expired (stale by at most one refresh), so a busy service never sends
        every waiting request to the store at once. After a write through this process
        nothing stale is served: the write drops the listing and any refresh in flight.
        """
        await self.open()
        shared = self._shared
        if shared.pool_settings.listing_cache_seconds <= 0:
            return None
        cached = shared.listings.get(self.owner)
        if cached is not None and cached.expires > time.monotonic():
            return cached
        task = shared.refreshing.get(self.owner)
        if task is None:
            task = asyncio.ensure_future(self._refresh_listing())
            shared.refreshing[self.owner] = task
            owner = self.owner

            def done(finished: asyncio.Future[_Listing | None]) -> None:
                if shared.refreshing.get(owner) is finished:
                    del shared.refreshing[owner]
                if not finished.cancelled() and finished.exception() is not None:
                    logger.info("Refreshing the listing of %r failed.", owner)

            task.add_done_callback(done)
        if cached is not None:
            return cached
        return await asyncio.shield(task)

    async def _refresh_listing(self) -> _Listing | None:
        shared = self._shared
        generation = shared.generations.get(self.owner, 0)
        records = await shared.store.list(self.owner, limit=_LISTING_CACHE_MAX + 1)
        if len(records) > _LISTING_CACHE_MAX:
            shared.listings.pop(self.owner, None)
            return None
        sources = [self._public(r) for r in records]
        listing = _Listing(
            expires=time.monotonic() + shared.pool_settings.listing_cache_seconds,
            ids=[s.id for s in sources],
            sources=sources,
            documents=[s.model_dump_json().encode() for s in sources],
        )
        if shared.generations.get(self.owner, 0) == generation:  # no write meanwhile
            if len(shared.listings) > 10_000:
                shared.listings.clear()
            shared.listings[self.owner] = listing
        return listing

    def _forget_listing(self) -> None:
        shared = self._shared
        shared.listings.pop(self.owner, None)
        shared.refreshing.pop(self.owner, None)  # a refresh begun before the write is stale
        shared.generations[self.owner] = shared.generations.get(self.owner, 0) + 1

    async def get_data_source(self, ref: str, sanitize: bool = True) -> DataSourceConfig:
        """One source by id or name; ``sanitize=False`` decrypts its secrets."""
        record = await self._resolve(ref)
        if sanitize:
            return self._public(record)
        return self._public(
            record, secrets=self._shared.credentials.decrypt_secrets(record.secrets)
        )

    async def update_data_source(self, ref: str, changes: Mapping[str, Any]) -> DataSourceConfig:
        """Change name, description, config (merged key by key; ``None`` removes), read_only, tags.

        A secret sent back masked keeps the stored value only while no connection-target
        field (host, account, endpoint, container, database, root…) changes; otherwise
        the secret must be sent again, so a stored password never follows a new host.
        """
        unknown = set(changes) - _UPDATABLE
        if unknown:
            raise ConfigurationError.from_fields(
                [(name, "cannot be changed") for name in sorted(unknown)], prefix="Invalid update"
            )
        # null for a whole field means "leave it", as if it were not sent.
        changes = {k: v for k, v in changes.items() if v is not None}
        if not isinstance(changes.get("tags", []), list | tuple):
            raise ConfigurationError.from_fields(
                [("tags", "must be a list of strings")], prefix="Invalid update"
            )
        record = await self._resolve(ref)
        cls = self.connector_class(record.type)
        credentials = self._shared.credentials
        config_changes = changes.get("config") or {}
        if not isinstance(config_changes, Mapping):
            raise ConfigurationError.from_fields(
                [("config", "must be an object")], prefix="Invalid update"
            )

        new_plain = dict(record.config)
        kept: set[str] = set(record.secrets)
        new_secret_values: dict[str, str] = {}
        for key, value in config_changes.items():
            if key in cls.secret_fields:
                if value is None:
                    kept.discard(key)
                elif value == MASK:
                    if key not in record.secrets:
                        raise ConfigurationError.from_fields(
                            [(key, "is masked but no value is stored; send the secret")],
                            prefix="Invalid update",
                        )
                else:
                    kept.discard(key)
                    new_secret_values[key] = value
            elif value is None:
                new_plain.pop(key, None)
            else:
                new_plain[key] = value

        raw = {**new_plain, **new_secret_values}
        # Validate against the merged config; stored secrets are needed to check it whole.
        stored_plain = credentials.decrypt_secrets({k: record.secrets[k] for k in kept})
        _model, plain, secrets = await self._validated(cls, {**raw, **stored_plain})
        target_changed = sorted(
            name for name in cls.target_fields if plain.get(name) != record.config.get(name)
        )
        if target_changed and kept:
            raise ConfigurationError(
                f"The connection target changed ({', '.join(target_changed)}): send "
                f"{', '.join(sorted(kept))} again instead of the masked value.",
                details={"changed": target_changed, "secrets": sorted(kept)},
            )
        tokens = {k: record.secrets[k] for k in kept}
        tokens.update(
            credentials.encrypt_secrets({k: v for k, v in secrets.items() if k not in kept})
        )

        updated = record.with_changes(
            name=changes.get("name", record.name),
            description=changes.get("description", record.description),
            read_only=bool(changes.get("read_only", record.read_only)),
            tags=list(changes.get("tags", record.tags)),
            config=plain,
            secrets=tokens,
            updated_at=datetime.now(UTC),
        )
        try:
            check = self._public(updated)  # validates name, description and tags
        except ValidationError as exc:
            raise ConfigurationError.from_fields(
                validation_problems(exc), prefix="Invalid update"
            ) from None
        updated = updated.with_changes(name=check.name)
        if updated.name != record.name:
            other = await self._shared.store.get_by_name(self.owner, updated.name)
            if other is not None and other.id != record.id:
                raise AlreadyExistsError(f"A data source named {updated.name!r} already exists.")
        await self._shared.store.update(updated)
        self._forget_listing()
        await self._shared.live.retire(self.owner, record.id)
        return self._public(updated)

    async def remove_data_source(self, ref: str) -> None:
        """Delete a source and close its connector (after its borrowers are done)."""
        record = await self._resolve(ref)
        await self._shared.live.retire(self.owner, record.id)
        await self._shared.store.delete(self.owner, record.id)
        self._forget_listing()
        logger.info("Removed data source %r.", record.id)

    async def test_data_source(self, ref: str) -> ConnectionStatus:
        """Connect with a fresh connector and run its ``test_connection``.

        Failures are reported in the status (``ok=False`` and a safe message), not raised,
        except when the source itself does not exist.
        """
        record = await self._resolve(ref)
        try:
            connector = await self._build(record)
        except NotFoundError:
            raise
        except DataSourceError as exc:
            return ConnectionStatus(ok=False, message=exc.message, details={"error": exc.code})
        try:
            async with connector:
                return await connector.test_connection()
        except DataSourceError as exc:
            return ConnectionStatus(ok=False, message=exc.message, details={"error": exc.code})

    async def rotate_secrets(self) -> int:
        """Re-encrypt every stored secret (all owners) under the newest key; all or nothing."""
        await self.open()
        credentials = self._shared.credentials

        def rotate(record: StoredSource) -> dict[str, str]:
            try:
                return {k: credentials.rotate_token(v) for k, v in record.secrets.items()}
            except DataSourceError as exc:
                exc.message = (
                    f"{exc.message} (source {record.owner}/{record.id}; nothing was rotated)"
                )
                raise

        count = await self._shared.store.transform_secrets(rotate)
        logger.info("Rotated the secrets of %d data sources.", count)
        return count

    # -- connectors --------------------------------------------------------------------

    async def _build(self, record: StoredSource) -> BaseConnector[Any]:
        cls = self.connector_class(record.type)
        secrets = self._shared.credentials.decrypt_secrets(record.secrets)
        model = cls.validate_config({**record.config, **secrets})
        connector = cls(
            model,
            source_id=record.id,
            read_only=record.read_only,
            outbound=self._shared.outbound,
        )
        # The operator's opt-in and limits, from settings: a source's config cannot set them.
        connector.allow_privileged_role = self._shared.allow_privileged_roles
        connector.limits = self._shared.limits
        return connector

    async def _open_live(self, record: StoredSource) -> BaseConnector[Any]:
        connector = await self._build(record)
        connector.share()
        await connector.connect()
        return connector

    def get_connector(self, ref: str) -> ConnectorLease:
        """The source's live connector: borrowed (``async with``) or handed out (``await``)."""
        return ConnectorLease(self, ref)

    async def _live(self, ref: str) -> Live:
        live = self._shared.live.cached(self.owner, ref)
        if live is not None:
            # Borrowing must not cost a store round trip; other replicas' changes are
            # picked up within revalidate_after seconds.
            return live
        record = await self._resolve(ref)
        return await self._shared.live.get(record, ref, self._open_live)

    async def _shared_connector(self, ref: str) -> BaseConnector[Any]:
        live = await self._live(ref)
        self._shared.live.hand_out(live)
        return live.connector

    def pool_stats(self) -> dict[str, PoolStats]:
        """Every live connector and its driver pool, keyed by ``owner/id``."""
        return self._shared.live.stats()
