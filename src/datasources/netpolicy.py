"""Where a user-registered source may point: the outbound-target policy (SSRF defence).

A service that lets people register "a PostgreSQL at host X" or "an Azure account at URL
Y" would otherwise let them aim it at the service's own network: loopback, the private
LAN, the cloud metadata endpoint (169.254.169.254). The policy refuses hosts that
resolve to loopback, private, link-local, shared (CGNAT), multicast, reserved or
unspecified addresses, unless the operator allows them (``DATASOURCES_ALLOWED_HOSTS``)
or allows private networks altogether (``DATASOURCES_ALLOW_PRIVATE_NETWORKS=true``).
Local folders are refused unless they lie under a root the operator lists
(``DATASOURCES_LOCAL_FOLDER_ROOTS``).

What an allow-list entry means depends on what it is, never on what it happens to match:

- an **address or CIDR** (``10.1.2.3``, ``10.0.0.0/8``, ``fd00::/8``) or an **address
  wildcard** (``10.0.0.*``, whole octets, read as ``10.0.0.0/24``) allows the addresses
  inside it, whatever name led there. It is matched against the resolved address only,
  so ``10.0.0.*`` says nothing about a name such as ``10.0.0.1.attacker.example``;
- a **name pattern** (``db.internal.example``, ``*.corp.example``; ``fnmatch``,
  case-insensitive) lets a matching name reach the private LAN (RFC 1918, unique-local,
  CGNAT). The name is still resolved and every answer checked: the service's own host
  (loopback), link-local (the cloud metadata endpoint), multicast, reserved and
  unspecified addresses are reached only through an address or CIDR entry.

A host is resolved once; connectors connect to the addresses that were checked
(:meth:`OutboundPolicy.resolve` returns them, and :func:`policy_resolver` does the same
inside aiohttp), so a DNS answer that changes between check and connect (rebinding)
cannot slip through. Data paths never follow redirects (the Azure connector refuses
them), so a permitted endpoint cannot hand the request on to one the policy refuses.

Ambient identities (the service's own managed identity, workload identity, CLI login:
``use_default_credential``) belong to the operator: under a policy they are refused
unless the operator names the account URL in ``DATASOURCES_AMBIENT_IDENTITY_ACCOUNTS``.

The library's own default is no policy: whoever calls it in-process is the operator.
The HTTP service always applies one.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import re
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from datasources.errors import PermissionDeniedError, UnavailableError

__all__ = ["OutboundPolicy", "policy_resolver"]

_SHARED = ipaddress.ip_network("100.64.0.0/10")
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# An entry made only of these is about addresses, never names: digits, dots and
# wildcards (IPv4), or anything with a colon (IPv6; host names have no colons).
_ADDRESS_SHAPED = re.compile(r"^[0-9.*?\[\]!-]+$|:")
_OCTET_WILDCARD = re.compile(r"^((?:\d{1,3}\.){0,3})\*(?:\.\*)*$")


def _plain(address: _Address) -> _Address:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _internal(address: _Address) -> bool:
    address = _plain(address)
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or (isinstance(address, ipaddress.IPv4Address) and address in _SHARED)
    )


def _host_local(address: _Address) -> bool:
    """The service's own host, the metadata endpoint and addresses no LAN host has."""
    address = _plain(address)
    return (
        address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def _as_network(entry: str) -> _Network | None:
    """``entry`` as a network: an address, a CIDR, or whole-octet wildcards."""
    try:
        return ipaddress.ip_network(entry.strip("[]"), strict=False)
    except ValueError:
        pass
    match = _OCTET_WILDCARD.match(entry)
    if match is None:
        return None
    fixed = [part for part in match.group(1).split(".") if part]
    if any(int(part) > 255 for part in fixed):
        return None
    octets = [*fixed, *["0"] * (4 - len(fixed))]
    return ipaddress.ip_network(f"{'.'.join(octets)}/{8 * len(fixed)}")


def _literal(host: str) -> _Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def _normal_account_url(url: str) -> str:
    split = urlsplit(url.strip())
    return f"{split.scheme.lower()}://{split.netloc.lower()}{split.path.rstrip('/')}"


class OutboundPolicy:
    """Which hosts and folders user-registered sources may reach.

    Args:
        allowed_hosts: Allow-list entries: addresses, CIDRs and address wildcards
            (``10.0.0.*``) allow the addresses inside them; name patterns (``fnmatch``,
            case-insensitive, e.g. ``*.internal.example``) let matching names reach
            private-LAN addresses (see the module docstring).
        allow_private_networks: Allow every internal address (the embedded default and
            the tests, where PostgreSQL and Azurite run on loopback).
        local_folder_roots: Folders under which local-folder sources may be registered;
            none means local folders are refused.
        ambient_identity_accounts: Account URLs for which sources may use the service's
            own ambient identity (``use_default_credential``); none means never.
    """

    def __init__(
        self,
        *,
        allowed_hosts: Sequence[str] = (),
        allow_private_networks: bool = False,
        local_folder_roots: Sequence[Path | str] = (),
        ambient_identity_accounts: Sequence[str] = (),
    ) -> None:
        self.allowed_hosts = tuple(h.strip().lower() for h in allowed_hosts if h.strip())
        self.allow_private_networks = allow_private_networks
        self.local_folder_roots = tuple(Path(r).expanduser().resolve() for r in local_folder_roots)
        self.ambient_identity_accounts = frozenset(
            _normal_account_url(url) for url in ambient_identity_accounts if url.strip()
        )
        self._networks: list[_Network] = []
        self._address_patterns: list[str] = []
        self._name_patterns: list[str] = []
        for entry in self.allowed_hosts:
            network = _as_network(entry)
            if network is not None:
                self._networks.append(network)
            elif _ADDRESS_SHAPED.search(entry):
                self._address_patterns.append(entry.strip("[]"))
            else:
                self._name_patterns.append(entry.rstrip("."))

    def __repr__(self) -> str:
        return (
            f"OutboundPolicy(allowed_hosts={list(self.allowed_hosts)!r}, "
            f"allow_private_networks={self.allow_private_networks!r}, "
            f"local_folder_roots={[str(r) for r in self.local_folder_roots]!r}, "
            f"ambient_identity_accounts={sorted(self.ambient_identity_accounts)!r})"
        )

    def _address_allowed(self, address: _Address) -> bool:
        candidates = {address, _plain(address)}
        for network in self._networks:
            if any(a.version == network.version and a in network for a in candidates):
                return True
        return any(
            fnmatch.fnmatchcase(str(a), pattern)
            for a in candidates
            for pattern in self._address_patterns
        )

    def _name_allowed(self, host: str) -> bool:
        if _literal(host) is not None:
            return False  # an address is judged by the address entries alone
        host = host.lower().rstrip(".")
        return any(fnmatch.fnmatchcase(host, pattern) for pattern in self._name_patterns)

    def check_address(self, host: str, address: str) -> None:
        """Refuse ``address`` (an answer for ``host``) if it is internal and not allowed."""
        if self.allow_private_networks:
            return
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if not _internal(ip) or self._address_allowed(ip):
            return
        if self._name_allowed(host) and not _host_local(ip):
            return
        raise PermissionDeniedError(
            f"Host {host!r} resolves to an internal address, which data sources may not "
            "reach here; the operator can allow it with DATASOURCES_ALLOWED_HOSTS (a name "
            "pattern reaches private networks; loopback and link-local need an address or "
            "CIDR entry) or DATASOURCES_ALLOW_PRIVATE_NETWORKS.",
            details={"host": host},
        )

    async def resolve(self, host: str, port: int) -> list[str]:
        """Resolve ``host`` once, check every answer, and return the addresses to use."""
        if not host or host.startswith("/") or "\x00" in host:
            if self.allow_private_networks:
                return [host]
            raise PermissionDeniedError(
                "Unix sockets and empty hosts are local targets, which data sources may not "
                "reach here.",
                details={"host": host[:100]},
            )
        literal = _literal(host)
        if literal is not None:
            self.check_address(host, str(literal))
            return [str(literal)]
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            raise UnavailableError(f"Host {host!r} cannot be resolved.") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        for address in addresses:
            self.check_address(host, address)
        return addresses

    def check_ambient_identity(self, account_url: str) -> None:
        """Refuse the service's own identity for an account the operator did not name."""
        if _normal_account_url(account_url) not in self.ambient_identity_accounts:
            raise PermissionDeniedError(
                "use_default_credential signs requests with the service's own identity "
                "(managed or workload identity, CLI login), which is for the operator: "
                "it is allowed here only for the account URLs the operator lists in "
                "DATASOURCES_AMBIENT_IDENTITY_ACCOUNTS.",
                details={"field": "use_default_credential"},
            )

    def check_folder(self, root: Path | str) -> None:
        """Refuse a local folder outside every configured root."""
        resolved = Path(root).expanduser().resolve()
        if not any(resolved.is_relative_to(r) for r in self.local_folder_roots):
            raise PermissionDeniedError(
                "Local folders may be registered here only under the folders the operator "
                "lists in DATASOURCES_LOCAL_FOLDER_ROOTS.",
                details={"field": "root"},
            )


def policy_resolver(policy: OutboundPolicy) -> Any:
    """An aiohttp resolver that checks every answer against ``policy`` before use."""
    import aiohttp
    from aiohttp.abc import AbstractResolver, ResolveResult

    class PolicyResolver(AbstractResolver):
        def __init__(self) -> None:
            self._inner = aiohttp.ThreadedResolver()

        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            answers = await self._inner.resolve(host, port, family)
            for answer in answers:
                policy.check_address(host, str(answer["host"]))
            return answers

        async def close(self) -> None:
            await self._inner.close()

    return PolicyResolver()
