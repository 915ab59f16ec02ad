"""Settings, read from the environment (prefix ``DATASOURCES_``) and injected, never imported.

Build one with ``Settings()`` (environment) or ``Settings(home=...)`` (explicit), and pass
it to :meth:`DataSourceRegistry.from_settings`, the CLI or ``create_app``. Nested models
read from ``DATASOURCES_POOL__MAX_CONNECTIONS`` and the like.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import platformdirs
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from datasources.credentials import register_secret

if TYPE_CHECKING:
    from datasources.netpolicy import OutboundPolicy

__all__ = ["ApiSettings", "GatewaySettings", "PoolSettings", "SandboxLimits", "Settings"]


class PoolSettings(BaseModel):
    """Each source's driver pool, per process: one long-lived connector per source owns it.

    ``max_connections`` is what an operator adds up: every worker process holds at most
    that many server connections per database source it has used (workers x sources x
    ``max_connections`` must stay under the server's own ``max_connections``).
    """

    model_config = ConfigDict(populate_by_name=True)

    min_size: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="Connections each source keeps open while idle (the driver pool's floor).",
    )
    max_connections: int = Field(
        default=5,
        ge=1,
        le=1000,
        validation_alias=AliasChoices("max_connections", "max_size"),
        description="Server connections each source may hold per process (the driver "
        "pool's ceiling; DATASOURCES_POOL__MAX_SIZE is the same setting under the seed's "
        "name). A source's own pool_max_size can only lower it.",
    )
    acquire_timeout: float = Field(
        default=30.0, gt=0, description="Seconds to wait for a free connection when all are busy."
    )
    idle_timeout: float = Field(
        default=300.0, gt=0, description="Idle connections above min_size close after this."
    )
    max_lifetime: float = Field(
        default=3600.0, gt=0, description="Connections are replaced after this many seconds."
    )
    revalidate_after: float = Field(
        default=5.0,
        ge=0,
        description="Re-read a source from the store at most this often when borrowing.",
    )
    check_after: float = Field(
        default=5.0,
        ge=0,
        description="Kept for old configurations; unused: every borrow's first round trip "
        "is the health check, and a connection that fails it is replaced at once.",
    )
    listing_cache_seconds: float = Field(
        default=1.0,
        ge=0,
        description="How long an owner's source listing is served from memory; writes in "
        "this process clear it at once, other replicas' writes show within this time.",
    )


class ApiSettings(BaseModel):
    """The HTTP service (``DATASOURCES_API__PORT`` and the like)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="Largest JSON request body; 413 beyond."
    )
    max_upload_bytes: int = Field(
        default=1024**3, ge=1024, description="Largest upload (streamed); 413 beyond."
    )
    rate_limit_per_minute: int = Field(
        default=1200, ge=0, description="Requests per minute per API key; 0 turns it off."
    )
    rate_limit_burst: int = Field(default=200, ge=1, description="Requests allowed at once.")
    default_page_size: int = Field(default=50, ge=1, le=1000)
    max_page_size: int = Field(default=200, ge=1, le=10000)
    key_cache_seconds: float = Field(
        default=5.0, ge=0, description="How long a checked API key is trusted in memory."
    )
    access_log: bool = True
    session_idle_seconds: float = Field(
        default=2 * 3600, gt=0, description="A workbench session unused this long ends."
    )
    session_max_seconds: float = Field(
        default=12 * 3600, gt=0, description="A workbench session this old ends, however busy."
    )
    login_max_failures: int = Field(
        default=5,
        ge=1,
        description="Failed sign-ins allowed per user name and per client address within "
        "login_window_seconds; further attempts get 429 with Retry-After.",
    )
    login_window_seconds: float = Field(default=15 * 60, gt=0)
    cookie_secure: bool | None = Field(
        default=None,
        description="Mark the session cookie Secure: always (true), never (false), or when "
        "the request came over https, directly or through a trusted proxy (null).",
    )
    public_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins (https://host[:port]) the workbench is reached at besides the "
        "request's own scheme and Host; state-changing browser requests must come from one.",
    )

    @field_validator("public_origins", mode="before")
    @classmethod
    def _origins(cls, value: object) -> object:
        return _split_commas(value)


