"""Downloads and uploads: concurrent ranged GETs streamed to their offsets.

Each range is conditional on the ETag read at the start (``If-Match``), so a blob
replaced mid-way is noticed and fetched again whole rather than stitched from two
versions; memory stays bounded by ``max_concurrency`` buffers whatever the blob size.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import mimetypes
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from datasources.connectors.azure_blob.errors import RETRYABLE_STATUS, error_for
from datasources.connectors.azure_blob.http import READ_PIECE, Changed, Transient, with_retries
from datasources.connectors.azure_blob.listing import AzureListing
from datasources.connectors.base import ItemStream, ProgressCallback
from datasources.errors import IntegrityError, InvalidInputError, NotFoundError, UnavailableError
from datasources.models import DataItem, ItemKind
from datasources.workspace import AtomicFile, Workspace, md5_from_base64, safe_relative_path

__all__ = ["AzureTransfer"]

logger = logging.getLogger("datasources.connectors.azure_blob")


class AzureTransfer(AzureListing):
    """Fetching, streaming and uploading blobs."""

    async def _download_range(
        self,
        name: str,
        url: Any,
        headers: dict[str, str],
        start: int,
        end: int,
        file: AtomicFile,
        on_bytes: Any,
    ) -> None:
        """GET [start, end) into ``file`` at ``start``, retrying transient failures."""
        import aiohttp

        wanted = end - start
        session = self._session

        async def attempt() -> None:
            written = 0
            timeout = aiohttp.ClientTimeout(
                sock_connect=min(self.config.timeout, 20.0), sock_read=self.config.timeout
            )
            try:
                async with session.get(
                    url,
                    headers={**headers, "x-ms-range": f"bytes={start}-{end - 1}"},
                    timeout=timeout,
                    allow_redirects=False,
                ) as response:
                    if response.status == 412:
                        raise Changed()
                    if response.status in RETRYABLE_STATUS:
                        raise Transient(f"HTTP {response.status}")
                    self._check_download(response, name)
                    position = start
                    async for piece in response.content.iter_chunked(READ_PIECE):
                        if written + len(piece) > wanted:
                            raise IntegrityError(
                                "Azure Storage sent more bytes than the range asked for."
                            )
                        await asyncio.to_thread(file.pwrite, piece, position)
                        position += len(piece)
                        written += len(piece)
                        on_bytes(len(piece))
                if written != wanted:
                    raise Transient(f"short range: {written} of {wanted} bytes")
            except (Transient, aiohttp.ClientError, OSError, builtins.TimeoutError):
                on_bytes(-written)  # the range starts over
                raise

        await with_retries(
            attempt,
            what="download",
            unreachable="Azure Storage stopped answering while downloading from source "
            f"{self.source_id!r}.",
        )

    def _check_download(self, response: Any, name: str) -> None:
        """Raise the error a download's answer means (412 and retries are the caller's)."""
        if response.status not in (200, 206):
            code = response.headers.get("x-ms-error-code")
            raise error_for(response.status, code, self._failure("download", name))

    async def open_stream(self, path: str) -> ItemStream:
        """One GET of the version just described (``If-Match``), passed on as it arrives."""
        import aiohttp
        from yarl import URL

        name = self._blob_name(path)
        item = await self.get_metadata(name)
        if item.kind != ItemKind.FILE:
            raise InvalidInputError(f"{path!r} is a folder, not a blob.")
        query, headers = await self._auth()
        if item.etag:
            headers["If-Match"] = f'"{item.etag}"'
        url = URL(self._blob_url(name, query), encoded=True)
        timeout = aiohttp.ClientTimeout(
            sock_connect=min(self.config.timeout, 20.0), sock_read=self.config.timeout
        )

        unreachable = UnavailableError(
            f"Azure Storage stopped answering while streaming from source {self.source_id!r}."
        )
        # The GET is sent and its status judged here, so a refusal (a redirect, a vanished
        # blob) is an error of this call, before a caller has started sending anything on.
        try:
            response = await self._session.get(
                url, headers=headers, timeout=timeout, allow_redirects=False
            )
        except (aiohttp.ClientError, OSError, builtins.TimeoutError):
            raise unreachable from None
        try:
            self._check_download(response, name)
        except BaseException:
            response.release()
            raise

        async def chunks() -> AsyncIterator[bytes]:
            sent = 0
            try:
                async for piece in response.content.iter_chunked(READ_PIECE):
                    sent += len(piece)
                    yield piece
            except (aiohttp.ClientError, OSError, builtins.TimeoutError):
                raise unreachable from None
            finally:
                response.release()
            if item.size is not None and sent != item.size:
                raise IntegrityError("Azure Storage sent a different size than it announced.")

        return ItemStream.of_file(item, chunks)

    async def fetch_data(
        self,
        path: str,
        workspace_dir: Path | str | Workspace,
        *,
        progress: ProgressCallback | None = None,
    ) -> Path:
        name = self._blob_name(path)
        workspace = Workspace.of(workspace_dir)
        workspace.path_for(name)  # a name the workspace refuses is refused before any request
        for _attempt in range(3):
            item = await self.get_metadata(name)
            try:
                return await self._fetch_version(name, item, workspace, progress)
            except Changed:
                logger.info("Blob %r changed during the download; fetching the new version.", name)
        raise IntegrityError(f"{path!r} kept changing during the download; try again later.")

    async def _fetch_version(
        self, name: str, item: DataItem, workspace: Workspace, progress: ProgressCallback | None
    ) -> Path:
        cached = self.reuse_if_current(name, item, workspace, progress)
        if cached is not None:
            return cached
        size = item.size or 0
        expected_md5 = md5_from_base64(item.checksum[4:]) if item.checksum else None
        query, headers = await self._auth()
        if item.etag:
            headers["If-Match"] = f'"{item.etag}"'
        from yarl import URL

        url = URL(self._blob_url(name, query), encoded=True)
        done = 0

        def on_bytes(count: int) -> None:
            nonlocal done
            done += count
            if progress is not None:
                progress(done, size)

        chunk = self.config.chunk_size
        semaphore = asyncio.Semaphore(self.config.max_concurrency)
        provenance = self.provenance(name, item)
        async with workspace.writer(
            name,
            max_bytes=self.config.max_download_bytes,
            expected_size=size,
            expected_md5=expected_md5,
            provenance=provenance,
        ) as writer:
            if progress is not None:
                progress(0, size)

            async def one(start: int) -> None:
                async with semaphore:
                    await self._download_range(
                        name, url, headers, start, min(start + chunk, size), writer.file, on_bytes
                    )

            tasks = [asyncio.create_task(one(start)) for start in range(0, size, chunk)]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        return writer.path

    async def upload_data(
        self,
        local_path: Path | str,
        remote_path: str,
        *,
        overwrite: bool = False,
        content_type: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> DataItem:
        self.require_writable()
        name = safe_relative_path(remote_path).as_posix()
        source = Path(local_path)
        try:
            size = (await asyncio.to_thread(source.stat)).st_size
        except FileNotFoundError:
            raise NotFoundError(f"The local file {str(source)!r} does not exist.") from None
        if not await asyncio.to_thread(source.is_file):
            raise InvalidInputError(f"{str(source)!r} is not a regular file.")
        from azure.storage.blob import ContentSettings

        guessed = (
            content_type
            or mimetypes.guess_type(name, strict=False)[0]
            or "application/octet-stream"
        )
        blob = self._client().get_blob_client(name)
        with self._errors("upload", name):
            with open(source, "rb") as handle:  # noqa: ASYNC230 - the SDK reads it block by block
                await blob.upload_blob(
                    handle,
                    length=size,
                    overwrite=overwrite,
                    content_settings=ContentSettings(content_type=guessed),
                    metadata=metadata,
                    max_concurrency=self.config.max_concurrency,
                )
            props = await blob.get_blob_properties()
        return self._item(props)
