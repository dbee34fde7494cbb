"""Who the client is behind proxies: X-Forwarded-For, believed only from trusted proxies.

Anyone can send `X-Forwarded-For: 1.2.3.4`. Each proxy appends the address it
saw, so the header is read from the right: every hop that is one of our
proxies is skipped, and the first address that is not ours is the client.
From a peer that is not a trusted proxy the header is ignored altogether.

    >>> nginx = trusted_networks(["127.0.0.1", "10.0.0.0/8"])
    >>> client_address("127.0.0.1", "6.6.6.6, 203.0.113.7, 10.1.2.3", nginx)
    '203.0.113.7'
    >>> client_address("198.51.100.9", "203.0.113.7", nginx)  # not from our proxy: not believed
    '198.51.100.9'
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable, Sequence

from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# The client's address as client_address() decided it, for whatever needs it later.
CLIENT_ADDRESS = web.RequestKey("client_address", str)


def trusted_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """Addresses and CIDRs (validated by the config) as networks."""
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def _address(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("["):  # "[2001:db8::1]:443"
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # "203.0.113.7:5678": some proxies add the port
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text.partition("%")[0])  # no IPv6 zone
    except ValueError:
        return None
    # An IPv4 client seen through a dual-stack socket: compare it as IPv4.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address | None, networks: Sequence[Network]) -> bool:
    return address is not None and any(address in network for network in networks)


def client_address(peer: str | None, x_forwarded_for: str | None, trusted_proxies: Sequence[Network]) -> str:
    """The client's address: the TCP peer, or the rightmost untrusted hop in X-Forwarded-For
    when the peer (and every hop after that one) is a trusted proxy."""
    here = peer or ""
    if not x_forwarded_for or not trusted_proxies or not _trusted(_address(here), trusted_proxies):
        return here  # the header's absence is checked first: parsing the peer's address costs more
    for hop in reversed(x_forwarded_for.split(",")):
        address = _address(hop)
        if address is None:
            # Our proxies write real addresses; garbage came from the client. The last good hop is what we know.
            return here
        here = str(address)
        if not _trusted(address, trusted_proxies):
            return here
    return here  # every hop is one of ours: the leftmost is the client


def middleware(trusted_proxies: Iterable[str]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Stores each request's client address under CLIENT_ADDRESS."""
    networks = trusted_networks(trusted_proxies)

    @web.middleware
    async def forwarded(request: web.Request,
                        handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        request[CLIENT_ADDRESS] = client_address(request.remote, request.headers.get("X-Forwarded-For"), networks)
        return await handler(request)

    return forwarded
