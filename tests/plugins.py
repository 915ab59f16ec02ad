"""A plugin connector with a secret, for registry and CLI tests (a real folder underneath)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import SecretStr

from datasources.connectors.local_folder import LocalFolderConfig, LocalFolderConnector
from datasources.errors import AuthenticationError
from datasources.models import ConnectionStatus

VALID_TOKEN_PREFIX = "valid-"


class TokenFolderConfig(LocalFolderConfig):
    host: str = "files.example"
    token: SecretStr


class TokenFolderConnector(LocalFolderConnector):
    """A local folder that insists on a token starting with 'valid-'."""

    type: ClassVar[str] = "token_folder"
    # A subclass of LocalFolderConfig; mypy compares the pydantic constructors, and this
    # one requires a token: a narrower config class, which is the point of the plugin.
    config_model = TokenFolderConfig  # type: ignore[assignment]
    secret_fields = frozenset({"token"})
    target_fields = frozenset({"root", "host"})

    async def connect(self) -> None:
        config = self.config
        assert isinstance(config, TokenFolderConfig)
        if not config.token.get_secret_value().startswith(VALID_TOKEN_PREFIX):
            raise AuthenticationError(f"The token for {self.source_id!r} was rejected.")
        await super().connect()

    async def test_connection(self) -> ConnectionStatus:
        status = await super().test_connection()
        return status.model_copy(update={"warnings": [*status.warnings, "token expires soon"]})
