"""The assistant runs against the ChatContext protocol alone: no service, no sandbox.

A scripted model asks for the database tools on a source of files; the assistant asks
for the database capability once (``as_sql``) and answers with ``not_a_database``
instead of probing for methods. Fakes here are the model and the chat; the registry
and the folder are real.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from datasources.chat.assistant import Assistant
from datasources.chat.context import ChatContext
from datasources.chat.llm import Completion, ToolCall
from datasources.chat.models import Event, Resolved
from datasources.chat.refs import DataRef
from datasources.config import Settings
from datasources.models import DataSourceConfig
from datasources.registry import DataSourceRegistry
from datasources.sandbox.session import Execution


class ScriptedModel:
    """Asks for each tool call in turn, then answers with the tool results it saw."""

    def __init__(self, calls: list[tuple[str, dict[str, Any]]]) -> None:
        self.calls = calls
        self.seen: list[str] = []

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> Completion:
        self.seen = [str(m["content"]) for m in messages if m["role"] == "tool"]
        if self.calls:
            name, arguments = self.calls.pop(0)
            return Completion(tool_calls=[ToolCall(id=name, name=name, arguments=arguments)])
        return Completion(content="done")


class FakeChat:
    """A chat with a registry and nothing else: fetching or running code is a failure."""

    def __init__(self, registry: DataSourceRegistry, workspace: Path) -> None:
        self.owner = "local"
        self.chat_id = "0" * 24
        self.registry = registry
        self.workspace_dir = workspace

    async def resolve(self, refs: Sequence[DataRef]) -> list[Resolved]:
        raise AssertionError("not used here")

    def fetch(self, resolved: Sequence[Resolved], message_id: str) -> AsyncIterator[Event]:
        raise AssertionError("not used here")

    async def run_code(self, code: str) -> Execution:
        raise AssertionError("not used here")

    async def workspace_sources(self) -> set[str]:
        return set()

    async def history(self) -> list[dict[str, Any]]:
        return []


async def test_database_tools_on_a_folder_answer_not_a_database(tmp_path: Path) -> None:
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "a.csv").write_text("x\n1\n")
    settings = Settings(home=tmp_path / "home")
    async with DataSourceRegistry.from_settings(settings) as registry:
        await registry.register_data_source(
            DataSourceConfig(name="files", type="local_folder", config={"root": str(folder)})
        )
        model = ScriptedModel(
            [
                ("get_schema", {"source": "files"}),
                ("profile", {"source": "files", "table_or_sql": "public.t"}),
                ("run_sql", {"source": "files", "sql": "select 1"}),
            ]
        )
        chat: ChatContext = FakeChat(registry.scoped(settings.owner), tmp_path / "ws")
        assistant = Assistant(model, max_steps=5, max_tokens=10_000)
        steps = [step async for step in assistant.reply(chat, "what is in files?", [])]
    answers = [json.loads(seen) for seen in model.seen]
    assert [a["error"] for a in answers] == ["not_a_database"] * 3
    assert all(a["message"].startswith("withheld") for a in answers)  # a private source
    assert steps[-1][0].data == {"text": "done"}
