"""The main paths through the workbench, in Chromium: add a folder and a PostgreSQL
source through the forms, browse and download, run SQL and export it, chat with code
that draws a chart, and download a workspace file."""

from __future__ import annotations

import asyncio
import concurrent.futures
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.browser.conftest import Watched, Workbench, screenshot, sign_in
from tests.conftest import require_service

pytestmark = pytest.mark.browser


def _in_thread(coro: object) -> object:
    # Playwright's sync API keeps an event loop on this thread.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()  # type: ignore[arg-type]


async def _make_database(admin_dsn: str, name: str, role: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(f"{admin_dsn.rsplit('/', 1)[0]}/{name}")
    try:
        await conn.execute(
            "CREATE TABLE sales (region text, units int, price numeric(10,2));"
            "INSERT INTO sales VALUES ('north', 3, 9.50), ('south', 5, 12.25), ('east', 7, 1.00);"
            f"CREATE ROLE {role} LOGIN; GRANT USAGE ON SCHEMA public TO {role};"
            f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};"
        )
    finally:
        await conn.close()


async def _drop_database(admin_dsn: str, name: str, role: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
    finally:
        await admin.close()


@pytest.fixture
def sales_database() -> Iterator[dict[str, str]]:
    """A database with a sales table and a least-privilege role that reads it."""
    admin = require_service("DATASOURCES_TEST_POSTGRES_DSN")
    name, role = f"ds_ui_{secrets.token_hex(5)}", f"ds_ui_reader_{secrets.token_hex(5)}"
    _in_thread(_make_database(admin, name, role))
    parts = urlsplit(admin)
    try:
        yield {"host": parts.hostname or "127.0.0.1", "port": str(parts.port or 5432),
               "database": name, "user": role}  # fmt: skip
    finally:
        _in_thread(_drop_database(admin, name, role))


def test_add_a_folder_source_browse_and_download(
    workbench: Workbench, watched: Watched, tmp_path: Path
) -> None:
    page = watched.page
    sign_in(page, workbench.url)
    page.click("nav.mainnav a:text('Sources')")
    page.select_option("#new-type", "local_folder")
    page.click("button:text('Add a source')")
    page.fill("#src-name", "Sales files")
    page.fill("#cfg-root", str(workbench.folder))
    screenshot(page, "add-source")
    page.click("button:text('Add source')")
    page.wait_for_url(f"{workbench.url}/sources/sales-files")
    page.click("a:text-is('sales.csv')")
    page.wait_for_selector("h2:text-is('sales.csv')")
    # The preview: the first rows, computed on the server.
    page.wait_for_selector("section[aria-label=Item] td:text-is('north')")
    headers = page.locator("section[aria-label=Item] thead th").all_inner_texts()
    assert headers == ["region", "units"]
    with page.expect_download() as info:
        page.click("button:text('Download')")
    target = tmp_path / "got.csv"
    info.value.save_as(target)
    assert target.read_text() == (workbench.folder / "sales.csv").read_text()
    # Test, and a form error shown as the API's problem, in words.
    page.goto(f"{workbench.url}/sources")
    page.click("button:text('Test')")
    page.wait_for_selector("td .ok:text-matches('Connected')")
    page.select_option("#new-type", "local_folder")
    page.click("button:text('Add a source')")
    page.fill("#src-name", "Outside")
    page.fill("#cfg-root", "/etc")
    page.click("button:text('Add source')")
    alert = page.wait_for_selector("form [role=alert]")
    assert "permission_denied" in alert.inner_text()
    screenshot(page, "add-source-refused")
    assert watched.errors == [] and watched.csp_violations() == []


def test_a_postgresql_source_its_tables_and_sql(
    workbench: Workbench, watched: Watched, sales_database: dict[str, str], tmp_path: Path
) -> None:
    page = watched.page
    sign_in(page, workbench.url)
    page.goto(f"{workbench.url}/sources")
    page.select_option("#new-type", "postgresql")
    page.click("button:text('Add a source')")
    page.fill("#src-name", "warehouse")
    for field in ("host", "database", "user"):
        page.fill(f"#cfg-{field}", sales_database[field])
    page.click("summary:text('More settings')")
    page.fill("#cfg-port", sales_database["port"])
    page.click("button:text('Add source')")
    page.wait_for_url(f"{workbench.url}/sources/warehouse")
    page.click("summary:text-matches('sales')")
    page.wait_for_selector("td:text-is('units')")
    screenshot(page, "database")
    page.click("a:text('Open the SQL editor')")
    page.wait_for_selector("#sql")
    page.fill("#sql", "SELECT region, units * price AS total FROM sales ORDER BY region")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("text=3 rows")
    # Highlighted as typed: keywords in spans of the (aria-hidden) layer under the editor.
    keywords = page.locator(".sql-highlight .tok-keyword").all_inner_texts()
    assert keywords[:2] == ["SELECT", "AS"]
    cells = page.locator("table.grid tbody tr").all_inner_texts()
    assert cells[0].split("\t")[0] == "east" and len(cells) == 3
    screenshot(page, "sql")
    with page.expect_download() as info:
        page.click("button:text('Export CSV')")
    target = tmp_path / "result.csv"
    info.value.save_as(target)
    lines = target.read_text().splitlines()
    assert lines[0] == "region,total" and lines[1].startswith("east,")
    page.fill("#sql", "DELETE FROM sales")
    page.click("button:text('Run')")
    alert = page.wait_for_selector("main [role=alert]")
    assert "read_only_violation" in alert.inner_text()
    assert watched.errors == [] and watched.csp_violations() == []


def test_chat_with_code_that_draws_a_chart(
    workbench: Workbench, watched: Watched, tmp_path: Path
) -> None:
    page = watched.page
    sign_in(page, workbench.url)
    page.fill("#new-chat-title", "Charts")
    page.click("button:text('Start a chat')")
    page.wait_for_selector("h1:text-is('Charts')")
    page.click("button:text('Rename')")
    page.fill("#chat-title", "Bar charts")
    page.keyboard.press("Enter")
    page.wait_for_selector("h1:text-is('Bar charts')")
    assert page.locator(".chat-list a[aria-current=page]").inner_text() == "Bar charts"
    code = (
        "import matplotlib.pyplot as plt\n"
        "plt.bar(['north', 'south'], [3, 5])\n"
        "plt.show()\n"
        "open('outputs/result.csv', 'w').write('region,units\\nnorth,3\\n')\n"
        "print('saved')"
    )
    page.fill("#composer", f"```python\n{code}\n```")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("article.assistant >> text=Done.", timeout=120_000)
    image = page.wait_for_selector("img.part-img")
    page.wait_for_function("img => img.complete && img.naturalWidth > 100", arg=image)
    assert page.locator("pre.part-stdout:text('saved')").count() == 1
    button = page.wait_for_selector("aside button:text('outputs/result.csv')")
    with page.expect_download() as info:
        button.click()
    target = tmp_path / "result.csv"
    info.value.save_as(target)
    assert target.read_text() == "region,units\nnorth,3\n"
    screenshot(page, "chat-chart")
    # The reply comes back from the history after a reload, image and all.
    page.reload()
    image = page.wait_for_selector("img.part-img")
    page.wait_for_function("img => img.complete && img.naturalWidth > 100", arg=image)
    assert watched.errors == [] and watched.csp_violations() == []


def test_code_run_again_is_in_the_history_after_a_reload(
    workbench: Workbench, watched: Watched
) -> None:
    page = watched.page
    sign_in(page, workbench.url)
    page.fill("#new-chat-title", "Runs")
    page.click("button:text('Start a chat')")
    page.wait_for_selector("h1:text-is('Runs')")
    code = "n = globals().get('n', 0) + 1\nprint(f'run {n}')"
    page.fill("#composer", f"```python\n{code}\n```")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("article.assistant >> text=Done.", timeout=120_000)
    page.wait_for_selector("pre.part-stdout:text('run 1')")
    page.click("article.assistant button:text('Run again')")
    page.wait_for_selector("pre.part-stdout:text('run 2')", timeout=120_000)
    page.reload()
    # The run is a message of the history: its cell and its output come back.
    run = page.wait_for_selector("article.execution")
    assert "code run" in run.inner_text().lower()
    assert run.query_selector("pre code") is not None
    assert "globals().get('n', 0)" in run.query_selector("pre code").inner_text()
    assert run.query_selector("pre.part-stdout:text('run 2')") is not None
    assert watched.errors == [] and watched.csp_violations() == []


def test_the_composer_completes_sources_then_paths(workbench: Workbench, watched: Watched) -> None:
    import httpx

    httpx.post(
        f"{workbench.url}/api/v1/datasources",
        headers=workbench.bearer,
        json={"name": "files", "type": "local_folder", "config": {"root": str(workbench.folder)}},
    ).raise_for_status()
    chat = httpx.post(f"{workbench.url}/api/v1/chats", headers=workbench.bearer, json={}).json()
    page = watched.page
    sign_in(page, workbench.url)
    page.goto(f"{workbench.url}/chats/{chat['id']}")
    composer = page.locator("#composer")
    composer.focus()
    page.keyboard.type("Compare @fi")
    page.wait_for_selector("#composer-completions li:text-is('files')")
    assert composer.get_attribute("aria-expanded") == "true"
    page.keyboard.press("Tab")  # takes the source, and goes on with its top level
    page.wait_for_selector("#composer-completions li:text-is('reports/')")
    assert composer.input_value() == "Compare @files:"
    page.keyboard.type("rep")
    page.wait_for_selector("#composer-completions li:text-is('reports/')")
    page.keyboard.press("Enter")  # a folder: completion goes on inside it
    page.wait_for_selector("#composer-completions li:text-is('q1.txt')")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    assert composer.input_value() == "Compare @files:reports/q1.txt "
    assert composer.get_attribute("aria-expanded") == "false"
    page.keyboard.type("and @nothing-like-this")
    assert page.locator("#composer-completions").is_hidden()
    screenshot(page, "composer-completion")
    assert watched.errors == [] and watched.csp_violations() == []
