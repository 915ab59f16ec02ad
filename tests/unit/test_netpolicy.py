"""OutboundPolicy in isolation: address classes, patterns, and one resolution per check."""

from __future__ import annotations

import ipaddress
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


def _fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> None:
    import asyncio

    async def fake_getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", fake_getaddrinfo)


async def test_an_address_pattern_never_matches_a_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """``10.0.0.*`` is about addresses: a name spelled like one is resolved and checked."""
    _fake_dns(
        monkeypatch,
        {
            "10.0.0.1.attacker.example": ["127.0.0.1"],
            "meta.attacker.example": ["169.254.169.254"],
            "lan.attacker.example": ["10.0.0.9"],
        },
    )
    policy = OutboundPolicy(allowed_hosts=["10.0.0.*"])
    with pytest.raises(PermissionDeniedError):
        await policy.resolve("10.0.0.1.attacker.example", 443)
    with pytest.raises(PermissionDeniedError):
        await policy.resolve("meta.attacker.example", 443)
    # Whatever the name, an address inside the entry is what the operator allowed.
    assert await policy.resolve("lan.attacker.example", 443) == ["10.0.0.9"]
    assert await policy.resolve("10.0.0.200", 443) == ["10.0.0.200"]
    with pytest.raises(PermissionDeniedError):
        await policy.resolve("10.0.1.1", 443)


@pytest.mark.parametrize(
    ("entry", "inside", "outside"),
    [
        ("10.1.2.3", "10.1.2.3", "10.1.2.4"),
        ("10.0.0.0/8", "10.200.3.4", "172.16.0.1"),
        ("10.*.*.*", "10.200.3.4", "172.16.0.1"),
        ("192.168.1.*", "192.168.1.77", "192.168.2.1"),
        ("127.0.0.1", "127.0.0.1", "127.0.0.2"),
        ("fd00::/8", "fd12::1", "fe80::1"),
        ("[::1]", "::1", "fc00::2"),
        ("10.0.0.1?", "10.0.0.15", "10.0.0.1"),
    ],
)
def test_address_and_cidr_entries_allow_the_addresses_inside(
    entry: str, inside: str, outside: str
) -> None:
    policy = OutboundPolicy(allowed_hosts=[entry])
    for host in ("any.name.example", inside):
        policy.check_address(host, inside)
    assert ipaddress.ip_address(outside).is_private
    with pytest.raises(PermissionDeniedError):
        policy.check_address("any.name.example", outside)
    with pytest.raises(PermissionDeniedError):
        policy.check_address(entry.strip("[]"), outside)  # the entry is never a name


def test_a_name_pattern_opens_the_lan_but_not_the_host_itself_or_metadata() -> None:
    policy = OutboundPolicy(allowed_hosts=["*.corp.example"])
    for lan in ("10.0.0.5", "172.16.0.1", "192.168.1.1", "100.64.0.1", "fd00::1"):
        policy.check_address("db.corp.example", lan)
    for local in ("127.0.0.1", "::1", "169.254.169.254", "fe80::1", "0.0.0.0", "224.0.0.1",
                  "::ffff:127.0.0.1"):  # fmt: skip
        with pytest.raises(PermissionDeniedError):
            policy.check_address("db.corp.example", local)
    # Loopback needs an explicit address entry.
    OutboundPolicy(allowed_hosts=["*.corp.example", "127.0.0.1"]).check_address(
        "db.corp.example", "127.0.0.1"
    )


def test_ambient_identity_only_for_named_accounts() -> None:
    policy = OutboundPolicy(ambient_identity_accounts=["https://Acct.blob.core.windows.net/"])
    policy.check_ambient_identity("https://acct.blob.core.windows.net")
    for url in (
        "https://other.blob.core.windows.net",
        "http://acct.blob.core.windows.net",
        "https://acct.blob.core.windows.net.attacker.example",
    ):
        with pytest.raises(PermissionDeniedError):
            policy.check_ambient_identity(url)
    with pytest.raises(PermissionDeniedError):
        OutboundPolicy(allow_private_networks=True).check_ambient_identity(
            "https://acct.blob.core.windows.net"
        )
