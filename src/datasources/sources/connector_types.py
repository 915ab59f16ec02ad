"""Connector classes by type name: built-ins by dotted path, third parties by entry point.

A class is imported only when a source of its type is used; a missing optional
dependency raises with the exact ``pip install`` hint.
"""

from __future__ import annotations

import importlib
from typing import Any

from datasources.connectors.base import BaseConnector
from datasources.errors import MissingDependencyError, UnknownDataSourceTypeError

__all__ = ["BUILTINS", "ENTRY_POINT_GROUP", "EXTRAS", "load_class"]

ENTRY_POINT_GROUP = "datasources.connectors"


# type -> "module:Class". Imported only when a source of that type is used.
BUILTINS: dict[str, str] = {
    "local_folder": "datasources.connectors.local_folder:LocalFolderConnector",
    "azure_blob": "datasources.connectors.azure_blob:AzureBlobConnector",
    "postgresql": "datasources.connectors.postgresql:PostgreSQLConnector",
}


# type -> the extra that installs its dependencies.
EXTRAS: dict[str, str] = {"azure_blob": "azure", "postgresql": "postgresql"}


def load_class(type_name: str, target: str) -> type[BaseConnector[Any]]:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or "a required package"
        if missing == module_name or module_name.startswith(f"{missing}."):
            raise UnknownDataSourceTypeError(
                f"The connector module for type {type_name!r} cannot be found."
            ) from None
        extra = EXTRAS.get(type_name)
        hint = f"pip install 'datasources[{extra}]'" if extra else f"pip install {missing}"
        raise MissingDependencyError(
            f"The {type_name} connector needs the package {missing!r}: {hint}",
            details={"package": missing, "install": hint},
        ) from None
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseConnector)):
        raise UnknownDataSourceTypeError(f"{target!r} is not a connector class.")
    return cls
