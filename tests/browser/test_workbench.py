"""The workbench in Chromium: sign in and out, deep links, CSP, the keyboard alone."""

from __future__ import annotations

import httpx
import pytest

from tests.browser.conftest import PASSWORD, Watched, Workbench, screenshot, sign_in

pytestmark = pytest.mark.browser


def seed_source(workbench: Workbench, name: str = "files") -> str:
    response = httpx.post(
        f"{workbench.url}/api/v1/datasources",
        headers=workbench.bearer,
        json={"name": name, "type": "local_folder", "config": {"root": str(workbench.folder)}},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_sign_in_and_out(workbench: Workbench, watched: Watched) -> None:
    page = watched.page
    page.goto(f"{workbench.url}/sources")
    assert page.url == f"{workbench.url}/login?next=/sources"
    screenshot(page, "login")
    page.fill("#name", "alice")
    page.fill("#password", "not the password")
    page.click("button[type=submit]")
    assert page.locator("#login-notice").inner_text() == "Wrong name or password."
    page.fill("#name", "alice")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("h1:text('Sources')")
    assert page.url == f"{workbench.url}/sources"
    assert page.locator("#who").inner_text() == "alice"
    page.click("#sign-out")
    page.wait_for_url(f"{workbench.url}/login")
    page.goto(f"{workbench.url}/")
    assert page.url == f"{workbench.url}/login"
    assert watched.errors == [] and watched.csp_violations() == []


def test_deep_links_survive_a_reload(workbench: Workbench, watched: Watched) -> None:
    source = seed_source(workbench)
    chat = httpx.post(
        f"{workbench.url}/api/v1/chats", headers=workbench.bearer, json={"title": "Q3 numbers"}
    ).json()["id"]
    page = watched.page
    sign_in(page, workbench.url)
    for path, heading, shot in (
        (f"/chats/{chat}", "Q3 numbers", "chat"),
        ("/sources", "Sources", "sources"),
        (f"/sources/{source}", "files", "browse"),
        (f"/sources/{source}/sql", "SQL — files", "sql"),
        ("/settings", "Settings", "settings"),
        ("/", "Chats", "chats"),
    ):
        page.goto(f"{workbench.url}{path}")
        page.wait_for_selector(f"h1:text-is('{heading}')")
        page.reload()
        page.wait_for_selector(f"h1:text-is('{heading}')")
        assert page.url == f"{workbench.url}{path}"
        screenshot(page, shot)
    # Client-side navigation keeps the address in step, and Back works.
    page.click("nav.mainnav a:text('Sources')")
    page.wait_for_selector("h1:text-is('Sources')")
    assert page.url == f"{workbench.url}/sources"
    page.click("a:text-is('files')")
    page.wait_for_selector("text=sales.csv")
    page.click("a:text-is('reports/')")
    page.wait_for_selector("text=q1.txt")
    assert "prefix=reports%2F" in page.url
    page.go_back()
    page.wait_for_selector("text=sales.csv")
    assert watched.errors == [] and watched.csp_violations() == []


def test_the_csp_is_sent_and_nothing_violates_it(workbench: Workbench, watched: Watched) -> None:
    page = watched.page
    response = page.goto(f"{workbench.url}/login")
    assert response is not None
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe" not in csp and "frame-ancestors 'none'" in csp
    sign_in(page, workbench.url)
    for path in ("/", "/sources", "/settings"):
        page.goto(f"{workbench.url}{path}")
        page.wait_for_selector("main h1")
    # Trusted Types are enforced: markup from a string cannot reach the DOM.
    refused = page.evaluate(
        "() => { try { document.body.innerHTML = '<b>x</b>'; return false; }"
        " catch (e) { return e instanceof TypeError; } }"
    )
    assert refused is True
    assert watched.errors == []
    # The one violation above is the probe itself; nothing else was refused.
    assert [v for v in watched.csp_violations() if "innerHTML" not in v] == []
    # The API docs render from local assets under their own policy.
    page.goto(f"{workbench.url}/docs")
    page.wait_for_selector(".swagger-ui .info")
    assert all(url.startswith(workbench.url) or url.startswith("data:") for url in watched.requests)
    assert [v for v in watched.csp_violations() if "innerHTML" not in v] == []


def test_sign_in_and_move_around_with_the_keyboard_only(
    workbench: Workbench, watched: Watched
) -> None:
    page = watched.page
    page.goto(f"{workbench.url}/login")
    assert page.evaluate("document.activeElement.id") == "name"  # focused on arrival
    page.keyboard.type("alice")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "password"
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_selector("#who:not(:empty)")
    # Tab from the top: the skip link first, then the navigation.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "Sources":
            break
    page.keyboard.press("Enter")
    page.wait_for_selector("h1:text-is('Sources')")
    assert page.url == f"{workbench.url}/sources"
    screenshot(page, "keyboard-sources")
    assert watched.errors == [] and watched.csp_violations() == []
