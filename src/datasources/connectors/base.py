"""The connector contract every data source implements.

A connector is an async context manager with a handful of abstract methods (connect,
disconnect, test_connection, iter_items, get_metadata, fetch_data, upload_data). It
declares its ``type``, its pydantic ``config_model`` (validated at registration, every
bad field named) and which config fields are ``secret_fields``. Listing helpers
(``list_items``, ``list_page`` with opaque cursors, glob matching) and the streamed,
verified, provenance-recording fetch into a :class:`~datasources.workspace.Workspace`
live here once, for every connector.

A connector is long-lived: the registry keeps one per source per process, and that one
object owns the driver's connections (a pool, an HTTP session) and the source's caches.
A connector the registry hands out is *shared*: its users' ``disconnect()`` (or leaving
``async with connector``) does nothing, since other tasks are using it; the registry
closes it with :meth:`BaseConnector.close_shared` when the source changes, is removed or
the registry closes. A connector built by hand is the caller's, and ``disconnect()``
closes it.

(Over 500 lines on purpose: the contract and the one fetch pipeline every connector
shares read best side by side; the listing helpers live in :mod:`.listing`.)
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, Self, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from datasources.connectors.limits import DriverLimits, DriverStats
from datasources.connectors.listing import (
    MAX_PAGE_SIZE,
    ListingQuery,
    check_page_limit,
    decode_cursor,
    encode_cursor,
    listing_query,
)
from datasources.errors import (
    ConfigurationError,
    DataSourceError,
    InvalidInputError,
    LimitExceededError,
    ReadOnlyError,
)
from datasources.globs import compile_glob, glob_prefix
from datasources.models import (
    ConnectionStatus,
    DataItem,
    FetchFailure,
    FetchReport,
    ItemKind,
    Page,
)
from datasources.netpolicy import OutboundPolicy
from datasources.workspace import Workspace

__all__ = [
    "DEFAULT_MAX_DOWNLOAD_BYTES",
    "MAX_PAGE_SIZE",
    "BaseConnector",
    "ConnectorConfig",
    "DriverLimits",
    "DriverStats",
    "ListingQuery",
    "ProgressCallback",
    "check_page_limit",
    "compile_glob",
    "decode_cursor",
    "encode_cursor",
    "glob_prefix",
    "listing_query",
]

DEFAULT_MAX_DOWNLOAD_BYTES = 100 * 1024 * 1024
"""The seed's Requirement 10: 100 MiB per fetched file unless a source raises it."""


ProgressCallback = Callable[[int, int | None], None]
"""Called with (bytes done, total bytes or None) while a transfer runs."""


class ConnectorConfig(BaseModel):
    """Base of every connector's config model: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_download_bytes: int | None = Field(
        default=DEFAULT_MAX_DOWNLOAD_BYTES,
        ge=0,
        description="Largest file fetch_data accepts; null for no limit.",
    )
    share_samples_with_llm: bool = Field(
        default=False,
        description="Let a language model see raw rows of this source (query results, "
        "previews); otherwise it sees schemas and column profiles only.",
    )


ConfigT = TypeVar("ConfigT", bound=ConnectorConfig)


def _format_loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "config"


def validation_problems(error: ValidationError) -> list[tuple[str, str]]:
    """Field names and messages of a pydantic error, never the offending values."""
    return [
        (_format_loc(e["loc"]), e["msg"])
        for e in error.errors(include_url=False, include_input=False, include_context=False)
    ]


@dataclass(frozen=True)
class ItemStream:
    """What :meth:`BaseConnector.open_stream` returns."""

    item: DataItem
    chunks: Callable[[], AsyncIterator[bytes]]
    media_type: str = "application/octet-stream"
    size: int | None = None
    """The number of bytes the stream will yield, when known in advance."""

    @classmethod
    def of_file(cls, item: DataItem, chunks: Callable[[], AsyncIterator[bytes]]) -> ItemStream:
        """A stream of a stored file's own bytes: its content type and size."""
        return cls(item, chunks, item.content_type or "application/octet-stream", item.size)


