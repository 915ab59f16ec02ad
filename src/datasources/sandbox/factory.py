"""The sandbox manager for the configured mode, chosen in one place.

Kept out of ``manager.py`` because the gateway manager is a subclass of
:class:`SandboxManager`: choosing it there would make the two modules import each other.
"""

from __future__ import annotations

from datasources.config import Settings
from datasources.errors import MissingDependencyError
from datasources.sandbox.manager import SandboxManager

__all__ = ["sandbox_manager"]


def sandbox_manager(settings: Settings) -> SandboxManager:
    """The manager for the configured mode (``DATASOURCES_SANDBOX``).

    Raises:
        MissingDependencyError: ``gateway`` mode without its client packages.
    """
    if settings.sandbox == "gateway":
        try:
            from datasources.sandbox.gateway_manager import GatewayManager
        except ImportError as exc:
            raise MissingDependencyError(
                f"DATASOURCES_SANDBOX=gateway needs {exc.name or 'a package'}: "
                "pip install 'datasources[gateway]'"
            ) from None
        return GatewayManager(
            settings.workspaces_dir, limits=settings.sandbox_limits, gateway=settings.gateway
        )
    return SandboxManager(
        settings.workspaces_dir, mode=settings.sandbox, limits=settings.sandbox_limits
    )
