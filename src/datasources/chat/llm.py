"""Language models: a small provider interface and an OpenAI-compatible provider.

The OpenAI SDK reaches OpenAI, Azure OpenAI and local servers (Ollama, vLLM, llama.cpp)
through ``base_url``; configured by ``DATASOURCES_LLM_BASE_URL``,
``DATASOURCES_LLM_MODEL`` and ``DATASOURCES_LLM_API_KEY``.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Protocol

from pydantic import BaseModel, Field, SecretStr

from datasources.errors import AuthenticationError, TimeoutError, UnavailableError

__all__ = ["Completion", "LLMProvider", "OpenAICompatibleProvider", "ToolCall"]

logger = logging.getLogger(__name__)


class ToolCall(BaseModel):
    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    raw_arguments: str = ""


class Completion(BaseModel):
    """One answer of the model: text, tool calls, or both; tokens it cost."""

    content: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tokens: int = 0


class LLMProvider(Protocol):
    """What the assistant needs from a model."""

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> Completion: ...


class OpenAICompatibleProvider:
    """Chat completions with tool calling, over the ``openai`` SDK."""

    def __init__(
        self,
        *,
        base_url: str | None,
        model: str,
        api_key: SecretStr | None,
        timeout: float = 120.0,
        max_tokens: int = 4096,
    ) -> None:
        from openai import AsyncOpenAI

        self.model = model
        self.max_tokens = max_tokens
        self._client = AsyncOpenAI(
            base_url=base_url,
            api_key=api_key.get_secret_value() if api_key else "not-needed",
            timeout=timeout,
            max_retries=1,
        )

    def __repr__(self) -> str:
        return f"OpenAICompatibleProvider(model={self.model!r})"

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> Completion:
        import openai

        try:
            create: Any = self._client.chat.completions.create  # messages are plain dicts
            response = await create(
                model=self.model,
                messages=messages,
                tools=tools,
                tool_choice="auto",
                max_tokens=self.max_tokens,
            )
        except openai.AuthenticationError:
            raise AuthenticationError("The language model rejected its API key.") from None
        except openai.APITimeoutError:
            raise TimeoutError("The language model did not answer in time.") from None
        except openai.APIError as exc:
            logger.info("Language model call failed: %s", type(exc).__name__)
            raise UnavailableError("The language model cannot be reached.") from None
        choice = response.choices[0].message
        calls = []
        for call in choice.tool_calls or []:
            function = getattr(call, "function", None)
            if function is None:
                continue
            try:
                arguments = json.loads(function.arguments or "{}")
            except ValueError:
                arguments = {}
            calls.append(
                ToolCall(
                    id=call.id,
                    name=function.name,
                    arguments=arguments if isinstance(arguments, dict) else {},
                    raw_arguments=function.arguments or "",
                )
            )
        tokens = response.usage.total_tokens if response.usage is not None else 0
        return Completion(content=choice.content, tool_calls=calls, tokens=tokens)
