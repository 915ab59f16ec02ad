"""Where a user-registered source may point: the outbound-target policy (SSRF defence).

A service that lets people register "a PostgreSQL at host X" or "an Azure account at URL
Y" would otherwise let them aim it at the service's own network: loopback, the private
LAN, the cloud metadata endpoint (169.254.169.254). The policy refuses hosts that
resolve to loopback, private, link-local, shared (CGNAT), multicast, reserved or
unspecified addresses, unless the operator allows them by pattern
(``DATASOURCES_ALLOWED_HOSTS``) or allows private networks altogether
(``DATASOURCES_ALLOW_PRIVATE_NETWORKS=true``). Local folders are refused unless they lie
under a root the operator lists (``DATASOURCES_LOCAL_FOLDER_ROOTS``).

A host is resolved once; connectors connect to the addresses that were checked
(:meth:`OutboundPolicy.resolve` returns them, and :func:`policy_resolver` does the same
inside aiohttp), so a DNS answer that changes between check and connect (rebinding)
cannot slip through.

The library's own default is no policy: whoever calls it in-process is the operator.
The HTTP service always applies one.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasources.errors import PermissionDeniedError

__all__ = ["OutboundPolicy", "policy_resolver"]

_SHARED = ipaddress.ip_network("100.64.0.0/10")


def _internal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or (isinstance(address, ipaddress.IPv4Address) and address in _SHARED)
    )


class OutboundPolicy:
    """Which hosts and folders user-registered sources may reach.

    Args:
        allowed_hosts: Host patterns (``fnmatch``, case-insensitive, e.g.
            ``*.internal.example``, ``10.0.0.*``) allowed even when they resolve to an
            internal address.
        allow_private_networks: Allow every internal address (the embedded default and
            the tests, where PostgreSQL and Azurite run on loopback).
        local_folder_roots: Folders under which local-folder sources may be registered;
            none means local folders are refused.
    """

    def __init__(
        self,
        *,
        allowed_hosts: Sequence[str] = (),
        allow_private_networks: bool = False,
        local_folder_roots: Sequence[Path | str] = (),
    ) -> None:
        self.allowed_hosts = tuple(h.strip().lower() for h in allowed_hosts if h.strip())
        self.allow_private_networks = allow_private_networks
        self.local_folder_roots = tuple(Path(r).expanduser().resolve() for r in local_folder_roots)

    def __repr__(self) -> str:
        return (
            f"OutboundPolicy(allowed_hosts={list(self.allowed_hosts)!r}, "
            f"allow_private_networks={self.allow_private_networks!r}, "
            f"local_folder_roots={[str(r) for r in self.local_folder_roots]!r})"
        )

    def _host_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return any(fnmatch.fnmatchcase(host, pattern) for pattern in self.allowed_hosts)

    def check_address(self, host: str, address: str) -> None:
        """Refuse ``address`` (an answer for ``host``) if it is internal and not allowed."""
        if self.allow_private_networks or self._host_allowed(host):
            return
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if _internal(ip):
            raise PermissionDeniedError(
                f"Host {host!r} resolves to an internal address, which data sources may not "
                "reach here; the operator can allow it with DATASOURCES_ALLOWED_HOSTS or "
                "DATASOURCES_ALLOW_PRIVATE_NETWORKS.",
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
        try:
            literal = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            literal = None
        if literal is not None:
            self.check_address(host, str(literal))
            return [str(literal)]
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            from datasources.errors import UnavailableError

            raise UnavailableError(f"Host {host!r} cannot be resolved.") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        for address in addresses:
            self.check_address(host, address)
        return addresses

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
