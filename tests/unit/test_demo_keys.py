"""``serve --demo`` key handling (docs/deployment.md): each start revokes the previous
demo key and prints a new one; other keys are untouched; keys are stored only hashed."""

from __future__ import annotations

from pathlib import Path

from datasources import DataSourceRegistry, Settings
from datasources.cli import _prepare_demo
from datasources.keys import ApiKeys


async def test_each_demo_start_revokes_the_previous_demo_key_only(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    first = await _prepare_demo(settings)
    async with DataSourceRegistry.from_settings(settings) as registry:
        other = await ApiKeys(registry.store).create("ci", owner=settings.owner)
    second = await _prepare_demo(settings)
    assert first.startswith("dsk_") and second.startswith("dsk_") and first != second
    async with DataSourceRegistry.from_settings(settings) as registry:
        keys = ApiKeys(registry.store, cache_seconds=0)
        assert await keys.authenticate(first) is None  # revoked
        assert await keys.authenticate(second) is not None
        assert await keys.authenticate(other.key) is not None  # not a demo key: kept
        live = [k for k in await keys.list_keys(owner=settings.owner) if k.revoked_at is None]
        assert sorted(k.name for k in live) == ["ci", "demo"]
        # The sample source is registered once, however often the demo starts.
        assert [s.id for s in await registry.list_data_sources()] == ["samples"]
    stored = b"".join(p.read_bytes() for p in settings.home.glob("datasources.db*"))
    for key in (first, second, other.key):
        assert key.encode() not in stored  # only a hash of each key is kept
        assert key.split("_", 1)[1].encode() not in stored
