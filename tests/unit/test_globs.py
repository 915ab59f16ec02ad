"""Globs: the documented syntax, every other character literal, linear time, bounded."""

from __future__ import annotations

import pytest

from datasources.errors import InvalidInputError
from datasources.globs import MAX_GLOB_LENGTH, compile_glob, glob_prefix


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("data/2024/*.csv", "data/2024/a.csv", True),
        ("data/2024/*.csv", "data/2024/x/c.csv", False),
        ("data/**/*.csv", "data/a.csv", True),
        ("data/**/*.csv", "data/2024/x/c.csv", True),
        ("data/**/*.csv", "data/a.json", False),
        ("data/**", "data/x/y.txt", True),
        ("**.csv", "a/b/c.csv", True),
        ("*.csv", "a/b.csv", False),
        ("?.txt", "a.txt", True),
        ("?.txt", "/.txt", False),
        ("??.txt", "a.txt", False),
        ("[ab].txt", "b.txt", True),
        ("[ab].txt", "c.txt", False),
        ("[a-c]1", "b1", True),
        ("[!a-c]1", "d1", True),
        ("[!a-c]1", "a1", False),
        ("[^a-c]1", "d1", True),
        ("x[!a]y", "x/y", False),  # a negated set never crosses a segment
        ("a[b", "a[b", True),  # an unclosed [ is a literal
        ("a[]b", "a[]b", True),
        # Regex syntax in a glob is literal text.
        ("a.b", "a.b", True),
        ("a.b", "axb", False),
        ("a+(b)|c$^{2}\\", "a+(b)|c$^{2}\\", True),
        ("a+", "aa", False),
        ("\\d", "\\d", True),
        ("\\d", "1", False),
        ("[\\d]", "d", True),
        ("[\\d]", "1", False),
        ("données/é*.csv", "données/été.csv", True),
        ("a\nb*", "a\nbc", True),
    ],
)
def test_the_documented_syntax(pattern: str, path: str, expected: bool) -> None:
    assert compile_glob(pattern).match(path) is expected


def test_the_literal_prefix_narrows_listings() -> None:
    assert glob_prefix("data/2024/*.csv") == "data/2024/"
    assert glob_prefix("a?b[c]") == "a"
    assert glob_prefix("plain/name") == "plain/name"


def test_hostile_patterns_match_in_linear_time() -> None:
    """What makes a backtracking engine explode is an ordinary call here.

    (No timing assertion: a pattern that backtracked would not finish this test.)"""
    name = "a" * 1000
    for pattern in ("*a" * 40 + "*b", "**a" * 40 + "b", "?*" * 200 + "b", "[a]*" * 100 + "b"):
        assert compile_glob(pattern).match(name) is False
        assert compile_glob(pattern).match("/".join([name] * 4)) is False


def test_patterns_are_bounded_and_bad_sets_are_clear_errors() -> None:
    compile_glob("*" * MAX_GLOB_LENGTH)
    with pytest.raises(InvalidInputError):
        compile_glob("*" * (MAX_GLOB_LENGTH + 1))
    with pytest.raises(InvalidInputError):
        compile_glob("[z-a]")
    with pytest.raises(InvalidInputError):
        compile_glob("[!]x")


def test_names_that_are_not_utf8_still_match_by_their_wildcards() -> None:
    name = b"dir/caf\xe9.csv".decode("utf-8", "surrogateescape")
    assert compile_glob("dir/*.csv").match(name)
    assert not compile_glob("dir/cafe.csv").match(name)