class SandboxLimits(BaseModel):
    """Limits of each chat's Python session (``DATASOURCES_SANDBOX_LIMITS__TIMEOUT`` …)."""

    memory_bytes: int = Field(default=2 * 1024**3, ge=64 * 1024**2)
    cpu_seconds: int = Field(default=1800, ge=1, description="CPU time over a session's life.")
    processes: int = Field(default=64, ge=4, description="Processes and threads at once.")
    open_files: int = Field(default=512, ge=32)
    file_size_bytes: int = Field(default=1024**3, ge=1024)
    tmp_bytes: int = Field(default=256 * 1024**2, ge=1024**2, description="Private /tmp size.")
    output_bytes: int = Field(
        default=1024**2,
        ge=1024,
        description="Bytes of output kept per execution: text, results, tables, images and "
        "errors all count; the rest is cut.",
    )
    timeout: float = Field(default=60.0, gt=0, le=3600, description="Default per execution.")
    idle_seconds: float = Field(default=900.0, gt=0, description="Idle sessions are closed.")
    pool_size: int = Field(default=2, ge=0, le=64, description="Sessions started ahead.")
    workspace_quota_bytes: int = Field(default=1024**3, ge=1024, description="Per chat.")
    max_chats_per_owner: int = Field(
        default=200, ge=1, description="Chats one owner may keep (each holds a workspace)."
    )
    min_free_disk_bytes: int = Field(
        default=1024**3,
        ge=0,
        description="Fetches into workspaces are refused while the disk holding them has less "
        "free space than this (a floor for every owner, whatever each chat's quota).",
    )
    prefix_max_items: int = Field(
        default=10_000,
        ge=1,
        description="Items a prefix reference (@source:folder/) may list; a bigger listing is "
        "refused with 413 as soon as it passes this or the chat's quota left.",
    )
    workspace_max_age_days: float = Field(
        default=30.0, gt=0, description="Chats untouched this long are deleted with their files."
    )
    uid: int | None = Field(
        default=None,
        ge=1,
        description="Host uid sandboxes run as when the service is root (default 2000000000; "
        "DATASOURCES_SANDBOX_UID). A service that is not root uses its own uid in bwrap "
        "mode; gateway kernels are always asked to run as this one, never the service's.",
    )
    gid: int | None = Field(
        default=None, ge=1, description="Host gid of sandboxes (default: the uid's number)."
    )
    max_sessions: int = Field(
        default=16, ge=1, description="Live sessions on the service (pre-started ones apart)."
    )
    max_sessions_per_owner: int = Field(default=4, ge=1, description="Live sessions per owner.")
    start_wait_seconds: float = Field(
        default=30.0,
        ge=0,
        le=600,
        description="How long a session start waits for room (a full service, other starts) "
        "before the request gets 429 with Retry-After.",
    )
    concurrent_starts: int = Field(
        default=2, ge=1, le=64, description="Sessions started at the same time (the rest queue)."
    )


class GatewaySettings(BaseModel):
    """Where kernels run in ``gateway`` mode: a Jupyter Enterprise Gateway or Kernel Gateway.

    Built by :attr:`Settings.gateway` from ``DATASOURCES_GATEWAY_URL``, ``_TOKEN``,
    ``_KERNEL_NAME``, ``_REQUEST_TIMEOUT`` and ``_LAUNCH_TIMEOUT``.
    """

    url: str = Field(description="The gateway's base URL, http(s)://host:port[/base].")
    token: SecretStr | None = Field(
        default=None, description="Sent as 'Authorization: token …' on every request."
    )
    kernel_name: str = Field(default="python3", description="The kernelspec kernels start from.")
    request_timeout: float = Field(
        default=30.0, gt=0, le=600, description="Seconds for one REST call to the gateway."
    )
    launch_timeout: float = Field(
        default=180.0,
        gt=0,
        le=3600,
        description="Seconds a kernel may take to start (a pod may wait for its image).",
    )


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _default_home() -> Path:
    return Path(platformdirs.user_data_dir("datasources", appauthor=False))


