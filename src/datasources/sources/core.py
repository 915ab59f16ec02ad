"""The registry's core: resolving a source by id or name, its public (masked) form,
connector classes, and building a connector from a stored record.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from datasources.connectors.base import BaseConnector
from datasources.credentials import MASK
from datasources.errors import ConfigurationError, NotFoundError, UnknownDataSourceTypeError
from datasources.models import DataSourceConfig
from datasources.sources import connector_types
from datasources.sources.connector_types import ENTRY_POINT_GROUP, EXTRAS, load_class
from datasources.sources.state import Shared
from datasources.store import StoredSource

__all__ = ["RegistryCore"]


class RegistryCore:
    """One owner's view of the shared registry state."""

    _shared: Shared
    owner: str

    async def open(self) -> None:
        """Open the store (runs migrations). Called implicitly by the first operation."""
        shared = self._shared
        if shared.opened:
            return
        async with shared.lock:
            if not shared.opened:
                await shared.store.open()
                shared.opened = True

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
        builtins = connector_types.BUILTINS  # read at call time: tests swap the table
        if type_name in builtins:
            cls = load_class(type_name, builtins[type_name])
        else:
            matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == type_name]
            if not matches:
                known = ", ".join(self.available_types())
                extra = EXTRAS.get(type_name)
                hint = f" (it may need: pip install 'datasources[{extra}]')" if extra else ""
                raise UnknownDataSourceTypeError(
                    f"No connector is installed for type {type_name!r}{hint}. Available: {known}.",
                    details={"type": type_name},
                )
            cls = load_class(type_name, matches[0].value)
        classes[type_name] = cls
        return cls

    def available_types(self) -> list[str]:
        """Every type name this registry can serve."""
        names = set(connector_types.BUILTINS) | set(self._shared.classes)
        names |= {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
        return sorted(names)

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

    def _forget_listing(self) -> None:
        shared = self._shared
        shared.listings.pop(self.owner, None)
        shared.refreshing.pop(self.owner, None)  # a refresh begun before the write is stale
        shared.generations[self.owner] = shared.generations.get(self.owner, 0) + 1

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
