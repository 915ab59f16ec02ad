"""The chat workspace's ``manifest.json``: which file came from which source, and when.

Read and replaced beneath the workspace's directory descriptor (the sandbox can write in
the workspace, so no path is ever followed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from datasources import safefs
from datasources.errors import DataSourceError

__all__ = ["MANIFEST", "data_folders", "read_manifest", "write_manifest"]

MANIFEST = "manifest.json"
_MANIFEST_LIMIT = 64 * 1024 * 1024


def read_manifest(directory: Path) -> dict[str, Any]:
    """The chat's ``manifest.json`` (read through a descriptor), or an empty one."""
    try:
        anchor = safefs.open_anchor(directory)
    except DataSourceError:
        return {"files": {}}
    try:
        manifest = json.loads(safefs.read_file(anchor, MANIFEST, limit=_MANIFEST_LIMIT))
    except (OSError, ValueError, DataSourceError):
        return {"files": {}}
    finally:
        os.close(anchor)
    return manifest if isinstance(manifest, dict) else {"files": {}}


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """Replace ``manifest.json`` atomically, beneath the workspace's descriptor."""
    data = json.dumps(manifest, indent=1, sort_keys=True).encode()
    anchor = safefs.open_anchor(directory)
    try:
        safefs.replace_file(anchor, MANIFEST, data)
    finally:
        os.close(anchor)


def data_folders(directory: Path) -> set[str]:
    """Names of the source folders under the chat's ``data/``."""
    try:
        with os.scandir(directory / "data") as entries:
            return {e.name for e in entries if e.is_dir(follow_symlinks=False)}
    except OSError:
        return set()
