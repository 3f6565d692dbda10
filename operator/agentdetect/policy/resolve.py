"""Hostnames to addresses. Pluggable, because tests (and air-gapped clusters) cannot use DNS."""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol


class ResolutionError(Exception):
    pass


class Resolver(Protocol):
    def resolve(self, hostname: str) -> list[str]:
        """Addresses of ``hostname``, sorted; raises :class:`ResolutionError`."""
        ...


class SystemResolver:
    """The node's resolver (``getaddrinfo``), IPv4 and IPv6."""

    def resolve(self, hostname: str) -> list[str]:
        try:
            infos = socket.getaddrinfo(hostname, None, proto=socket.IPPROTO_TCP)
        except (socket.gaierror, UnicodeError) as exc:
            raise ResolutionError(f"{hostname}: {exc}") from None
        return sorted({str(info[4][0]).split("%")[0] for info in infos}, key=_address_key)


class StaticResolver:
    """A fixed table, for tests and for clusters whose egress goes through known addresses."""

    def __init__(self, table: Mapping[str, Iterable[str]]) -> None:
        self.table = {host: sorted(set(addrs), key=_address_key) for host, addrs in table.items()}

    def resolve(self, hostname: str) -> list[str]:
        try:
            return list(self.table[hostname])
        except KeyError:
            raise ResolutionError(f"{hostname}: not in the static table") from None


def _address_key(address: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(address)
    return (ip.version, int(ip))


@functools.lru_cache(maxsize=65536)
def as_cidr(address: str) -> str:
    """Pure and called per address per render: cached (the same addresses recur)."""
    ip = ipaddress.ip_address(address)
    return f"{ip}/{ip.max_prefixlen}"


@dataclass(frozen=True)
class Resolution:
    addresses: tuple[str, ...]
    resolved_at: str
    error: str | None = None


def resolve_all(
    hostnames: Iterable[str], resolver: Resolver, previous: Mapping[str, Resolution], now: str
) -> dict[str, Resolution]:
    """Resolve each hostname once. A hostname whose lookup fails keeps its previous addresses
    (detection should not lapse on a DNS blip), with the error recorded. ``resolved_at`` only
    moves when the address set changes, so an unchanged answer costs no status write."""
    out: dict[str, Resolution] = {}
    for host in sorted(set(hostnames)):
        before = previous.get(host)
        try:
            addresses = tuple(resolver.resolve(host))
        except ResolutionError as exc:
            kept = before.addresses if before else ()
            out[host] = Resolution(kept, before.resolved_at if before else now, str(exc))
            continue
        if before and before.addresses == addresses:
            out[host] = before if before.error is None else Resolution(addresses, before.resolved_at)
        else:
            out[host] = Resolution(addresses, now)
    return out
