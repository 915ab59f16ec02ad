"""References from a message to data: explicit ``data_source_refs`` and ``@mentions``."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["DataRef", "Mention", "parse_mentions", "replace_mentions"]


class DataRef(BaseModel):
    """One piece of data a message names: a file, a folder prefix, a table or a query."""

    model_config = ConfigDict(extra="forbid")

    data_source_id: str = Field(min_length=1, max_length=200)
    path: str | None = Field(default=None, min_length=1, max_length=4096)
    prefix: str | None = Field(default=None, min_length=1, max_length=4096)
    table: str | None = Field(default=None, min_length=3, max_length=200)
    query: str | None = Field(default=None, min_length=1, max_length=100_000)

    @model_validator(mode="after")
    def _exactly_one(self) -> DataRef:
        given = [k for k in ("path", "prefix", "table", "query") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of path, prefix, table or query")
        return self

    @property
    def kind(self) -> Literal["path", "prefix", "table", "query"]:
        for kind in ("path", "prefix", "table", "query"):
            if getattr(self, kind) is not None:
                return kind
        raise AssertionError("validated")

    @property
    def target(self) -> str:
        value = getattr(self, self.kind)
        assert isinstance(value, str)
        return value

    def label(self) -> str:
        return f"@{self.data_source_id}:{self.target if self.kind != 'query' else '(query)'}"


class Mention(BaseModel):
    """``@source:target`` found in a message; what it names is decided by the source."""

    source: str
    target: str


# @name:target — the name as sources are named (letters, digits, . _ -), the target up to
# the next white space; trailing punctuation of the sentence is not part of it.
_MENTION = re.compile(r"(?<![\w@])@([A-Za-z0-9][\w.-]{0,199}):(\S+)")
_TRAILING = ",;:!?)]}'\""


def _mention(match: re.Match[str]) -> tuple[str, str]:
    """(source, target) of a match, the sentence's trailing punctuation left out."""
    source, target = match.group(1), match.group(2).rstrip(_TRAILING)
    if target.endswith(".") and not target.endswith("/."):
        target = target[:-1]
    return source, target


def parse_mentions(content: str) -> list[Mention]:
    """Every ``@source:target`` in ``content``, in order, without duplicates."""
    found: list[Mention] = []
    seen: set[tuple[str, str]] = set()
    for match in _MENTION.finditer(content):
        source, target = _mention(match)
        if not target or (source, target) in seen:
            continue
        seen.add((source, target))
        found.append(Mention(source=source, target=target))
    return found


def replace_mentions(content: str, replacements: dict[tuple[str, str], str]) -> str:
    """``content`` with each ``@source:target`` in ``replacements`` replaced, in one pass
    (the punctuation after a mention is kept; other mentions are left as they are)."""

    def replace(match: re.Match[str]) -> str:
        source, target = _mention(match)
        new = replacements.get((source, target))
        if new is None:
            return match.group(0)
        return new + match.group(0)[len(source) + 2 + len(target) :]

    return _MENTION.sub(replace, content)
