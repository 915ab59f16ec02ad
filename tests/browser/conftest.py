"""The workbench in a real Chromium: Debian's ``chromium`` driven by Playwright.

No browser is downloaded: Playwright launches ``/usr/bin/chromium`` (``make test``
installs it when it runs as root). The service runs in uvicorn in a thread, on a store
with two users made through the core. Screenshots go to ``test-artifacts/browser``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from datasources.api import create_app
from datasources.config import Settings
from datasources.keys import ApiKeys, CreatedKey
from datasources.registry import DataSourceRegistry
from datasources.users import Users
from tests.api.conftest import free_port, make_settings
from tests.conftest import IN_CI

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
PASSWORD = "correct horse battery"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class Workbench:
    """A running service, its users and one API key of alice's owner (for seeding)."""

    url: str
    settings: Settings
    folder: Path
    key: CreatedKey
    users: dict[str, str] = field(default_factory=dict)

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key.key}"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium for one test module. Not for the session: while Playwright's sync API
    runs it keeps an event loop on the main thread, and every async test after it would
    find that loop running."""
    if not os.path.exists(CHROMIUM):
        message = f"{CHROMIUM} is missing: run scripts/install-chromium.sh (make test does)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


async def _seed(settings: Settings) -> CreatedKey:
    async with DataSourceRegistry.from_settings(settings) as registry:
        key = await ApiKeys(registry.store).create("alice-key")
        users = Users(registry.store)
        await users.create("alice", PASSWORD, owner=key.owner)
        await users.create("bob", PASSWORD)
        return key


@pytest.fixture
def workbench(tmp_path: Path) -> Iterator[Workbench]:
    settings = make_settings(tmp_path)
    folder = tmp_path / "data"
    (folder / "reports").mkdir(parents=True)
    (folder / "sales.csv").write_text("region,units\nnorth,3\nsouth,5\n")
    (folder / "reports" / "q1.txt").write_text("quarter one")
    # Playwright's sync API keeps an event loop on this thread: seed from another one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        key = pool.submit(asyncio.run, _seed(settings)).result()
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_config=None, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    started = threading.Event()
    for _ in range(1000):
        if server.started:
            started.set()
            break
        started.wait(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield Workbench(
            f"http://127.0.0.1:{port}", settings, folder, key, {"alice": PASSWORD, "bob": PASSWORD}
        )
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    try:
        yield context
    finally:
        context.close()


@dataclass
class Watched:
    """A page with everything it said recorded: console errors, page errors, requests."""

    page: Any
    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def csp_violations(self) -> list[str]:
        return [m for m in self.console if "Content Security Policy" in m or "Trusted Type" in m]


@pytest.fixture
def watched(context: Any) -> Watched:
    page = context.new_page()
    record = Watched(page)
    page.on("console", lambda m: record.console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: record.errors.append(str(e)))
    page.on("request", lambda r: record.requests.append(r.url))
    return record


def sign_in(page: Any, url: str, name: str = "alice", password: str = PASSWORD) -> None:
    """Sign in through the form and wait for the app to show a page."""
    page.goto(f"{url}/login")
    page.fill("#name", name)
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_selector("#who:not(:empty)")


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    target = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(target), full_page=True)
    return target
