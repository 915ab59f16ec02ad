"""``serve --demo`` key handling (docs/deployment.md): the demo key is kept across runs
(in a 0600 file beside the store), ``--new-key`` replaces it and revokes the old one,
other keys are untouched, and the store keeps only hashes."""

from __future__ import annotations

import stat
from pathlib import Path

from datasources import DataSourceRegistry, Settings
from datasources.cli.serve import DemoUser, prepare_demo, prepare_demo_user
from datasources.keys import ApiKeys
from datasources.users import Users


async def _live(settings: Settings, *keys: str) -> list[bool]:
    async with DataSourceRegistry.from_settings(settings) as registry:
        checker = ApiKeys(registry.store, cache_seconds=0)
        return [await checker.authenticate(k) is not None for k in keys]


async def test_the_demo_key_is_kept_across_runs_until_a_new_one_is_asked_for(
    tmp_path: Path,
) -> None:
    settings = Settings(home=tmp_path / "home")
    first = await prepare_demo(settings)
    async with DataSourceRegistry.from_settings(settings) as registry:
        other = await ApiKeys(registry.store).create("ci", owner=settings.owner)
    again = await prepare_demo(settings)
    assert first.startswith("dsk_") and again == first  # scripts keep working
    kept = settings.home / "demo.key"
    assert kept.read_text().strip() == first
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600

    fresh = await prepare_demo(settings, new_key=True)
    assert fresh != first
    assert await _live(settings, first, fresh, other.key) == [False, True, True]
    assert kept.read_text().strip() == fresh

    # A kept key that was revoked elsewhere, or a file others can read, is replaced.
    async with DataSourceRegistry.from_settings(settings) as registry:
        keys = ApiKeys(registry.store)
        demo = next(k for k in await keys.list_keys() if k.revoked_at is None and k.name == "demo")
        await keys.revoke(demo.id)
    replaced = await prepare_demo(settings)
    assert replaced != fresh and await _live(settings, replaced) == [True]
    kept.chmod(0o644)
    assert await prepare_demo(settings) != replaced

    async with DataSourceRegistry.from_settings(settings) as registry:
        live = [k for k in await ApiKeys(registry.store).list_keys() if k.revoked_at is None]
        assert sorted(k.name for k in live) == ["ci", "demo"]
        # The sample source is registered once, however often the demo starts.
        assert [s.id for s in await registry.list_data_sources()] == ["samples"]
    stored = b"".join(p.read_bytes() for p in settings.home.glob("datasources.db*"))
    for key in (first, fresh, replaced, other.key):
        assert key.encode() not in stored  # the store keeps only a hash of each key
        assert key.split("_", 1)[1].encode() not in stored


async def test_the_demo_user_signs_in_with_the_kept_password(tmp_path: Path) -> None:
    """``serve --demo``'s workbench user: made once for the demo owner, its random password
    kept 0600 in ``<home>/demo.password`` across runs, replaced when the file is lost or
    others can read it, and never in the store."""
    settings = Settings(home=tmp_path / "home")
    await prepare_demo(settings)
    user = await prepare_demo_user(settings)
    kept = settings.home / "demo.password"
    assert user == DemoUser("demo", kept)
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    password = kept.read_text().strip()
    assert len(password) >= 20

    async def signs_in(secret: str) -> str | None:
        async with DataSourceRegistry.from_settings(settings) as registry:
            found = await Users(registry.store).verify("demo", secret)
            return found.owner if found else None

    assert await signs_in(password) == settings.owner  # sees what the demo key sees
    await prepare_demo_user(settings)
    assert kept.read_text().strip() == password  # kept across runs

    kept.unlink()
    await prepare_demo_user(settings)
    fresh = kept.read_text().strip()
    assert fresh != password
    assert [await signs_in(password), await signs_in(fresh)] == [None, settings.owner]
    kept.chmod(0o644)
    await prepare_demo_user(settings)
    assert kept.read_text().strip() != fresh and stat.S_IMODE(kept.stat().st_mode) == 0o600

    # A disabled demo user stays disabled; the banner says so.
    async with DataSourceRegistry.from_settings(settings) as registry:
        await Users(registry.store).disable("demo")
        assert len(await Users(registry.store).list_users()) == 1
    assert (await prepare_demo_user(settings)).disabled
    stored = b"".join(p.read_bytes() for p in settings.home.glob("datasources.db*"))
    assert kept.read_text().strip().encode() not in stored


async def test_a_demo_user_of_another_owner_is_left_alone(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    await prepare_demo(settings)
    async with DataSourceRegistry.from_settings(settings) as registry:
        await Users(registry.store).create("demo", "someone's own password")
    user = await prepare_demo_user(settings)
    assert user.password_file is None and not (settings.home / "demo.password").exists()
    async with DataSourceRegistry.from_settings(settings) as registry:
        assert await Users(registry.store).verify("demo", "someone's own password") is not None
