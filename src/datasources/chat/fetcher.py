"""Fetching a message's references into the chat's workspace, within its quota.

Data is streamed into ``data/<source>/…`` of the workspace by the source's connector,
each file capped by what is left of the chat's quota (and of the service's disk), and
recorded with its provenance in ``manifest.json``. Credentials stay here: the sandbox
only ever sees the files.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from datasources import safefs
from datasources.chat.manifest import data_folders, read_manifest, write_manifest
from datasources.chat.models import Event, FetchedFile, Resolved
from datasources.chat.refs import DataRef
from datasources.config import Settings
from datasources.connectors.sql import as_sql
from datasources.errors import DataSourceError, LimitExceededError
from datasources.registry import DataSourceRegistry
from datasources.workspace import Workspace

__all__ = ["Fetcher"]


class Fetcher:
    """Streams resolved references into chat workspaces under ``settings.workspaces_dir``."""

    def __init__(self, registry: DataSourceRegistry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings

    async def fetch(
        self, owner: str, directory: Path, refs: Sequence[Resolved], message_id: str
    ) -> AsyncIterator[Event]:
        """Stream every reference into the workspace ``directory``; events as it goes."""
        quota = self.settings.sandbox_limits.workspace_quota_bytes
        registry = self.registry.scoped(owner)
        floor = self.settings.sandbox_limits.min_free_disk_bytes
        for ref, source in refs:
            free = (await asyncio.to_thread(shutil.disk_usage, self.settings.workspaces_dir)).free
            if free < floor:
                raise LimitExceededError(
                    "The service's disk is nearly full: nothing more is fetched until space "
                    "is freed (delete chats, or ask the operator).",
                    details={"ref": ref.label()[:200]},
                )
            used = await asyncio.to_thread(self._used_bytes, directory)
            workspace = Workspace(directory / "data" / source.id)
            workspace.byte_budget = max(quota - used, 0)
            label = ref.label()
            yield Event(event="fetch_progress", data={"ref": label, "bytes": 0})
            async with registry.get_connector(source.id) as connector:
                if ref.kind == "path":
                    item = await connector.get_metadata(ref.target)
                    if item.size is not None and item.size > workspace.byte_budget:
                        raise LimitExceededError(
                            f"{label} is {item.size} bytes; the chat has "
                            f"{workspace.byte_budget} bytes of its quota left.",
                            details={"ref": label[:200], "quota": quota},
                        )
                    local = [await connector.fetch_data(ref.target, workspace)]
                elif ref.kind == "prefix":
                    # Listed as a stream and refused as soon as it passes a cap: a
                    # remote endpoint can list forever, and nothing of it is held.
                    cap = self.settings.sandbox_limits.prefix_max_items
                    count = total = 0
                    async for listed in connector.iter_items(ref.target):
                        count += 1
                        if count > cap:
                            raise LimitExceededError(
                                f"{label} lists more than {cap} items, the most a reference "
                                "may fetch; name a narrower folder.",
                                details={"ref": label[:200], "max_items": cap},
                            )
                        if listed.kind == "file":
                            total += listed.size or 0
                        if total > workspace.byte_budget:
                            raise LimitExceededError(
                                f"{label} lists at least {total} bytes; the chat has "
                                f"{workspace.byte_budget} bytes of its quota left.",
                                details={"ref": label[:200], "quota": quota},
                            )
                    report = await connector.fetch_prefix(ref.target, workspace, max_items=cap)
                    if report.failed:
                        first = report.failed[0]
                        raise DataSourceError(
                            f"{len(report.failed)} item(s) of {label} could not be fetched, "
                            f"first {first.path!r}: {first.message}"
                        )
                    local = [workspace.path_for(p) for p in report.fetched]
                elif ref.kind == "table":
                    local = [await connector.fetch_data(ref.target, workspace)]
                else:
                    digest = hashlib.sha256(ref.target.encode()).hexdigest()[:12]
                    database = as_sql(connector, source.id)
                    local = [
                        await database.export_query(
                            ref.target, workspace, filename=f"queries/{digest}.parquet"
                        )
                    ]
            files = await asyncio.to_thread(
                self._record, directory, workspace, ref, source.id, local, message_id
            )
            yield Event(event="fetch_done", data={"ref": label, "files": files})

    def _record(
        self,
        directory: Path,
        workspace: Workspace,
        ref: DataRef,
        source_id: str,
        local: list[Path],
        message_id: str,
    ) -> list[dict[str, Any]]:
        """Add the fetched files to ``manifest.json`` (atomically); their entries."""
        manifest = read_manifest(directory)
        entries = workspace.manifest()
        added = []
        for path in local:
            rel = path.relative_to(directory).as_posix()
            entry = entries.get(workspace.relative(path))
            record = FetchedFile(
                path=rel,
                source_id=source_id,
                remote=ref.target,
                kind=ref.kind,
                etag=entry.etag if entry else None,
                bytes=path.lstat().st_size,
                sha256=entry.sha256 if entry else None,
                fetched_at=entry.fetched_at if entry else datetime.now(UTC),
                message_id=message_id,
            )
            manifest.setdefault("files", {})[rel] = record.model_dump(mode="json")
            added.append(record.model_dump(mode="json"))
        write_manifest(directory, manifest)
        return added

    @staticmethod
    def _used_bytes(directory: Path) -> int:
        """Bytes the chat's workspace holds, reached through descriptors only.

        Files are counted by a walk with caps. A walk cut short (the sandbox can make a
        tree too big or too deep to count) falls back, where the workspace is a filesystem
        of its own (under bwrap), on that filesystem's used blocks — an upper bound that
        includes its own overhead — and refuses only where there is no such bound.
        """
        try:
            anchor = safefs.open_anchor(directory)
        except DataSourceError:
            return 0
        try:
            total, complete = safefs.usage(anchor)
            if complete:
                return total
            devices: dict[str, int] = {}
            used = 0
            for name in ("data", "outputs"):
                with contextlib.suppress(OSError, DataSourceError):
                    folder = safefs.open_dir(anchor, name)
                    try:
                        devices[name] = os.fstat(folder).st_dev
                        if name == "outputs" and devices[name] != os.fstat(anchor).st_dev:
                            fs = os.fstatvfs(folder)
                            used = (fs.f_blocks - fs.f_bfree) * fs.f_frsize
                    finally:
                        os.close(folder)
            if used and devices.get("data") == devices.get("outputs"):
                return used  # one filesystem holds data/ and outputs/
            if used:
                rest, rest_complete = safefs.usage(anchor, skip=frozenset({"outputs"}))
                if rest_complete:
                    return rest + used
        finally:
            os.close(anchor)
        raise LimitExceededError(
            "The chat's workspace has too many files, or folders nested too deep, to "
            f"count its quota (more than {safefs.MAX_ENTRIES} entries or "
            f"{safefs.MAX_DEPTH} levels); remove some of them first.",
            details={"max_entries": safefs.MAX_ENTRIES, "max_depth": safefs.MAX_DEPTH},
        )

    @staticmethod
    async def workspace_sources(directory: Path) -> set[str]:
        """Ids of the sources whose data is in the chat's workspace."""
        manifest = await asyncio.to_thread(read_manifest, directory)
        try:
            files = manifest["files"]
        except (KeyError, TypeError):
            files = {}
        recorded = {f["source_id"] for f in files.values() if f.get("source_id")}
        # A fetch that failed half-way leaves files it wrote but never recorded: a source's
        # folder under data/ (the service's own, read-only to the sandbox) counts as well.
        return recorded | await asyncio.to_thread(data_folders, directory)
