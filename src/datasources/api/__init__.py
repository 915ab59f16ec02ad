"""The HTTP service: ``create_app(settings)`` builds it, ``datasources serve`` runs it."""

from datasources.api.app import create_app

__all__ = ["create_app"]
