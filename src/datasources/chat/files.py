"""The files of a chat's workspace as the API lists and serves them.

The sandbox can rename and swap entries of ``outputs/`` at any time: folders are entered
and files opened beneath descriptors without following links, and a file is served from
the descriptor that was opened and checked, never from its path again.
"""

from __future__ import annotations

import os
from pathlib import Path

from datasources import safefs
from datasources.chat.manifest import MANIFEST, read_manifest
from datasources.chat.models import FetchedFile
from datasources.errors import DataSourceError, NotFoundError
from datasources.sandbox.session import DISPLAYS
from datasources.workspace import RESERVED_DIR, safe_relative_path

__all__ = ["SERVED_FOLDERS", "list_files", "open_file"]

SERVED_FOLDERS = ("data", "outputs", DISPLAYS)
"""The workspace folders whose files the API lists and serves (besides the manifest)."""


def _utf8(name: str) -> bool:
    """Whether a listed name (``surrogateescape``d bytes) is text a reply can carry."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def list_files(directory: Path) -> list[FetchedFile]:
    """Every file of the workspace (data with provenance, outputs, displays), by path.

    A link swapped in while this runs is skipped, never listed through.
    """
    try:
        known = read_manifest(directory)["files"]
    except (KeyError, TypeError):
        known = {}
    found = []
    anchor = safefs.open_anchor(directory)
    try:
        for top in SERVED_FOLDERS:
            try:
                folder = safefs.open_dir(anchor, top)
            except (OSError, DataSourceError):
                continue
            try:
                for name, size in safefs.listing(folder, skip=frozenset({RESERVED_DIR})):
                    rel = f"{top}/{name}"
                    if "/.datasources/" in f"/{name}" or not _utf8(name):
                        continue  # a source workspace's own state; an unnamable file
                    if rel in known:
                        found.append(FetchedFile.model_validate(known[rel]))
                    else:
                        found.append(FetchedFile(path=rel, bytes=size))
            finally:
                os.close(folder)
    finally:
        os.close(anchor)
    return found


def open_file(directory: Path, path: str, *, check_path: bool = True) -> safefs.SafeFile:
    """A workspace file, opened for reading: stream it from the returned descriptor.

    ``path`` is checked for shape (``check_path``: tests switch it off to prove the
    layer below), then opened beneath the workspace's descriptor with no link followed
    at any component, and ``fstat``-checked to be a regular file.
    """
    missing = NotFoundError(f"{path!r} is not a file of this chat.")
    if check_path:
        relative = safe_relative_path(path).as_posix()
        top = relative.split("/", 1)[0]
        if top not in SERVED_FOLDERS and relative != MANIFEST:
            raise missing
    else:
        relative = path
    anchor = safefs.open_anchor(directory)
    try:
        return safefs.open_file(anchor, relative)
    except NotFoundError:
        raise missing from None
    finally:
        os.close(anchor)
