"""The XSS corpus, rendered in Chromium: source names, descriptions and tags, file names,
chat titles, messages, kernel output (stdout, stderr, errors, HTML, SVG, markdown and
table displays) and a data brief of a hostile CSV — and nothing runs, nothing loads.

Every request the page makes is intercepted: anything not for this service is aborted
and counted. A payload that ran would set ``window.__xss``, open a dialog or request a
``/pwned`` path; a payload the page tried to parse would show as a CSP or Trusted Types
violation. None may happen.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import Watched, Workbench, screenshot, sign_in
from tests.browser.xss_corpus import FILE_NAMES, PAYLOADS

pytestmark = pytest.mark.browser


def _seed(workbench: Workbench) -> dict[str, Any]:
    folder = workbench.folder
    for name in FILE_NAMES:
        (folder / name).write_text("a,b\n1,2\n")
    with (folder / "hostile.csv").open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(PAYLOADS[:6])
        for start in range(0, len(PAYLOADS) - 5, 6):
            writer.writerow(PAYLOADS[start : start + 6])
    api = httpx.Client(base_url=workbench.url, headers=workbench.bearer, timeout=120)
    sources = []
    for n, payload in enumerate(PAYLOADS[:8]):
        created = api.post(
            "/api/v1/datasources",
            json={
                "name": f"s{n} {payload}"[:200],
                "type": "local_folder",
                "description": PAYLOADS[(n + 8) % len(PAYLOADS)],
                "tags": [PAYLOADS[(n + 16) % len(PAYLOADS)][:64]],
                "config": {"root": str(folder)},
            },
        )
        assert created.status_code == 201, created.text
        sources.append(created.json()["id"])
    chats = []
    for payload in PAYLOADS[:5]:
        chat = api.post("/api/v1/chats", json={"title": payload[:200]})
        assert chat.status_code == 201
        chats.append(chat.json()["id"])
    return {"api": api, "sources": sources, "chats": chats}


HOSTILE_CODE = f"""
import sys
from IPython.display import HTML, SVG, Markdown, display
P = {json.dumps(PAYLOADS)}
for p in P:
    print(p)
print(P[1], file=sys.stderr)
display(HTML(P[0] + P[1]))
display(SVG('<svg xmlns="http://www.w3.org/2000/svg" onload="window.__xss=98">'
            '<script>window.__xss=99</script></svg>'))
display(Markdown(P[3] + P[4]))
display({{"application/vnd.datasources.table+json": {{"columns": P[:4], "rows": [P[4:8]]}}}},
        raw=True)
display({{"text/html": P[9]}}, raw=True)
P[5]
"""


def _watch_network(watched: Watched, workbench: Workbench) -> list[str]:
    """Abort (and list) every request that is not for this service or asks for /pwned."""
    refused: list[str] = []

    def route(route: Any) -> None:
        url = route.request.url
        if not url.startswith(workbench.url + "/") or "/pwned/" in url:
            refused.append(url)
            route.abort()
        else:
            route.continue_()

    watched.page.context.route("**/*", route)
    return refused


def _assert_inert(watched: Watched, refused: list[str], dialogs: list[str]) -> None:
    page = watched.page
    assert page.evaluate("window.__xss") is None
    assert refused == []
    assert dialogs == []
    assert watched.errors == []
    assert watched.csp_violations() == []
    assert not [u for u in watched.requests if "/pwned/" in u or "evil.example" in u]


def test_the_xss_corpus_stays_text(workbench: Workbench, watched: Watched, tmp_path: Path) -> None:
    assert len(PAYLOADS) + len(FILE_NAMES) >= 15
    seeded = _seed(workbench)
    page = watched.page
    refused = _watch_network(watched, workbench)
    dialogs: list[str] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    sign_in(page, workbench.url)

    # Sources: names, descriptions, tags.
    page.goto(f"{workbench.url}/sources")
    page.wait_for_selector("table.grid tbody tr >> nth=7")
    body = page.inner_text("main")
    assert PAYLOADS[0] in body and PAYLOADS[8] in body  # shown, as text
    screenshot(page, "xss-sources")
    # A source page: its name as the heading, hostile file names, their metadata.
    page.goto(f"{workbench.url}/sources/{seeded['sources'][1]}")
    page.wait_for_selector(f"text={FILE_NAMES[0]}")
    assert page.inner_text("h1") == f"s1 {PAYLOADS[1]}"
    for name in FILE_NAMES:
        assert name in page.inner_text("main")
    page.click(f"a:text-is('{FILE_NAMES[0]}')")
    page.wait_for_selector(f"h2:text-is('{FILE_NAMES[0]}')")
    screenshot(page, "xss-browse")
    # Chats: titles in the list and as the heading; a message full of markup, sent live.
    page.goto(f"{workbench.url}/chats/{seeded['chats'][0]}")
    page.wait_for_selector("#composer")
    assert page.inner_text("h1") == PAYLOADS[0]
    page.fill("#composer", "\n\n".join(PAYLOADS))
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("text=Done.")
    page.fill("#composer", f"```python\n{HOSTILE_CODE}\n```")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("article.assistant >> nth=1 >> text=Done.", timeout=120_000)
    page.fill("#composer", f"Brief me on @{seeded['sources'][0]}:hostile.csv")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("article.assistant >> nth=2 >> text=Done.", timeout=120_000)
    live = page.inner_text("main")
    assert PAYLOADS[0] in live and PAYLOADS[24] in live
    screenshot(page, "xss-chat-live")
    _assert_inert(watched, refused, dialogs)
    # The same history, rendered from storage after a reload.
    page.reload()
    page.wait_for_selector("article.assistant >> nth=2")
    page.wait_for_timeout(0)
    stored = page.inner_text("main")
    assert PAYLOADS[0] in stored and PAYLOADS[24] in stored
    assert (
        page.locator(
            "iframe, object, embed, script:not([src]), svg, style, base, meta[http-equiv]"
        ).count()
        == 0
    )
    assert page.locator("a[href^='javascript'], [onerror], [onload], [onfocus]").count() == 0
    screenshot(page, "xss-chat-stored")
    page.goto(f"{workbench.url}/")
    page.wait_for_selector(".chat-list a >> nth=4")
    _assert_inert(watched, refused, dialogs)
