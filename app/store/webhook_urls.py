"""Which URLs a webhook may target: http(s) only, bounded length, no credentials, and a host whose every address is
public unless the operator allows private targets (GKD_WEBHOOK_ALLOW_PRIVATE).

The host is resolved when the endpoint is created (a clear 422 for the tenant) and again before each delivery: a
name that resolved to a public address yesterday may resolve to 127.0.0.1 today (DNS rebinding). The worker then
connects to the address it checked (`resolve_target`), never to a second lookup of the name.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_URL_LENGTH = 2048
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeUrl(ValueError):
    """The URL may not be a webhook target; the message says why, for the tenant."""


@dataclass(frozen=True)
class Target:
    """A checked URL: its scheme, host name (for the Host header and TLS), port, and the address to connect to."""

    scheme: str
    host: str
    port: int
    address: IPAddress


def is_public(address: IPAddress) -> bool:
    """Global unicast only: not loopback, private, link-local, shared (100.64/10), multicast, reserved or unspecified.
    An IPv4-mapped IPv6 address is judged by its IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def parse(url: str) -> tuple[str, str, int]:
    """Scheme, host and port of a syntactically acceptable webhook URL; `UnsafeUrl` otherwise."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeUrl(f"url must be at most {MAX_URL_LENGTH} characters")
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in url):
        raise UnsafeUrl("url must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeUrl(f"url is malformed: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeUrl("url must start with http:// or https://")
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrl("url must not contain credentials (user:password@); the signature authenticates gkd")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeUrl("url has no host")
    if parts.fragment:
        raise UnsafeUrl("url must not have a #fragment")
    return scheme, host, port or (443 if scheme == "https" else 80)


def _addresses(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UnsafeUrl(f"the host {host!r} does not resolve") from exc
    found: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    if not found:
        raise UnsafeUrl(f"the host {host!r} does not resolve")
    return found


def resolve_target(url: str, *, allow_private: bool) -> Target:
    """Check `url` and resolve its host now; every address must be public unless `allow_private`. The first address
    is the one to connect to."""
    scheme, host, port = parse(url)
    addresses = _addresses(host, port)
    if not allow_private:
        refused = [str(a) for a in addresses if not is_public(a)]
        if refused:
            raise UnsafeUrl(f"the host {host!r} is or resolves to a non-public address ({', '.join(refused)}); "
                            "webhooks only go to public addresses")
    return Target(scheme, host, port, addresses[0])
