"""The workbench's browser code: plain HTML, CSS and ES modules, served as they are.

There is no build step: what is in this folder is what a browser gets, so ``pip install
.`` from a clone gives a working UI and there is no JavaScript lock file to keep.
:mod:`datasources.api.web` serves it under ``/static/app`` with a strict
Content-Security-Policy.
"""

from __future__ import annotations

import functools
from pathlib import Path

__all__ = ["ASSETS", "PAGES", "read_page"]

ASSETS = Path(__file__).parent / "static"
"""The folder served under ``/static/app``: stylesheets, modules, icons."""
PAGES = Path(__file__).parent / "pages"
"""The two HTML documents: the app shell and the sign-in form."""


@functools.cache
def read_page(name: str) -> str:
    """The text of one page (read once per process)."""
    return (PAGES / name).read_text(encoding="utf-8")
