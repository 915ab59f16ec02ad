"""Path globs, matched in time linear in the name: no user pattern ever backtracks.

The syntax (what the CLI's ``--glob`` and the API's ``glob=`` accept):

- ``*`` any run of characters within one path segment (never ``/``);
- ``?`` one character other than ``/``;
- ``[abc]``, ``[a-z]``, ``[!a-z]`` (or ``[^a-z]``) one character of (not of) a set; a
  negated set never matches ``/``; the first ``]`` after ``[`` closes it, and a ``[``
  with no ``]`` after it is a literal;
- ``**/`` any number of whole segments, none included (``data/**/*.csv`` matches
  ``data/a.csv`` and ``data/x/y/a.csv``); ``**`` elsewhere, any run of characters,
  ``/`` included;
- every other character stands for itself. A glob matches the whole path.

Why RE2: a glob translated to a backtracking regex (Python's ``re``) runs in time
exponential in the number of stars — ``*a*a*a*a*b`` against a 100-character name takes
0.15 s, one more star 5 s — and ``re`` holds the GIL while it runs, so even in a worker
thread it stops the event loop. RE2 (``google-re2``) compiles to automata that run in
time linear in the name for any pattern, in C++. The translation below stays the one
place that knows the syntax; the user's characters reach RE2 only as escaped code points
(``\\x{…}``), so no pattern text is ever regex syntax. Patterns are bounded
(:data:`MAX_GLOB_LENGTH`), which bounds the automaton too.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from datasources.errors import InvalidInputError

__all__ = ["MAX_GLOB_LENGTH", "GlobMatcher", "compile_glob", "glob_prefix"]

MAX_GLOB_LENGTH = 1024
"""Longest glob accepted (Azure's longest blob name is 1,024 characters)."""

_WILDCARDS = "*?["
_RE2_MAX_MEM = 2 << 20  # per compiled pattern (program + DFA cache): 64 cached ≤ 128 MiB


def _char(c: str) -> str:
    """``c`` as RE2 syntax that means exactly that character."""
    return c if c.isascii() and c.isalnum() else f"\\x{{{ord(c):x}}}"


def _char_class(body: str) -> str:
    """A ``[...]`` body (without brackets) as an RE2 class of escaped code points."""
    negated = body[:1] in ("!", "^")
    if negated:
        body = body[1:]
    if not body:
        raise InvalidInputError("A glob's [...] set is empty.")
    items: list[str] = []
    i = 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-":
            low, high = body[i], body[i + 2]
            if ord(low) > ord(high):
                raise InvalidInputError(f"A glob's range {low}-{high} runs backwards.")
            items.append(f"{_char(low)}-{_char(high)}")
            i += 3
        else:
            items.append(_char(body[i]))
            i += 1
    if negated:
        return f"[^/{''.join(items)}]"
    return f"[{''.join(items)}]"


def _translate(pattern: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 1)) > i + 1:
            out.append(_char_class(pattern[i + 1 : end]))
            i = end + 1
        else:
            out.append(_char(pattern[i]))
            i += 1
    return "(?s)" + "".join(out)


class GlobMatcher:
    """A compiled glob. :meth:`match` runs in time linear in the path's length."""

    __slots__ = ("_regex", "pattern")

    def __init__(self, pattern: str, regex: Any) -> None:
        self.pattern = pattern
        self._regex = regex

    def __repr__(self) -> str:
        return f"GlobMatcher({self.pattern!r})"

    def match(self, path: str) -> bool:
        """Whether the whole ``path`` matches."""
        try:
            return self._regex.fullmatch(path) is not None
        except UnicodeEncodeError:
            # A local name that is not UTF-8 (kept by Python as lone surrogates): match
            # what it reads as; its undecodable bytes match only wildcards.
            text = path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            return self._regex.fullmatch(text) is not None


@lru_cache(maxsize=64)
def compile_glob(pattern: str) -> GlobMatcher:
    """Compile a path glob (syntax in the module docstring); a clear error if it is bad."""
    import re2  # type: ignore[import-untyped]

    if len(pattern) > MAX_GLOB_LENGTH:
        raise InvalidInputError(f"A glob is at most {MAX_GLOB_LENGTH} characters.")
    options = re2.Options()
    options.max_mem = _RE2_MAX_MEM
    options.log_errors = False  # a DFA over budget falls back to the NFA: not an error
    try:
        regex = re2.compile(_translate(pattern), options)
    except re2.error:
        raise InvalidInputError("The glob is too complex to match.") from None
    return GlobMatcher(pattern, regex)


def glob_prefix(pattern: str) -> str:
    """The literal part of a glob before its first wildcard (a listing prefix)."""
    cut = min((i for i in (pattern.find(c) for c in _WILDCARDS) if i >= 0), default=-1)
    return pattern if cut < 0 else pattern[:cut]
