"""Users and browser sessions in the core: hashes, timing-safe checks, expiry, no leaks."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest
from argon2 import PasswordHasher

from datasources.errors import AlreadyExistsError, InvalidInputError, NotFoundError
from datasources.store import Store
from datasources.users import Users
from datasources.websessions import WebSessions

PASSWORD = "correct horse battery"


class CountingHasher(PasswordHasher):
    """The real argon2id hasher, counting verifications."""

    def __init__(self) -> None:
        super().__init__()
        self.verified: list[str] = []

    def verify(self, hash: Any, password: Any) -> Literal[True]:
        self.verified.append(str(hash))
        return super().verify(hash, password)


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    store = Store.memory()
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def test_passwords_are_stored_as_argon2id_and_checked(store: Store) -> None:
    users = Users(store)
    alice = await users.create(" Alice ", PASSWORD)
    assert alice.name == "alice" and alice.owner.startswith("o_") and alice.id.startswith("u_")
    stored = await store.get_user(alice.id)
    assert stored is not None and stored.password_hash.startswith("$argon2id$")
    assert PASSWORD not in stored.password_hash
    assert PASSWORD not in repr(stored) and stored.password_hash not in repr(stored)
    assert (await users.verify("ALICE", PASSWORD)) == alice
    assert await users.verify("alice", PASSWORD + "x") is None
    with pytest.raises(AlreadyExistsError):
        await users.create("alice", PASSWORD)
    for bad_name in ("", "-x", "a b", "x" * 65, "<script>"):
        with pytest.raises(InvalidInputError):
            await users.create(bad_name, PASSWORD)
    for bad_password in ("short", "x" * 1025):
        with pytest.raises(InvalidInputError) as caught:
            await users.create("bob", bad_password)
        assert bad_password not in str(caught.value)


async def test_an_owner_must_exist_to_be_shared(store: Store) -> None:
    users = Users(store)
    with pytest.raises(NotFoundError):
        await users.create("bob", PASSWORD, owner="o_nobody")
    alice = await users.create("alice", PASSWORD)
    bob = await users.create("bob", PASSWORD, owner=alice.owner)
    assert bob.owner == alice.owner


async def test_unknown_names_and_disabled_users_cost_one_verification(store: Store) -> None:
    hasher = CountingHasher()
    users = Users(store, hasher=hasher)
    await users.create("alice", PASSWORD)
    await users.create("dave", PASSWORD)
    await users.disable("dave")
    for name, password in (("alice", "wrong password"), ("nobody", PASSWORD),
                           ("dave", PASSWORD), ("alice", PASSWORD)):  # fmt: skip
        hasher.verified.clear()
        await users.verify(name, password)
        assert len(hasher.verified) == 1, name  # a hash is verified every time
        assert hasher.verified[0].startswith("$argon2id$")


async def test_old_parameters_are_rehashed_on_sign_in(store: Store) -> None:
    weak = Users(store, hasher=PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1))
    alice = await weak.create("alice", PASSWORD)
    strong = Users(store)
    assert await strong.verify("alice", PASSWORD) is not None
    stored = await store.get_user(alice.id)
    assert stored is not None and "m=65536,t=3,p=4" in stored.password_hash


async def test_sessions_expire_and_csrf_is_compared_in_constant_time(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    users = Users(store)
    alice = await users.create("alice", PASSWORD)
    now = [datetime.now(UTC)]
    sessions = WebSessions(store, idle_seconds=60, max_seconds=600, clock=lambda: now[0])
    new = await sessions.start(alice)
    assert new.token not in repr(new) and new.csrf_token not in repr(new)
    stored = await store.list_web_sessions(alice.id)
    assert [s.id for s in stored] != [new.token] and new.token not in repr(stored)
    live = await sessions.resolve(new.token)
    assert live is not None and live.user.id == alice.id
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr("datasources.websessions.hmac.compare_digest", spy)
    assert live.csrf_matches(new.csrf_token) and not live.csrf_matches("0" * 64)
    assert not live.csrf_matches(None) and not live.csrf_matches("")
    assert len(compared) == 2  # both real comparisons went through compare_digest
    for bad in (None, "", "x", new.token + "A", new.token[:-1] + "$"):
        assert await sessions.resolve(bad) is None
    now[0] += timedelta(seconds=61)
    assert await sessions.resolve(new.token) is None
    assert await store.list_web_sessions(alice.id) == []  # ended, and gone from the store
    second = await sessions.start(alice)
    now[0] += timedelta(seconds=30)
    assert await sessions.sweep() == 0
    now[0] += timedelta(seconds=31)
    assert await sessions.sweep() == 1
    assert await sessions.resolve(second.token) is None
