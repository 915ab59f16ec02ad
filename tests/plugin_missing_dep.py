"""A connector module whose optional dependency is not installed."""

import nonexistent_sdk_for_tests  # noqa: F401
