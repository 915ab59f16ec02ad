"""Registering, reading, changing, testing and removing sources; rotating their secrets.

Secrets are validated with the rest of a config, encrypted field by field, and never
returned unmasked unless asked for. A change closes the source's live connector (after
its borrowers are done) so the next use connects with the new config.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from datasources.connectors.base import BaseConnector, ConnectorConfig, validation_problems
from datasources.credentials import MASK
from datasources.errors import (
    AlreadyExistsError,
    ConfigurationError,
    DataSourceError,
    NotFoundError,
)
from datasources.models import ConnectionStatus, DataSourceConfig
from datasources.sources.listing import SourceListings
from datasources.store import StoredSource

__all__ = ["SourceCrud"]

logger = logging.getLogger("datasources.registry")

_UPDATABLE = frozenset({"name", "description", "config", "read_only", "tags"})


class SourceCrud(SourceListings):
    """The sources of one owner: create, read, update, delete, test, rotate."""

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
        await self._shared.store.delete(self.owner, record.id)
        self._forget_listing()
        # After the delete: a borrow that read the source before it reads it again.
        await self._shared.live.retire(self.owner, record.id)
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
