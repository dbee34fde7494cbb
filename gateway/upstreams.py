"""The providers' side of the gateway: one pooled ClientSession per provider, and leases.

The sessions live as long as the app (`Upstreams.running`, used from
`app.cleanup_ctx`). A request that holds an upstream response holds a
`Lease`, which ends exactly once: a fully read response goes back to the
pool, any other is closed, so a half-read connection is never reused.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import aiohttp
from prometheus_client import Gauge

from .config import Provider

# Never passed upstream, whatever a provider's forward_headers say: hop-by-hop headers (RFC 9110
# 7.6.1) belong to one connection, and credentials or cookies belong to the client, not the provider.
NEVER_FORWARDED = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
    "proxy-authorization", "proxy-authenticate", "host", "content-length", "content-type", "content-encoding",
    "authorization", "x-api-key", "cookie", "set-cookie", "anthropic-version", "openai-organization",
})


def forwarded_headers(client: Mapping[str, str], prefixes: tuple[str, ...]) -> dict[str, str]:
    """The client headers a provider is configured to receive (by lower-case prefix), minus the
    never-forwarded, with lower-case names. Most providers forward none: then nothing is read.

        >>> forwarded_headers({"X-Mock-Tokens": "3", "Connection": "close", "x-other": "1"}, ("x-mock-", "conn"))
        {'x-mock-tokens': '3'}
    """
    if not prefixes:
        return {}
    lowered = ((k.lower(), v) for k, v in client.items())
    return {k: v for k, v in lowered if k.startswith(prefixes) and k not in NEVER_FORWARDED}


class PoolExhausted(Exception):
    """Every connection of a provider's pool stayed in use for the whole bounded wait."""


class Lease:
    """One upstream response held by one request, with its slot in the provider's pool."""

    __slots__ = ("response", "_gauge", "_slot", "_ended")

    def __init__(self, response: aiohttp.ClientResponse, gauge: Gauge, slot: asyncio.Semaphore) -> None:
        self.response = response
        self._gauge = gauge
        self._slot = slot
        self._ended = False
        gauge.inc()

    def end(self, *, close: bool = False) -> None:
        """Release (back to the pool if fully read, closed otherwise) or close. Idempotent, like
        aiohttp's own `release()`: every path out of a request may call it."""
        if self._ended:
            return
        self._ended = True
        self.response.close() if close else self.response.release()
        self._gauge.dec()
        self._slot.release()


class Upstreams:
    def __init__(self, providers: Mapping[str, Provider], in_use: Gauge, limit: Gauge) -> None:
        self.providers = providers
        self._in_use = in_use
        self._limit = limit
        self.sessions: dict[str, aiohttp.ClientSession] = {}
        # Our own count of the pool, so a full pool is told apart from a slow connect: aiohttp's
        # connect timeout covers both the wait for a free connection and the TCP connect.
        self._slots = {name: asyncio.Semaphore(p.max_connections) for name, p in providers.items()}

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Upstreams]:
        for name, provider in self.providers.items():
            self._limit.labels(name).set(provider.max_connections)
            connector = aiohttp.TCPConnector(limit=provider.max_connections, keepalive_timeout=provider.keepalive_s)
            self.sessions[name] = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None),
                                                        auto_decompress=True)
        try:
            yield self
        finally:
            await asyncio.gather(*(s.close() for s in self.sessions.values()))

    def ready(self) -> bool:
        return len(self.sessions) == len(self.providers) and not any(s.closed for s in self.sessions.values())

    async def slot(self, provider: str, wait_s: float) -> asyncio.Semaphore:
        """A slot in the provider's pool, waited for at most `wait_s`; give it back with `.release()`
        (or hand it to a `Lease`)."""
        slot = self._slots[provider]
        try:
            async with asyncio.timeout(wait_s):
                await slot.acquire()
        except TimeoutError:
            raise PoolExhausted(provider) from None
        return slot

    def lease(self, provider: str, response: aiohttp.ClientResponse, slot: asyncio.Semaphore) -> Lease:
        return Lease(response, self._in_use.labels(provider), slot)
