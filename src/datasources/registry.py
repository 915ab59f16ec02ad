"""The registry: which data sources exist, what serves them, and their live connectors.

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

import logging
from collections.abc import Generator
from typing import Any, Self

from datasources.config import PoolSettings, Settings
from datasources.connectors.base import BaseConnector
from datasources.credentials import CredentialManager
from datasources.errors import UnavailableError
from datasources.lifecycle import Live, PoolStats
from datasources.netpolicy import OutboundPolicy
from datasources.sources.connector_types import ENTRY_POINT_GROUP
from datasources.sources.crud import SourceCrud
from datasources.sources.state import Shared
from datasources.store import Store, StoredSource

__all__ = ["ENTRY_POINT_GROUP", "ConnectorLease", "DataSourceRegistry"]

logger = logging.getLogger(__name__)

_READ_ATTEMPTS = 5
"""Reads of a source that keeps changing while its connector opens, before giving up."""


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


class DataSourceRegistry(SourceCrud):
    """Registered data sources of one owner and their live connectors.

    The parts live in :mod:`datasources.sources` (types, listing cache, CRUD); this
    class adds the lifecycle: opening, closing and lending each source's connector.

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
        self._shared = Shared(
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

    # -- sources -----------------------------------------------------------------------

    # -- connectors --------------------------------------------------------------------

    async def _open_live(self, record: StoredSource) -> BaseConnector[Any]:
        connector = await self._build(record)
        connector.share()
        await connector.connect()
        return connector

    def get_connector(self, ref: str) -> ConnectorLease:
        """The source's live connector: borrowed (``async with``) or handed out (``await``)."""
        return ConnectorLease(self, ref)

    async def _live(self, ref: str) -> Live:
        lives = self._shared.live
        live = lives.cached(self.owner, ref)
        if live is not None:
            # Borrowing must not cost a store round trip; other replicas' changes are
            # picked up within revalidate_after seconds.
            return live
        for _ in range(_READ_ATTEMPTS):
            seen = lives.epoch
            record = await self._resolve(ref)
            live = await lives.get(record, ref, self._open_live, seen=seen)
            if live is not None:
                return live
            # The source changed (or went) after it was read: read it again.
        raise UnavailableError(
            f"Data source {ref!r} changed {_READ_ATTEMPTS} times while it was being opened; "
            "try again.",
            details={"source": ref},
        )

    async def _shared_connector(self, ref: str) -> BaseConnector[Any]:
        live = await self._live(ref)
        self._shared.live.hand_out(live)
        return live.connector

    async def forget_source(self, source_id: str) -> None:
        """Drop what this process holds of one of the owner's sources: its cached listing
        and its live connector (closed once its borrowers are done). For news that another
        replica changed or removed it; the next use reads the store again."""
        self._forget_listing()
        await self._shared.live.retire(self.owner, source_id)

    async def forget_all_sources(self) -> None:
        """:meth:`forget_source` for every source of every owner (news may have been lost)."""
        shared = self._shared
        shared.live.retire_all()
        keys = shared.live.live_keys()
        for owner in set(shared.listings) | set(shared.refreshing) | {o for o, _ in keys}:
            self.scoped(owner)._forget_listing()
        for owner, source_id in keys:
            await shared.live.retire(owner, source_id)

    def pool_stats(self) -> dict[str, PoolStats]:
        """Every live connector and its driver pool, keyed by ``owner/id``."""
        return self._shared.live.stats()
