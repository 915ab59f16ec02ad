"""How big a connector's own driver pool may grow, and what it holds now.

A connector is one long-lived object per source per process that owns its driver's
connections (an asyncpg pool, an HTTP session), the way an ``httpx.AsyncClient`` does.
The registry hands it the operator's limits (``Settings.pool``) as :class:`DriverLimits`
before connecting it; a connector built by hand gets the defaults. :class:`DriverStats`
is what a connector reports back for the service's stats and readiness.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DriverLimits", "DriverStats"]


@dataclass(frozen=True, slots=True)
class DriverLimits:
    """Limits of one source's driver pool in one process (from ``Settings.pool``)."""

    max_connections: int = 5
    """Server connections the source may hold at once (a source's config may lower it)."""
    min_connections: int = 0
    """Connections kept open while idle (the pool's floor)."""
    idle_timeout: float = 300.0
    """Seconds an idle connection above the floor is kept."""
    max_lifetime: float = 3600.0
    """Seconds after which a connection is replaced when it is next released."""
    acquire_timeout: float = 30.0
    """Seconds to wait for a free connection when all ``max_connections`` are busy."""


@dataclass(frozen=True, slots=True)
class DriverStats:
    """A snapshot of a connector's driver pool."""

    connections: int
    """Server connections open now (busy or idle)."""
    idle: int
    """Of those, the ones nobody is using."""
    max_connections: int | None
    """The ceiling (None: the driver has none the connector knows of)."""
