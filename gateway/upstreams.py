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


class Lease:
    """One upstream response held by one request."""

    __slots__ = ("response", "_gauge", "_ended")

    def __init__(self, response: aiohttp.ClientResponse, gauge: Gauge) -> None:
        self.response = response
        self._gauge = gauge
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


class Upstreams:
    def __init__(self, providers: Mapping[str, Provider], in_use: Gauge, limit: Gauge) -> None:
        self.providers = providers
        self._in_use = in_use
        self._limit = limit
        self.sessions: dict[str, aiohttp.ClientSession] = {}

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

    def lease(self, provider: str, response: aiohttp.ClientResponse) -> Lease:
        return Lease(response, self._in_use.labels(provider))