def _shared_aware(disconnect: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
    """Wrap a connector's ``disconnect`` so that its users cannot close a shared connector."""

    @functools.wraps(disconnect)
    async def guarded(self: BaseConnector[Any]) -> None:
        if self._shared and not self._closing_shared:
            return  # the registry's: it closes it when the source changes or goes
        await disconnect(self)

    guarded.__shared_aware__ = True  # type: ignore[attr-defined]
    return guarded


class BaseConnector(ABC, Generic[ConfigT]):
    """The contract every data source connector implements.

    Args:
        config: The connector's config model, or a mapping validated into it.
        source_id: The registered source's id (recorded in provenance).
        read_only: Refuse every write (uploads).
    """

    type: ClassVar[str]
    config_model: ClassVar[builtins.type[ConnectorConfig]]
    secret_fields: ClassVar[frozenset[str]] = frozenset()
    target_fields: ClassVar[frozenset[str]] = frozenset()
    """Fields that say *where* to connect: changing one invalidates a masked secret."""
    allow_privileged_role: bool = False
    """Operator opt-in (never from a source's config): credentials with more than read
    rights may be used. Connectors that can tell (PostgreSQL) refuse them otherwise."""
    limits: DriverLimits = DriverLimits()
    """The operator's limits for this source's driver pool (set by the registry)."""
    _shared: bool = False
    _closing_shared: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("disconnect")
        if own is not None and not getattr(own, "__shared_aware__", False):
            setattr(cls, "disconnect", _shared_aware(own))  # noqa: B010 - a method, wrapped

    def __init__(
        self,
        config: ConfigT | Mapping[str, Any],
        *,
        source_id: str = "adhoc",
        read_only: bool = False,
        outbound: OutboundPolicy | None = None,
    ) -> None:
        model = config if isinstance(config, ConnectorConfig) else self.validate_config(config)
        if not isinstance(model, self.config_model):
            raise ConfigurationError(f"{type(self).__name__} needs a {self.config_model.__name__}.")
        self.config: ConfigT = cast(ConfigT, model)
        self.source_id = source_id
        self.read_only = read_only
        self.outbound = outbound
        """The outbound-target policy to connect under (None: the caller is trusted)."""
        self._connected = False

    def __repr__(self) -> str:
        state = "connected" if self._connected else "disconnected"
        return f"{type(self).__name__}(source_id={self.source_id!r}, {state})"

    # -- configuration -----------------------------------------------------------------

    @classmethod
    def validate_config(cls, raw: Mapping[str, Any]) -> ConnectorConfig:
        """Validate a raw config, naming every bad field (never echoing values)."""
        try:
            return cls.config_model.model_validate(dict(raw))
        except ValidationError as exc:
            raise ConfigurationError.from_fields(
                validation_problems(exc), prefix=f"Invalid {cls.type} configuration"
            ) from None

    @classmethod
    async def check_config(cls, config: ConnectorConfig) -> None:
        """Registration-time checks beyond the model (e.g. that a folder exists)."""

    @classmethod
    async def check_targets(cls, config: ConnectorConfig, policy: OutboundPolicy) -> None:
        """Refuse a config whose hosts or folders ``policy`` does not allow.

        Connectors that reach a network host or a local folder override this; the
        registry calls it when a source is registered or changed under a policy, and
        :attr:`outbound` holds the policy while the connector connects.
        """

    @classmethod
    async def check_access(
        cls,
        config: ConnectorConfig,
        *,
        outbound: OutboundPolicy | None = None,
        allow_privileged_role: bool = False,
    ) -> None:
        """Refuse, at registration, credentials with more than read rights (when it can tell).

        Connectors that can ask their server what a credential may do override this (the
        registry calls it when a source is registered or changed); a target that cannot
        be reached now is not refused here, as every connection checks again.
        """

    @classmethod
    def secret_values(cls, config: ConnectorConfig) -> dict[str, str]:
        """The plain secret values of a validated config (for encryption)."""
        values: dict[str, str] = {}
        for name in cls.secret_fields:
            value = getattr(config, name, None)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if value:
                values[name] = str(value)
        return values

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether :meth:`connect` succeeded and :meth:`disconnect` has not run."""
        return self._connected

    @abstractmethod
    async def connect(self) -> None:
        """Open the connection (decrypted secrets are used here and kept nowhere else)."""

    @abstractmethod
    async def disconnect(self) -> None:
        """Release every resource. Safe to call twice.

        On a shared connector (one the registry handed out) this does nothing: the
        registry closes it with :meth:`close_shared`.
        """

    @property
    def shared(self) -> bool:
        """Whether a registry owns this connector (its users' ``disconnect()`` is a no-op)."""
        return self._shared

    def share(self) -> None:
        """Mark this connector as the registry's (called once, before it is handed out)."""
        self._shared = True

    async def close_shared(self) -> None:
        """Close a shared connector for good: the registry's call, never its users'."""
        self._closing_shared = True
        await self.disconnect()

    def driver_stats(self) -> DriverStats | None:
        """The driver pool's connections now; None for a connector without one."""
        return None

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()

    async def ping(self) -> bool:
        """A cheap liveness check; pools call it before lending an idle connector."""
        return self._connected

    @abstractmethod
    async def test_connection(self) -> ConnectionStatus:
        """Check reachability and credentials; report latency and warnings."""

    # -- listing -----------------------------------------------------------------------

    @abstractmethod
    def iter_items(
        self,
        prefix: str | None = None,
        *,
        delimiter: str | None = None,
        glob: str | None = None,
        start_after: str | None = None,
    ) -> AsyncIterator[DataItem]:
        """Yield items in ascending path order, lazily, page by page from the source."""

    async def list_items(
        self,
        prefix: str | None = None,
        *,
        limit: int | None = None,
        delimiter: str | None = None,
        glob: str | None = None,
    ) -> list[DataItem]:
        """The first ``limit`` items (all when ``None``) as a list."""
        if limit is not None and limit < 0:
            raise InvalidInputError("limit must be >= 0.")
        items: list[DataItem] = []
        if limit == 0:
            return items
        async for item in self.iter_items(prefix, delimiter=delimiter, glob=glob):
            items.append(item)
            if limit is not None and len(items) >= limit:
                break
        return items

    async def list_page(
        self,
        prefix: str | None = None,
        *,
        limit: int = 100,
        cursor: str | None = None,
        delimiter: str | None = None,
        glob: str | None = None,
    ) -> Page:
        """One page of at most ``limit`` items and a cursor for the next page."""
        check_page_limit(limit)
        after = decode_cursor(cursor) if cursor else None
        items: list[DataItem] = []
        more = False
        async for item in self.iter_items(
            prefix, delimiter=delimiter, glob=glob, start_after=after
        ):
            if len(items) == limit:
                more = True
                break
            items.append(item)
        next_cursor = encode_cursor(items[-1].path) if more and items else None
        return Page(items=items, next_cursor=next_cursor)

    @abstractmethod
    async def get_metadata(self, path: str) -> DataItem:
        """Metadata of one item; :class:`NotFoundError` if it does not exist."""

    # -- transfer ----------------------------------------------------------------------

    @abstractmethod
    async def fetch_data(
        self,
        path: str,
        workspace_dir: Path | str | Workspace,
        *,
        progress: ProgressCallback | None = None,
    ) -> Path:
        """Stream one item into the workspace (atomic, verified, with provenance)."""

    async def open_stream(self, path: str) -> ItemStream:
        """An item's metadata and its bytes as a stream, for sending on (an HTTP download).

        Errors about the item (missing, a folder, unreadable) are raised here, before any
        byte moves; the bytes flow only when :attr:`ItemStream.chunks` is iterated.
        """
        raise InvalidInputError(f"Items of {self.type} sources cannot be streamed.")

    async def fetch_prefix(
        self,
        prefix_or_glob: str,
        workspace_dir: Path | str | Workspace,
        *,
        concurrency: int = 4,
        max_items: int | None = 100_000,
    ) -> FetchReport:
        """Fetch every file under a prefix (or matching a glob) with bounded concurrency.

        Each item's failure (unsafe name, over the limit, vanished…) is reported and the
        rest completes; only the listing itself failing raises. The listing is streamed,
        and more than ``max_items`` items (``None``: no cap) raise
        :class:`LimitExceededError` — a remote endpoint can list forever, and the report
        would grow with it.
        """
        if not 1 <= concurrency <= 64:
            raise InvalidInputError("concurrency must be between 1 and 64.")
        if max_items is not None and max_items < 1:
            raise InvalidInputError("max_items must be >= 1.")
        workspace = Workspace.of(workspace_dir)
        is_glob = any(c in prefix_or_glob for c in "*?[")
        listing = (
            self.iter_items(glob=prefix_or_glob) if is_glob else self.iter_items(prefix_or_glob)
        )
        report = FetchReport()
        queue: asyncio.Queue[DataItem | None] = asyncio.Queue(maxsize=concurrency * 2)

        async def worker() -> None:
            while (item := await queue.get()) is not None:
                moved = 0

                def count(done: int, _total: int | None) -> None:
                    nonlocal moved
                    moved = done

                try:
                    local = await self.fetch_data(item.path, workspace, progress=count)
                except DataSourceError as exc:
                    report.failed.append(
                        FetchFailure(path=item.path, error=exc.code, message=exc.message)
                    )
                else:
                    report.fetched.append(workspace.relative(local))
                    report.bytes_transferred += moved

        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
        try:
            listed = 0
            async for item in listing:
                listed += 1
                if max_items is not None and listed > max_items:
                    raise LimitExceededError(
                        f"{prefix_or_glob!r} lists more than {max_items} items, the most "
                        "one fetch takes; name a narrower prefix.",
                        details={"max_items": max_items},
                    )
                if item.kind == ItemKind.FILE:
                    await queue.put(item)
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        report.fetched.sort()
        report.failed.sort(key=lambda f: f.path)
        return report

    @abstractmethod
    async def upload_data(
        self, local_path: Path | str, remote_path: str, *, overwrite: bool = False
    ) -> DataItem:
        """Upload a local file; :class:`AlreadyExistsError` unless ``overwrite``."""

    # -- helpers for implementations -------------------------------------------------

    def require_writable(self) -> None:
        """Raise :class:`ReadOnlyError` on a read-only source."""
        if self.read_only:
            raise ReadOnlyError(f"Data source {self.source_id!r} is read-only.")

    def check_size(self, path: str, size: int | None) -> None:
        """Refuse a fetch larger than ``max_download_bytes`` before any byte is written."""
        limit = self.config.max_download_bytes
        if limit is not None and size is not None and size > limit:
            raise LimitExceededError(
                f"{path!r} is {size} bytes, over this source's limit of {limit} bytes "
                "(raise max_download_bytes to fetch it).",
                details={"size_bytes": size, "limit_bytes": limit},
            )

    def reuse_if_current(
        self,
        path: str,
        item: DataItem,
        workspace: Workspace,
        progress: ProgressCallback | None,
    ) -> Path | None:
        """Check the size limit, then the workspace's copy: the local file if unchanged."""
        self.check_size(path, item.size)
        cached = workspace.is_current(path, source_id=self.source_id, etag=item.etag)
        if cached is not None and progress is not None:
            progress(0, item.size)
        return cached

    def provenance(
        self, path: str, item: DataItem, extra: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The manifest fields a fetch of ``item`` records."""
        return {
            "source_id": self.source_id,
            "source_type": str(self.type),
            "remote_path": path,
            "etag": item.etag,
            **(extra or {}),
        }

    async def stream_into_workspace(
        self,
        path: str,
        workspace_dir: Path | str | Workspace,
        *,
        item: DataItem,
        chunks: Callable[[], AsyncIterator[bytes]],
        progress: ProgressCallback | None = None,
        expected_md5: bytes | None = None,
        provenance: Mapping[str, Any] | None = None,
    ) -> Path:
        """The shared fetch pipeline: limit, cache by etag, atomic verified write, manifest.

        ``chunks`` is only called when the workspace does not already hold the same
        version (same source, path and etag), so an unchanged item transfers 0 bytes.
        """
        workspace = Workspace.of(workspace_dir)
        workspace.path_for(path)  # validate the name before touching the source
        cached = self.reuse_if_current(path, item, workspace, progress)
        if cached is not None:
            return cached
        done = 0
        async with workspace.writer(
            path,
            max_bytes=self.config.max_download_bytes,
            expected_size=item.size,
            expected_md5=expected_md5,
            provenance=self.provenance(path, item, provenance),
        ) as writer:
            if progress is not None:
                progress(0, item.size)
            # Read the next chunk while this one is written and hashed: both run in
            # worker threads that release the GIL, so reading and hashing overlap.
            source = aiter(chunks())
            pending: asyncio.Future[bytes | None] = asyncio.ensure_future(anext(source, None))
            try:
                while (chunk := await pending) is not None:
                    pending = asyncio.ensure_future(anext(source, None))
                    await writer.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, item.size)
            finally:
                if not pending.done():
                    pending.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await pending
                closer = getattr(source, "aclose", None)
                if closer is not None:
                    await closer()
        return writer.path
