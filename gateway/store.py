"""Shared state for limits and live routes: in this process, or in Redis for many workers and instances.

Three primitives, each one atomic step in either store:

- a sliding-window counter (`hit`, `adjust`): requests or tokens per minute.
  The window is the classic two-bucket approximation (Cloudflare's "sliding
  window counter"): the previous fixed window's count, weighted by how much of
  it still overlaps the sliding window, plus the current window's count.
- a lease set (`acquire`, `release`): requests in flight. Each lease expires
  on its own, so a crashed worker cannot hold slots for ever.
- a document (`read_doc`, `write_doc`): a small JSON value per key, such as a
  route's live weights and guard state (live.py), which readers poll.

In Redis each step is one Lua script (`EVALSHA`), so concurrent gateways never
race on a read-modify-write; the time is Redis's own (`TIME`), so instances
with skewed clocks agree. Every Redis call is bounded by `timeout_ms`: a dead
Redis costs a request at most that, never a hang; the limiter (limits.py)
then fails open or closed as configured.

    >>> import asyncio
    >>> store = MemoryStore(clock=lambda: 90.0)
    >>> asyncio.run(store.hit("k", limit=2, cost=1, window_s=60)).allowed
    True
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


class StoreUnavailable(Exception):
    """The shared store did not answer in time (or at all)."""


@dataclass(frozen=True, slots=True)
class WindowCount:
    allowed: bool
    used: float  # in the sliding window, including this hit when allowed
    reset_s: float  # until the current fixed window ends
    window: int  # the fixed window this hit was counted in (for `adjust`)


def sliding_used(previous: float, current: float, elapsed_fraction: float) -> float:
    """What the sliding window holds: the part of the previous window it still overlaps, plus the current.

        >>> sliding_used(previous=10, current=4, elapsed_fraction=0.25)
        11.5
    """
    return previous * (1.0 - elapsed_fraction) + current


class Store(Protocol):
    kind: str

    async def hit(self, key: str, *, limit: int, cost: int, window_s: float) -> WindowCount: ...
    async def adjust(self, key: str, *, window: int, delta: int, window_s: float) -> None: ...
    async def acquire(self, key: str, *, limit: int, lease: str, ttl_s: float) -> tuple[bool, int]: ...
    async def release(self, key: str, *, lease: str) -> None: ...
    async def read_doc(self, key: str) -> bytes | None: ...
    async def write_doc(self, key: str, value: bytes) -> None: ...
    async def ping(self) -> None: ...
    async def close(self) -> None: ...


class MemoryStore:
    """This process's own counters: exact for one worker; with N workers each enforces its share."""

    kind = "memory"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._windows: dict[tuple[str, int], int] = {}
        self._leases: dict[str, dict[str, float]] = {}
        self._docs: dict[str, bytes] = {}

    async def hit(self, key: str, *, limit: int, cost: int, window_s: float) -> WindowCount:
        now = self._clock()
        index = math.floor(now / window_s)
        self._forget_before(index - 1)
        elapsed = (now - index * window_s) / window_s
        used = sliding_used(self._windows.get((key, index - 1), 0), self._windows.get((key, index), 0), elapsed)
        reset = (index + 1) * window_s - now
        if used + cost > limit:
            return WindowCount(False, used, reset, index)
        self._windows[(key, index)] = self._windows.get((key, index), 0) + cost
        return WindowCount(True, used + cost, reset, index)

    async def adjust(self, key: str, *, window: int, delta: int, window_s: float) -> None:
        if (key, window) in self._windows:
            self._windows[(key, window)] = max(0, self._windows[(key, window)] + delta)

    async def acquire(self, key: str, *, limit: int, lease: str, ttl_s: float) -> tuple[bool, int]:
        now = self._clock()
        leases = self._leases.setdefault(key, {})
        for expired in [k for k, until in leases.items() if until <= now]:
            del leases[expired]
        if len(leases) >= limit:
            return False, len(leases)
        leases[lease] = now + ttl_s
        return True, len(leases)

    async def release(self, key: str, *, lease: str) -> None:
        self._leases.get(key, {}).pop(lease, None)

    async def read_doc(self, key: str) -> bytes | None:
        return self._docs.get(key)

    async def write_doc(self, key: str, value: bytes) -> None:
        self._docs[key] = value

    async def ping(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def _forget_before(self, index: int) -> None:
        if len(self._windows) > 4096:  # a bound, not a schedule: old windows go when there are many
            for stale in [k for k in self._windows if k[1] < index]:
                del self._windows[stale]


_HIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window, limit, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local index = math.floor(now / window)
local current_key = KEYS[1] .. ':' .. index
local previous = tonumber(redis.call('GET', KEYS[1] .. ':' .. (index - 1)) or '0')
local current = tonumber(redis.call('GET', current_key) or '0')
local into = now - index * window
local used = previous * (1 - into / window) + current
if used + cost > limit then
  return {0, index, tostring(used), window - into}
end
redis.call('INCRBY', current_key, cost)
redis.call('PEXPIRE', current_key, window * 2)
return {1, index, tostring(used + cost), window - into}
"""

_ADJUST = """
local key = KEYS[1] .. ':' .. ARGV[1]
if redis.call('EXISTS', key) == 1 then
  if redis.call('INCRBY', key, ARGV[2]) < 0 then redis.call('SET', key, 0, 'KEEPTTL') end
end
return 0
"""

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
if held >= tonumber(ARGV[1]) then return {0, held} end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return {1, held + 1}
"""


class RedisStore:
    """Counters in Redis, shared by every worker of every gateway instance that points at it."""

    kind = "redis"

    def __init__(self, url: str, *, timeout_ms: float, prefix: str) -> None:
        import redis.asyncio as redis  # only when configured

        self._timeout = timeout_ms / 1000
        self._prefix = prefix
        self._redis = redis.Redis.from_url(url, socket_timeout=self._timeout,
                                           socket_connect_timeout=self._timeout, retry_on_timeout=False)
        self._hit = self._redis.register_script(_HIT)
        self._adjust = self._redis.register_script(_ADJUST)
        self._acquire = self._redis.register_script(_ACQUIRE)

    async def _call(self, coro: Any) -> Any:
        import redis

        try:
            return await asyncio.wait_for(coro, self._timeout)
        except (TimeoutError, redis.RedisError, OSError) as exc:
            raise StoreUnavailable(type(exc).__name__) from None

    def _key(self, kind: str, key: str) -> str:
        return f"{self._prefix}:{kind}:{key}"

    async def hit(self, key: str, *, limit: int, cost: int, window_s: float) -> WindowCount:
        allowed, index, used, reset_ms = await self._call(
            self._hit(keys=[self._key("window", key)], args=[int(window_s * 1000), limit, cost]))
        return WindowCount(bool(allowed), float(used), int(reset_ms) / 1000, int(index))

    async def adjust(self, key: str, *, window: int, delta: int, window_s: float) -> None:
        await self._call(self._adjust(keys=[self._key("window", key)], args=[window, delta]))

    async def acquire(self, key: str, *, limit: int, lease: str, ttl_s: float) -> tuple[bool, int]:
        allowed, held = await self._call(
            self._acquire(keys=[self._key("leases", key)], args=[limit, lease, int(ttl_s * 1000)]))
        return bool(allowed), int(held)

    async def release(self, key: str, *, lease: str) -> None:
        await self._call(self._redis.zrem(self._key("leases", key), lease))

    async def read_doc(self, key: str) -> bytes | None:
        value = await self._call(self._redis.get(self._key("doc", key)))
        return bytes(value) if value is not None else None

    async def write_doc(self, key: str, value: bytes) -> None:
        await self._call(self._redis.set(self._key("doc", key), value))

    async def ping(self) -> None:
        await self._call(self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose()
