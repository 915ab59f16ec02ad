"""The service under test: the real app, its real store, over HTTP (ASGI or uvicorn)."""

from __future__ import annotations

import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from datasources.api import create_app
from datasources.config import ApiSettings, SandboxLimits, Settings
from datasources.keys import CreatedKey

pytestmark = pytest.mark.api


@dataclass
class Api:
    """A running app, an HTTP client, and two owners' keys."""

    app: FastAPI
    client: httpx.AsyncClient
    alice: CreatedKey
    bob: CreatedKey
    settings: Settings
    folder: Path

    def auth(self, key: CreatedKey | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {(key or self.alice).key}"}

    async def request(
        self, method: str, url: str, key: CreatedKey | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = {**self.auth(key), **kwargs.pop("headers", {})}
        return await self.client.request(method, url, headers=headers, **kwargs)

    async def add_folder_source(self, name: str = "files", key: CreatedKey | None = None) -> str:
        response = await self.request(
            "POST",
            "/api/v1/datasources",
            key,
            json={"name": name, "type": "local_folder", "config": {"root": str(self.folder)}},
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])


def make_settings(tmp_path: Path, *, pool_size: int = 0, **api: Any) -> Settings:
    return Settings(
        home=tmp_path / "home",
        allow_private_networks=True,  # PostgreSQL and Azurite run on loopback here
        local_folder_roots=[tmp_path / "data"],
        api=ApiSettings(**{"rate_limit_per_minute": 0, **api}),
        # No disk floor: a test machine may have little free space (the floor's own test
        # sets one).
        sandbox_limits=SandboxLimits(pool_size=pool_size, timeout=10, min_free_disk_bytes=0),
    )


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async for running in _api(tmp_path, make_settings(tmp_path)):
        yield running


@pytest.fixture
async def privileged_api(tmp_path: Path) -> AsyncIterator[Api]:
    """As ``api``, with the operator's opt-in to privileged database roles (superusers)."""
    settings = make_settings(tmp_path).model_copy(update={"allow_privileged_database_roles": True})
    async for running in _api(tmp_path, settings):
        yield running


async def _api(tmp_path: Path, settings: Settings) -> AsyncIterator[Api]:
    folder = tmp_path / "data"
    (folder / "dir").mkdir(parents=True)
    (folder / "a.csv").write_bytes(b"x,y\n1,2\n")
    (folder / "dir" / "b.txt").write_bytes(b"hello")
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            alice = await app.state.keys.create("alice")
            bob = await app.state.keys.create("bob")
            yield Api(app, client, alice, bob, settings, folder)


async def served(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    """The app on ``settings`` (lifespan entered), a client, and one API key's headers."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        key = await app.state.keys.create("k")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=120) as c:
            yield c, {"Authorization": f"Bearer {key.key}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    url: str
    app: FastAPI


@pytest.fixture
def live_server_factory() -> Iterator[Any]:
    """Start real uvicorn servers in threads; stopped afterwards."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(app: FastAPI) -> LiveServer:
        port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        for _ in range(500):
            if server.started:
                break
            threading.Event().wait(0.01)
        assert server.started, "uvicorn did not start"
        servers.append((server, thread))
        return LiveServer(f"http://127.0.0.1:{port}", app)

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(10)


async def create_keys(settings: Settings, *names: str) -> list[CreatedKey]:
    """Keys made through the core, on the store a live server will use."""
    from datasources.keys import ApiKeys
    from datasources.registry import DataSourceRegistry

    async with DataSourceRegistry.from_settings(settings) as registry:
        keys = ApiKeys(registry.store)
        return [await keys.create(name) for name in names]
