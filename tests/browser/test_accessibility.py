"""An automated accessibility check (axe-core) on every page of the workbench, in light and
dark, at phone width and on a wide screen: no serious or critical violation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.browser.conftest import PASSWORD, Workbench, screenshot

pytestmark = pytest.mark.browser


@pytest.fixture(params=[("light", 1280), ("dark", 390)], ids=["light-wide", "dark-phone"])
def themed_page(browser: Any, request: pytest.FixtureRequest) -> Iterator[tuple[Any, str]]:
    scheme, width = request.param
    context = browser.new_context(viewport={"width": width, "height": 900}, color_scheme=scheme)
    try:
        yield context.new_page(), f"{scheme}-{width}"
    finally:
        context.close()


def _serious(page: Any) -> list[str]:
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    return [
        f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:5]}"
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def test_no_serious_accessibility_violations(
    workbench: Workbench, themed_page: tuple[Any, str]
) -> None:
    page, label = themed_page
    api = httpx.Client(base_url=workbench.url, headers=workbench.bearer)
    source = api.post(
        "/api/v1/datasources",
        json={"name": "files", "type": "local_folder", "config": {"root": str(workbench.folder)}},
    ).json()["id"]
    chat = api.post("/api/v1/chats", json={"title": "Q3"}).json()["id"]
    page.goto(f"{workbench.url}/login")
    found = {"login": _serious(page)}
    page.fill("#name", "alice")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("#who:not(:empty)")
    for name, path in (("chats", "/"), ("chat", f"/chats/{chat}"), ("sources", "/sources"),
                       ("browse", f"/sources/{source}"), ("sql", f"/sources/{source}/sql"),
                       ("settings", "/settings")):  # fmt: skip
        page.goto(f"{workbench.url}{path}")
        page.wait_for_selector("main h1")
        page.wait_for_load_state("networkidle")
        found[name] = _serious(page)
        screenshot(page, f"{name}-{label}")
        # Nothing is wider than the screen (phone width included).
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, (name, label, overflow)
    assert {k: v for k, v in found.items() if v} == {}