class Settings(BaseSettings):
    """Everything an operator can set. Secrets are ``SecretStr``: never in a repr or a log."""

    model_config = SettingsConfigDict(
        env_prefix="DATASOURCES_",
        env_nested_delimiter="__",
        extra="ignore",
    )

    home: Path = Field(
        default_factory=_default_home,
        description="State folder: the SQLite store, the key file, workspaces.",
    )
    workspaces_dir: Path = Field(
        default_factory=lambda data: Path(data["home"]) / "workspaces",
        description=(
            "Where chat workspaces live (default <home>/workspaces). With several replicas or "
            "the gateway sandbox, a shared volume mounted at the same path everywhere."
        ),
    )
    database_url: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy URL of the store (postgresql+asyncpg://…); default SQLite in home.",
    )
    secret_keys: SecretStr | None = Field(
        default=None,
        description="Comma-separated Fernet keys, newest first. Overrides the key file.",
    )
    key_file: Path | None = Field(
        default=None, description="Key file path; default <home>/secret.key."
    )
    create_key_file: bool = Field(
        default=True,
        description="Create the key file on first use (the embedded default).",
    )
    owner: str = Field(default="local", description="Owner of sources created by the CLI.")
    pool: PoolSettings = Field(default_factory=PoolSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    log_level: str = "WARNING"
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host patterns user sources may reach even at internal addresses.",
    )
    llm_base_url: str | None = Field(
        default=None, description="An OpenAI-compatible endpoint (OpenAI, Azure, Ollama, vLLM)."
    )
    llm_model: str | None = Field(default=None, description="The model name; none: offline.")
    llm_api_key: SecretStr | None = None
    llm_max_steps: int = Field(default=8, ge=1, le=50, description="Tool calls per message.")
    llm_max_tokens: int = Field(default=60_000, ge=1000, description="Tokens per message.")
    sandbox: str = Field(
        default="bwrap",
        pattern="^(bwrap|process|gateway)$",
        description="How code runs: 'bwrap' (isolated), 'process' (rlimits and a scrubbed "
        "environment only; no filesystem or network isolation), or 'gateway' (kernels on a "
        "Jupyter Enterprise Gateway / Kernel Gateway; isolation is the engine's).",
    )
    gateway_url: str | None = Field(
        default=None,
        # Scheme, host[:port] and a path only: no user:password@, no ?query or #fragment,
        # where a token would travel into the logs that name the URL.
        pattern=r"^https?://[^\s/@?#]+(/[^\s?#]*)?$",
        description="The kernel gateway's base URL (DATASOURCES_SANDBOX=gateway); no "
        "credentials, query or fragment in it: the token goes in DATASOURCES_GATEWAY_TOKEN.",
    )
    gateway_token: SecretStr | None = Field(
        default=None, description="The gateway's auth token (EG_AUTH_TOKEN on its side)."
    )
    gateway_kernel_name: str = Field(
        default="python3",
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="The gateway's kernelspec for chats' kernels.",
    )
    gateway_request_timeout: float = Field(default=30.0, gt=0, le=600)
    gateway_launch_timeout: float = Field(default=180.0, gt=0, le=3600)
    sandbox_limits: SandboxLimits = Field(default_factory=SandboxLimits)
    sandbox_uid: int | None = Field(
        default=None,
        ge=1,
        description="Host uid sandboxes run as when the service is root (never 0; default "
        "2000000000). Sets sandbox_limits.uid.",
    )
    sandbox_gid: int | None = Field(
        default=None, ge=1, description="Host gid of sandboxes. Sets sandbox_limits.gid."
    )
    allow_private_networks: bool = Field(
        default=False,
        description="Let user sources reach loopback and private networks (embedded default).",
    )
    local_folder_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Folders under which users may register local-folder sources.",
    )
    ambient_identity_accounts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Azure account URLs for which API users may use the service's own "
        "identity (use_default_credential); none: never over the HTTP API.",
    )
    redis_url: SecretStr | None = Field(
        default=None,
        description="Redis shared by every replica (redis://…, rediss://…): rate limits become "
        "global and, on a SQLite store, cache invalidations travel through it. None: rate "
        "limits are per process.",
    )
    redis_prefix: str = Field(
        default="datasources:",
        min_length=1,
        max_length=64,
        pattern=r"^[\w.:-]+$",
        description="Namespace of this deployment's Redis keys and channel (several "
        "deployments may share one Redis).",
    )
    redis_timeout: float = Field(
        default=1.0,
        gt=0,
        le=30,
        description="Seconds a Redis call may take before the replica falls back to its own "
        "rate limits (and retries Redis a second later).",
    )
    allow_privileged_database_roles: bool = Field(
        default=False,
        description="Let database sources use privileged roles (superuser, server files, "
        "programs, signals). Off: such sources are refused on every connection.",
    )

    @field_validator(
        "allowed_hosts", "local_folder_roots", "ambient_identity_accounts", mode="before"
    )
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return _split_commas(value)

    @model_validator(mode="after")
    def _sandbox_identity(self) -> Settings:
        # DATASOURCES_SANDBOX_UID/GID are the documented names; the limits carry them.
        update = {
            key: value
            for key, value in (("uid", self.sandbox_uid), ("gid", self.sandbox_gid))
            if value is not None
        }
        if update:
            self.sandbox_limits = self.sandbox_limits.model_copy(update=update)
        return self

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    def model_post_init(self, context: object, /) -> None:
        # Secrets an operator configures are scrubbed from logs from the start.
        secrets = (self.database_url, self.secret_keys, self.llm_api_key, self.gateway_token,
                   self.redis_url)  # fmt: skip
        for secret in secrets:
            if secret is not None:
                register_secret(secret.get_secret_value())

    @property
    def resolved_key_file(self) -> Path:
        """Where the key file lives."""
        return (self.key_file or self.home / "secret.key").expanduser()

    @property
    def resolved_database_url(self) -> str:
        """The store's SQLAlchemy URL (async driver)."""
        if self.database_url is not None:
            url = self.database_url.get_secret_value()
            # Accept the plain libpq scheme people copy from elsewhere.
            for prefix in ("postgresql://", "postgres://"):
                if url.startswith(prefix):
                    return "postgresql+asyncpg://" + url[len(prefix) :]
            return url
        return f"sqlite+aiosqlite:///{self.home / 'datasources.db'}"

    def outbound_policy(self) -> OutboundPolicy:
        """The outbound-target policy the HTTP service applies to user sources."""
        from datasources.netpolicy import OutboundPolicy

        return OutboundPolicy(
            allowed_hosts=self.allowed_hosts,
            allow_private_networks=self.allow_private_networks,
            local_folder_roots=self.local_folder_roots,
            ambient_identity_accounts=self.ambient_identity_accounts,
        )

    @property
    def gateway(self) -> GatewaySettings | None:
        """The kernel gateway's settings (None when no URL is set)."""
        if self.gateway_url is None:
            return None
        return GatewaySettings(
            url=self.gateway_url.rstrip("/"),
            token=self.gateway_token,
            kernel_name=self.gateway_kernel_name,
            request_timeout=self.gateway_request_timeout,
            launch_timeout=self.gateway_launch_timeout,
        )

    def key_list(self) -> list[str]:
        """Keys from ``DATASOURCES_SECRET_KEYS`` (empty when not set)."""
        if self.secret_keys is None:
            return []
        return [k.strip() for k in self.secret_keys.get_secret_value().split(",") if k.strip()]
