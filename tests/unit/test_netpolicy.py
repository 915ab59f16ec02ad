"""OutboundPolicy in isolation: address classes, patterns, and one resolution per check."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from datasources.errors import PermissionDeniedError
from datasources.netpolicy import OutboundPolicy


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.0.0.1", "172.31.255.255", "192.168.1.1", "169.254.169.254", "100.100.0.1",
     "0.0.0.0", "224.0.0.1", "240.0.0.1", "::1", "fe80::1", "fc00::1", "::ffff:10.0.0.1", "::"],
)  # fmt: skip
def test_internal_addresses_are_refused(address: str) -> None:
    with pytest.raises(PermissionDeniedError):
        OutboundPolicy().check_address("h", address)
    OutboundPolicy(allow_private_networks=True).check_address("h", address)


@pytest.mark.parametrize("address", ["8.8.8.8", "20.60.1.1", "2001:4860:4860::8888"])
def test_public_addresses_pass(address: str) -> None:
    OutboundPolicy().check_address("h", address)


def test_patterns_match_host_names_case_insensitively() -> None:
    policy = OutboundPolicy(allowed_hosts=["*.corp.example", "db1.lan"])
    policy.check_address("pg.CORP.example", "10.0.0.5")
    policy.check_address("db1.lan.", "10.0.0.6")
    with pytest.raises(PermissionDeniedError):
        policy.check_address("corp.example.evil", "10.0.0.5")


async def test_resolution_checks_every_answer_and_returns_what_it_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers = {"mixed.example": ["93.184.216.34", "127.0.0.1"], "pub.example": ["93.184.216.34"]}
    calls: list[str] = []

    async def fake_getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        calls.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]

    import asyncio

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "getaddrinfo", fake_getaddrinfo)
    policy = OutboundPolicy()
    with pytest.raises(PermissionDeniedError):
        await policy.resolve("mixed.example", 5432)  # one bad answer is enough
    assert await policy.resolve("pub.example", 5432) == ["93.184.216.34"]
    assert calls == ["mixed.example", "pub.example"]  # resolved once each


async def test_unix_sockets_and_empty_hosts_are_local() -> None:
    for host in ("", "/tmp/.s.PGSQL.5432", "a\x00b"):
        with pytest.raises(PermissionDeniedError):
            await OutboundPolicy().resolve(host, 5432)


def test_folders_must_lie_under_a_root(tmp_path: Path) -> None:
    (tmp_path / "root" / "a").mkdir(parents=True)
    policy = OutboundPolicy(local_folder_roots=[tmp_path / "root"])
    policy.check_folder(tmp_path / "root" / "a")
    for outside in (tmp_path, tmp_path / "root" / ".." / "x", Path("/")):
        with pytest.raises(PermissionDeniedError):
            policy.check_folder(outside)
    (tmp_path / "root" / "link").symlink_to(tmp_path)
    with pytest.raises(PermissionDeniedError):
        policy.check_folder(tmp_path / "root" / "link")
    with pytest.raises(PermissionDeniedError):
        OutboundPolicy().check_folder(tmp_path)
