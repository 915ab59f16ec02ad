"""Signing in to the workbench, hostile: CSRF, cross-site cookies, fixation, brute force,
disabled users, expired sessions, and no password, hash or token anywhere visible."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from datasources.api import create_app
from datasources.api.browser import COOKIE, SECURE_COOKIE
from datasources.keys import CreatedKey
from datasources.store import StoredUser
from datasources.users import Users
from datasources.websessions import WebSessions
from tests.api.conftest import make_settings

pytestmark = pytest.mark.api

ORIGIN = "http://testserver"
PASSWORD = "correct horse battery"


@dataclass
class Web:
    app: FastAPI
    folder: Path
    alice: StoredUser
    alice_key: CreatedKey

    def client(self, *, address: str = "127.0.0.1", base: str = ORIGIN) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=(address, 50000))
        return httpx.AsyncClient(transport=transport, base_url=base)

    @property
    def users(self) -> Users:
        users: Users = self.app.state.users
        return users


async def sign_in(
    client: httpx.AsyncClient, name: str = "alice", password: str = PASSWORD, **extra: Any
) -> httpx.Response:
    headers = {"Origin": str(client.base_url).rstrip("/"), **extra.pop("headers", {})}
    data = {"name": name, "password": password, **extra}
    return await client.post("/login", data=data, headers=headers)


async def csrf(client: httpx.AsyncClient) -> dict[str, str]:
    """Headers a page of this origin sends on a change."""
    session = await client.get("/api/v1/session", headers={"Sec-Fetch-Site": "same-origin"})
    assert session.status_code == 200, session.text
    return {"X-CSRF-Token": session.json()["csrf_token"], "Origin": ORIGIN}


@pytest.fixture
async def web(tmp_path: Path) -> AsyncIterator[Web]:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.csv").write_text("x\n1\n")
    app = create_app(make_settings(tmp_path))
    async with app.router.lifespan_context(app):
        key = await app.state.keys.create("alice-key")
        users: Users = app.state.users
        alice = await users.create("alice", PASSWORD, owner=key.owner)
        yield Web(app, folder, alice, key)


async def test_sign_in_sets_a_strict_http_only_cookie_and_shows_the_user(web: Web) -> None:
    async with web.client() as client:
        response = await sign_in(client, next="/sources/x/sql")
        assert response.status_code == 303
        assert response.headers["location"] == "/sources/x/sql"
        cookie = response.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}=")
        attributes = {part.strip().lower() for part in cookie.split(";")}
        assert {"httponly", "samesite=strict", "path=/"} <= attributes
        assert "secure" not in attributes  # plain http: a Secure cookie would not come back
        max_age = next(int(a.split("=")[1]) for a in attributes if a.startswith("max-age="))
        assert 12 * 3600 - 60 <= max_age <= 12 * 3600
        session = await client.get("/api/v1/session")
        assert session.status_code == 200
        body = session.json()
        assert body["user"] == {"id": web.alice.id, "name": "alice", "owner": web.alice.owner}
        assert re.fullmatch(r"[0-9a-f]{64}", body["csrf_token"])
        assert session.headers["cache-control"] == "no-store"
        # The same owner as alice's API key: the same sources.
        await client.post(
            "/api/v1/datasources",
            json={"name": "files", "type": "local_folder", "config": {"root": str(web.folder)}},
            headers=await csrf(client),
        )
        by_key = await client.get(
            "/api/v1/datasources", headers={"Authorization": f"Bearer {web.alice_key.key}"}
        )
        assert [s["name"] for s in by_key.json()["items"]] == ["files"]


async def test_cookie_is_secure_and_host_prefixed_over_https(web: Web) -> None:
    async with web.client(base="https://testserver") as client:
        response = await sign_in(client)
        assert response.status_code == 303
        cookie = response.headers.get_list("set-cookie")[0]
        assert cookie.startswith(f"{SECURE_COOKIE}=")
        assert "secure" in {p.strip().lower() for p in cookie.split(";")}
        assert (await client.get("/api/v1/session")).status_code == 200


async def test_a_new_user_without_owner_sees_nothing_of_others(web: Web) -> None:
    await web.users.create("carol", PASSWORD)
    async with web.client() as alice, web.client() as carol:
        await sign_in(alice)
        await alice.post(
            "/api/v1/datasources",
            json={"name": "files", "type": "local_folder", "config": {"root": str(web.folder)}},
            headers=await csrf(alice),
        )
        await sign_in(carol, "carol")
        assert (await carol.get("/api/v1/datasources")).json()["items"] == []
        assert (await carol.get("/api/v1/datasources/files")).status_code == 404


async def test_wrong_password_unknown_name_and_disabled_user_look_the_same(web: Web) -> None:
    await web.users.create("dave", PASSWORD)
    await web.users.disable("dave")
    answers = []
    async with web.client() as client:
        for name, password in (("alice", "wrong password"), ("nobody", PASSWORD),
                               ("dave", PASSWORD)):  # fmt: skip
            response = await sign_in(client, name, password)
            answers.append((response.status_code, response.text))
            assert "set-cookie" not in response.headers
            assert (await client.get("/api/v1/session")).status_code == 401
    assert answers[0][0] == 401
    assert answers[0] == answers[1] == answers[2]
    assert "Wrong name or password." in answers[0][1]


async def test_disabling_a_user_ends_their_sessions_at_once(web: Web) -> None:
    async with web.client() as client:
        await sign_in(client)
        assert (await client.get("/api/v1/datasources")).status_code == 200
        await web.users.disable("alice")
        assert (await client.get("/api/v1/datasources")).status_code == 401
        assert (await client.get("/", follow_redirects=False)).status_code == 303
        await web.users.enable("alice")
        assert (await sign_in(client)).status_code == 303
        # Disabled in the store by other means (another replica, an operator's SQL): the
        # session is refused even though nobody deleted it.
        store = web.app.state.registry.store
        await store.update_user(web.alice.id, disabled_at=datetime.now(UTC))
        assert (await client.get("/api/v1/datasources")).status_code == 401


async def test_changing_the_password_ends_sessions(web: Web) -> None:
    async with web.client() as client:
        await sign_in(client)
        await web.users.set_password("alice", "another long password")
        assert (await client.get("/api/v1/session")).status_code == 401
        assert (await sign_in(client)).status_code == 401
        assert (await sign_in(client, password="another long password")).status_code == 303


async def test_changes_need_the_csrf_header_and_this_origin(web: Web) -> None:
    body = {"name": "files", "type": "local_folder", "config": {"root": str(web.folder)}}
    async with web.client() as client:
        await sign_in(client)
        good = await csrf(client)
        attempts = [
            {},  # a form post from anywhere: no header at all
            {"Origin": ORIGIN},  # no token
            {"Origin": ORIGIN, "X-CSRF-Token": "0" * 64},  # a wrong token
            {"Origin": ORIGIN, "X-CSRF-Token": good["X-CSRF-Token"][:-1]},
            {"X-CSRF-Token": good["X-CSRF-Token"]},  # no Origin
            {"Origin": "null", "X-CSRF-Token": good["X-CSRF-Token"]},
            {"Origin": "http://evil.example", "X-CSRF-Token": good["X-CSRF-Token"]},
            {"Origin": "http://testserver.evil.example", "X-CSRF-Token": good["X-CSRF-Token"]},
            {"Origin": "https://testserver", "X-CSRF-Token": good["X-CSRF-Token"]},
            {**good, "Sec-Fetch-Site": "same-site"},
            {**good, "Sec-Fetch-Site": "cross-site"},
            {**good, "Sec-Fetch-Site": "none"},
        ]
        for headers in attempts:
            for method, url, kwargs in (
                ("POST", "/api/v1/datasources", {"json": body}),
                ("POST", "/api/v1/chats", {"json": {"title": "x"}}),
                ("POST", "/api/v1/keys", {"json": {"name": "k"}}),
                ("DELETE", "/api/v1/session", {}),
            ):
                response = await client.request(method, url, headers=headers, **kwargs)
                assert response.status_code == 403, (headers, method, url)
                assert response.json()["code"] in {"csrf_failed", "cross_site_refused"}
        assert (await client.get("/api/v1/datasources")).json()["items"] == []
        assert (await client.get("/api/v1/chats")).json()["items"] == []
        created = await client.post("/api/v1/datasources", json=body, headers=good)
        assert created.status_code == 201
        patched = await client.patch(
            "/api/v1/datasources/files", json={"description": "d"}, headers=good
        )
        assert patched.status_code == 200
        refused = await client.delete("/api/v1/datasources/files", headers={"Origin": ORIGIN})
        assert refused.status_code == 403
        assert (await client.delete("/api/v1/datasources/files", headers=good)).status_code == 204


async def test_the_cookie_is_refused_on_cross_site_reads(web: Web) -> None:
    async with web.client() as client:
        await sign_in(client)
        for site in ("cross-site", "same-site"):
            response = await client.get("/api/v1/datasources", headers={"Sec-Fetch-Site": site})
            assert response.status_code == 403 and response.json()["code"] == "cross_site_refused"
        for site in ("same-origin", "none"):
            response = await client.get("/api/v1/datasources", headers={"Sec-Fetch-Site": site})
            assert response.status_code == 200


async def test_a_key_request_is_judged_by_the_key_alone(web: Web) -> None:
    async with web.client() as client:
        await sign_in(client)
        for header in ("Bearer nope", f"Basic {web.alice_key.key}", ""):
            response = await client.get("/api/v1/datasources", headers={"Authorization": header})
            assert response.status_code == 401, header
        keyed = await client.get(
            "/api/v1/datasources", headers={"Authorization": f"Bearer {web.alice_key.key}"}
        )
        assert keyed.status_code == 200


async def test_sign_in_form_from_another_site_is_refused(web: Web) -> None:
    async with web.client() as client:
        for origin in ({"Origin": "http://evil.example"}, {"Origin": "null"}):
            response = await client.post(
                "/login", data={"name": "alice", "password": PASSWORD}, headers=origin
            )
            assert response.status_code == 403 and "set-cookie" not in response.headers
        response = await client.post("/login", data={"name": "alice", "password": PASSWORD})
        assert response.status_code == 403 and "set-cookie" not in response.headers


async def test_no_session_fixation(web: Web) -> None:
    await web.users.create("mallory", PASSWORD)
    async with web.client() as attacker, web.client() as victim:
        # A token the attacker made up, and one of the attacker's own real sessions.
        await sign_in(attacker, "mallory")
        planted = attacker.cookies[COOKIE]
        for token in ("A" * 43, planted):
            victim.cookies.set(COOKIE, token, domain="testserver.local")
            response = await sign_in(victim)
            assert response.status_code == 303
            issued = victim.cookies[COOKIE]
            assert issued != token
            me = await victim.get("/api/v1/session")
            assert me.json()["user"]["name"] == "alice"
        # The attacker's session that was planted has ended: it cannot ride along.
        assert (await attacker.get("/api/v1/session")).status_code == 401


async def test_brute_force_is_limited_per_name_and_per_address(web: Web) -> None:
    await web.users.create("erin", PASSWORD)
    await web.users.create("frank", PASSWORD)
    # Five failures for one name, each from another address: the name is locked.
    for n in range(5):
        async with web.client(address=f"10.0.0.{n}") as client:
            assert (await sign_in(client, "alice", f"wrong-{n}-password")).status_code == 401
    async with web.client(address="10.0.1.1") as client:
        locked = await sign_in(client, "alice", PASSWORD)  # even the right password
        assert locked.status_code == 429
        assert 1 <= int(locked.headers["retry-after"]) <= 15 * 60
        assert "set-cookie" not in locked.headers
        assert (await sign_in(client, "erin")).status_code == 303  # another name is fine
    # Five failures from one address, each for another name: the address is locked.
    async with web.client(address="10.0.2.2") as client:
        for n in range(5):
            assert (await sign_in(client, f"user{n}", "wrong password")).status_code == 401
        assert (await sign_in(client, "frank")).status_code == 429
    async with web.client(address="10.0.2.3") as client:
        assert (await sign_in(client, "frank")).status_code == 303


async def test_expired_sessions_end_idle_and_absolute(web: Web) -> None:
    now = [datetime.now(UTC)]
    store = web.app.state.registry.store
    web.app.state.sessions = WebSessions(
        store, idle_seconds=600, max_seconds=3600, touch_every=60, clock=lambda: now[0]
    )
    async with web.client() as client:
        await sign_in(client)
        # Busy, never idle for 10 minutes, but past the absolute lifetime at last.
        for _ in range(7):
            now[0] += timedelta(seconds=500)
            assert (await client.get("/api/v1/session")).status_code == 200
        now[0] += timedelta(seconds=150)  # 3,650 s old, 150 s idle
        assert (await client.get("/api/v1/session")).status_code == 401
        await sign_in(client)
        now[0] += timedelta(seconds=601)  # idle too long
        assert (await client.get("/api/v1/session")).status_code == 401
        assert (await client.get("/chats/x", follow_redirects=False)).status_code == 303


async def test_sign_out_ends_the_session_for_good(web: Web) -> None:
    async with web.client() as client:
        await sign_in(client)
        token = client.cookies[COOKIE]
        headers = await csrf(client)
        out = await client.delete("/api/v1/session", headers=headers)
        assert out.status_code == 204
        assert (
            f'{COOKIE}=""' in out.headers["set-cookie"]
            or "max-age=0" in out.headers["set-cookie"].lower()
        )
        client.cookies.set(COOKIE, token, domain="testserver.local")  # replayed
        assert (await client.get("/api/v1/session")).status_code == 401


async def test_users_manage_their_own_keys_and_keys_cannot(web: Web) -> None:
    bob_key = await web.app.state.keys.create("bob-key")
    async with web.client() as client:
        await sign_in(client)
        headers = await csrf(client)
        created = await client.post("/api/v1/keys", json={"name": "laptop"}, headers=headers)
        assert created.status_code == 201 and created.headers["cache-control"] == "no-store"
        new = created.json()
        assert new["owner"] == web.alice.owner and new["key"].startswith("dsk_")
        bearer = {"Authorization": f"Bearer {new['key']}"}
        assert (await client.get("/api/v1/datasources", headers=bearer)).status_code == 200
        listed = (await client.get("/api/v1/keys")).json()["items"]
        assert {k["name"] for k in listed} == {"alice-key", "laptop"}
        assert new["key"] not in json.dumps(listed) and "hash" not in json.dumps(listed)
        # Another owner's key is not there to revoke.
        other = await client.delete(f"/api/v1/keys/{bob_key.id}", headers=headers)
        assert other.status_code == 404
        gone = await client.delete(f"/api/v1/keys/{new['id']}", headers=headers)
        assert gone.status_code == 204
        assert (await client.get("/api/v1/datasources", headers=bearer)).status_code == 401
    async with web.client() as program:
        bearer = {"Authorization": f"Bearer {web.alice_key.key}"}
        for method, url in (("GET", "/api/v1/keys"), ("POST", "/api/v1/keys"),
                            ("GET", "/api/v1/session")):  # fmt: skip
            response = await program.request(method, url, headers=bearer, json={"name": "x"})
            assert response.status_code == 403 and response.json()["code"] == "session_required"
        bob = {"Authorization": f"Bearer {bob_key.key}"}
        assert (await program.get("/api/v1/datasources", headers=bob)).status_code == 200


async def test_pages_redirect_to_sign_in_and_back(web: Web) -> None:
    async with web.client() as client:
        for path in ("/", "/chats/c1", "/sources", "/sources/s1", "/sources/s1/sql", "/settings"):
            response = await client.get(path, follow_redirects=False)
            assert response.status_code == 303, path
            expected = "/login" if path == "/" else f"/login?next={path}"
            assert response.headers["location"] == expected
        page = await client.get("/login?next=/chats/c1")
        assert page.status_code == 200 and 'value="/chats/c1"' in page.text
        hostile_targets = ("//evil.example", "/\\evil.example", "https://evil.example",
                           '/x"><script>alert(1)</script>', "/api/v1/keys")  # fmt: skip
        for hostile in hostile_targets:
            page = await client.get("/login", params={"next": hostile})
            assert 'name="next" value="/"' in page.text, hostile
            assert "<script>alert" not in page.text
        for hostile in hostile_targets:
            response = await sign_in(client, next=hostile)
            assert response.headers["location"] == "/", hostile
        for path in ("/", "/chats/c1", "/sources/s1/sql", "/settings"):
            response = await client.get(path)
            assert response.status_code == 200
            assert '<script type="module" src="/static/app/js/main.js">' in response.text
        assert (await client.get("/login", follow_redirects=False)).status_code == 303


async def test_nothing_secret_in_responses_logs_or_reprs(
    web: Web, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    stored = await web.app.state.registry.store.get_user(web.alice.id)
    async with web.client() as client:
        await sign_in(client, password="a wrong password guess")
        response = await sign_in(client)
        token = client.cookies[COOKIE]
        headers = await csrf(client)
        texts = [response.text, str(response.headers)]
        for url in ("/api/v1/session", "/api/v1/keys", "/openapi.json", "/"):
            got = await client.get(url)
            texts += [got.text, str(got.headers)]
        texts.append((await client.delete("/api/v1/session", headers=headers)).text)
    texts += [repr(stored), repr(web.alice), caplog.text]
    texts.append(repr(await web.app.state.registry.store.list_users()))
    for text in texts:
        assert PASSWORD not in text
        assert "a wrong password guess" not in text
        assert stored is not None and stored.password_hash not in text
        assert "$argon2id$" not in text
    assert token not in caplog.text
    assert re.search(r'"event": "login_failed"', caplog.text)


async def test_every_response_carries_the_security_headers(web: Web) -> None:
    async with web.client() as client:
        await sign_in(client)
        for url in ("/", "/login", "/static/app/app.css", "/static/app/js/main.js",
                    "/api/v1/datasources", "/healthz", "/no-such-page"):  # fmt: skip
            response = await client.get(url, follow_redirects=False)
            headers = response.headers
            assert headers["x-frame-options"] == "DENY", url
            assert headers["x-content-type-options"] == "nosniff", url
            assert headers["referrer-policy"] == "same-origin", url
            csp = headers["content-security-policy"]
            directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
            assert directives["script-src"] == "'self'", url  # no inline, no eval
            assert directives["frame-ancestors"] == "'none'", url
            assert directives["default-src"] == "'none'", url
            assert "require-trusted-types-for" in directives, url
            assert "http" not in csp, url  # no remote origin anywhere
        script = await client.get("/static/app/js/main.js")
        assert script.headers["content-type"].split(";")[0] in {
            "text/javascript",
            "application/javascript",
        }
        # Downloads keep their own, stricter policy.
        bearer = {"Authorization": f"Bearer {web.alice_key.key}"}
        await client.post(
            "/api/v1/datasources",
            json={"name": "files", "type": "local_folder", "config": {"root": str(web.folder)}},
            headers=bearer,
        )
        got = await client.get(
            "/api/v1/datasources/files/download", params={"path": "a.csv"}, headers=bearer
        )
        assert got.headers["content-security-policy"] == "sandbox"
        # The API docs run their own start-up script by hash, and nothing else inline.
        docs = await client.get("/docs")
        csp = docs.headers["content-security-policy"]
        assert (
            "'sha256-" in csp and "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
        )


async def test_connector_types_describe_their_config(web: Web) -> None:
    async with web.client() as client:
        await sign_in(client)
        types = {
            t["type"]: t for t in (await client.get("/api/v1/connector-types")).json()["items"]
        }
    assert {"local_folder", "postgresql", "azure_blob"} <= set(types)
    folder = types["local_folder"]
    assert folder["available"] and not folder["sql"]
    assert "root" in folder["config_schema"]["properties"]
    assert "root" in folder["config_schema"]["required"]
    assert types["azure_blob"]["operator_fields"] == ["use_default_credential"]
    pg = types["postgresql"]
    assert pg["sql"] and {"password", "dsn"} <= set(pg["secret_fields"])


async def test_concurrent_guesses_for_one_name_get_no_more_than_the_limit(web: Web) -> None:
    """Checking the bucket before the (slow) argon2 verification and spending it only
    after would let N guesses sent at once all be verified: the name's token is spent
    before the password is checked."""
    statuses = []

    async def guess(n: int) -> None:
        async with web.client(address=f"10.9.{n}.1") as client:
            statuses.append((await sign_in(client, "alice", f"guess-{n}-password")).status_code)

    await asyncio.gather(*(guess(n) for n in range(20)))
    assert statuses.count(401) <= 5, statuses
    assert statuses.count(429) >= 15, statuses
