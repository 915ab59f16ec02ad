"""``datasources chat``: chat with data in the terminal, through the HTTP API.

Without ``--url`` the service runs embedded in this process (same store, same sandbox)
and is reached over an in-process transport; with it, a remote service is used. Either
way the terminal is one more client of the public API.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from datasources.cli.common import err, get_state, out, run_command
from datasources.errors import (
    ConfigurationError,
    DataSourceError,
    NotFoundError,
    UnavailableError,
)
from datasources.keys import ApiKeys
from datasources.registry import DataSourceRegistry

__all__ = ["chat", "fence_open", "piped_messages"]


def _render_part(part: dict[str, Any], client: Any, chat_id: str, saved: Path) -> Any:
    """Print one reply part; images are downloaded into ``saved``. Returns a coroutine or None."""
    kind = part.get("type")
    if kind in ("text", "result"):
        out.print(part.get("text", ""), markup=False)
    elif kind in ("stdout", "stderr"):
        (err if kind == "stderr" else out).print(part.get("text", "").rstrip("\n"), markup=False)
    elif kind == "code":
        from rich.syntax import Syntax

        out.print(Syntax(part.get("text", ""), "python", theme="ansi_dark"))
    elif kind == "error":
        err.print(f"[red]{part.get('name') or 'error'}[/]: {part.get('text', '')}")
    elif kind == "table":
        data = part.get("data") or {}
        if "preview" in data:  # a data brief
            out.print(f"{data.get('title')}: {data.get('rows')} rows", markup=False)
            table = Table("column", "type", "nulls", "distinct", "min", "max")
            for c in data.get("columns", []):
                table.add_row(
                    str(c["name"]),
                    str(c["type"]),
                    f"{c['null_fraction']:.1%}",
                    str(c["distinct"]),
                    str(c.get("min", "")),
                    str(c.get("max", "")),
                )
            out.print(table)
        else:
            table = Table(*[str(c) for c in data.get("columns", [])])
            for row in data.get("rows", [])[:50]:
                table.add_row(*["" if v is None else str(v) for v in row])
            out.print(table)
    elif kind == "image" and part.get("path"):
        return _save_image(client, chat_id, str(part["path"]), saved)
    return None


async def _save_image(client: Any, chat_id: str, path: str, saved: Path) -> None:
    response = await client.get(f"/api/v1/chats/{chat_id}/files/{path}")
    if response.status_code == 200:
        await asyncio.to_thread(saved.mkdir, parents=True, exist_ok=True)
        target = saved / Path(path).name
        await asyncio.to_thread(target.write_bytes, response.content)
        out.print(f"(image saved to {target})", markup=False)


def fence_open(text: str) -> bool:
    """Whether ``text`` stops inside a ```` ``` ```` block (an odd number of fences)."""
    return text.count("```") % 2 == 1


def piped_messages(lines: Iterable[str]) -> Iterator[str]:
    """Messages from lines of text: one line each, a ```` ``` ```` block whole."""
    pending: list[str] = []
    for raw in lines:
        pending.append(raw.rstrip("\r\n"))
        text = "\n".join(pending)
        if not fence_open(text):
            yield text
            pending = []
    if pending:  # a block never closed: send what there is
        yield "\n".join(pending)


class _MessageReader:
    """Reads chat messages: an editor in a terminal, whole blocks from a pipe.

    In a terminal, Enter sends the message unless a ```` ``` ```` block is still open
    (then it starts a new line); Esc then Enter always starts a new line, and pasted
    text keeps its line breaks. From a pipe, each line is a message and a fenced block
    is one message.
    """

    def __init__(self) -> None:
        self._session: Any = None
        self._piped: Iterator[str] | None = None
        if sys.stdin.isatty() and sys.stdout.isatty():
            from prompt_toolkit import PromptSession
            from prompt_toolkit.key_binding import KeyBindings

            bindings = KeyBindings()

            @bindings.add("enter")
            def _enter(event: Any) -> None:
                buffer = event.current_buffer
                if fence_open(buffer.text):
                    buffer.insert_text("\n")
                else:
                    buffer.validate_and_handle()

            @bindings.add("escape", "enter")
            def _newline(event: Any) -> None:
                event.current_buffer.insert_text("\n")

            self._session = PromptSession(
                multiline=True, key_bindings=bindings, prompt_continuation="...> "
            )
            self.hint = (
                "Enter sends. Inside a ```python block Enter starts a new line until the "
                "closing ```; Esc then Enter adds a line anywhere; pasting keeps lines."
            )
        else:
            self._piped = piped_messages(iter(sys.stdin.readline, ""))
            self.hint = "Reading messages from standard input: a line each, a ``` block whole."

    async def read(self) -> str:
        if self._session is not None:
            try:
                text: str = await self._session.prompt_async("you> ")
            except KeyboardInterrupt:
                return ""
            return text
        assert self._piped is not None
        message = await asyncio.to_thread(next, self._piped, None)
        if message is None:
            raise EOFError
        return message


