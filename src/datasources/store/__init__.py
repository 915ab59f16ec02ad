"""Persistence of the registry: SQLAlchemy 2 async, Alembic migrations.

SQLite under ``DATASOURCES_HOME`` by default; any PostgreSQL through
``DATASOURCES_DATABASE_URL``, so several service replicas share one registry.
"""

from datasources.store.accounts import StoredUser, StoredWebSession
from datasources.store.repository import (
    Store,
    StoredApiKey,
    StoredChat,
    StoredMessage,
    StoredSource,
)

__all__ = [
    "Store",
    "StoredApiKey",
    "StoredChat",
    "StoredMessage",
    "StoredSource",
    "StoredUser",
    "StoredWebSession",
]