def chat(
    ctx: typer.Context,
    source: Annotated[
        list[str] | None,
        typer.Option("--source", help="Chat about these sources only (repeatable; id or name)."),
    ] = None,
    url: Annotated[
        str | None, typer.Option(help="A remote service; default the local embedded one.")
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="DATASOURCES_API_KEY", help="The key for --url (or the env var)."),
    ] = None,
    save_to: Annotated[Path, typer.Option(help="Where images are saved.")] = Path("chat-images"),
) -> None:
    """Chat with your data in the terminal: @source:path references, ```python, /sql."""
    import httpx

    state = get_state(ctx)

    async def converse(client: Any) -> None:
        from datasources.chat.refs import parse_mentions

        listed = (await client.get("/api/v1/datasources", params={"limit": 200})).json()
        names = {s["name"]: s for s in listed.get("items", [])} | {
            s["id"]: s for s in listed.get("items", [])
        }
        for wanted in source or []:
            if wanted not in names:
                raise NotFoundError(f"Data source {wanted!r} not found.")
        # With --source, the chat is about those sources only; without, about all of them.
        chosen = (
            {names[w]["id"]: names[w] for w in source}
            if source
            else {s["id"]: s for s in names.values()}
        )
        allowed = set(chosen) | {s["name"] for s in chosen.values()}
        created = await client.post("/api/v1/chats", json={"title": "terminal"})
        if created.status_code != 201:
            raise DataSourceError(created.json().get("detail", "could not start a chat"))
        chat_id = created.json()["id"]
        shown = (
            ", ".join(
                f"@{sid}" + (f" ({item['name']})" if item["name"] != sid else "")
                for sid, item in sorted(chosen.items())
            )
            or "none"
        )
        reader = _MessageReader()
        out.print(
            f"Chat {chat_id}. Sources: {shown}. Refer to data as @source:path; /quit to leave.",
            markup=False,
        )
        out.print(reader.hint, markup=False)
        while True:
            try:
                line = await reader.read()
            except EOFError:
                break
            if line.strip() in ("/quit", "/exit"):
                break
            if not line.strip():
                continue
            others = sorted({m.source for m in parse_mentions(line)} - allowed)
            if others:
                err.print(
                    f"error: @{others[0]} is not one of this chat's sources ({shown})",
                    markup=False,
                )
                continue
            response = await client.post(
                f"/api/v1/chats/{chat_id}/messages", json={"content": line}, timeout=600
            )
            if response.status_code != 200:
                err.print(f"error: {response.json().get('detail', response.text)}", markup=False)
                continue
            for part in response.json()["reply"]["parts"]:
                pending = _render_part(part, client, chat_id, save_to)
                if pending is not None:
                    await pending

    async def local() -> None:
        from datasources.api import create_app

        settings = state.settings()
        registry = DataSourceRegistry.from_settings(settings)
        app_ = create_app(settings, registry=registry)
        async with app_.router.lifespan_context(app_):
            keys: ApiKeys = app_.state.keys
            key = await keys.create("terminal-chat", owner=settings.owner, new_owner=True)
            try:
                transport = httpx.ASGITransport(app=app_)
                async with httpx.AsyncClient(
                    transport=transport,
                    base_url="http://local",
                    headers={"Authorization": f"Bearer {key.key}"},
                    timeout=600,
                ) as client:
                    await converse(client)
            finally:
                await keys.revoke(key.id)
        await registry.close()

    async def remote() -> None:
        if not api_key:
            raise ConfigurationError("--url needs --api-key (or DATASOURCES_API_KEY).")
        try:
            async with httpx.AsyncClient(
                base_url=str(url), headers={"Authorization": f"Bearer {api_key}"}, timeout=600
            ) as client:
                await converse(client)
        except httpx.TransportError:
            raise UnavailableError(f"The service at {url} cannot be reached.") from None

    run_command(remote() if url else local())
