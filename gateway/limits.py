"""Per-key limits: requests per minute, tokens per minute, requests in flight.

A request is admitted before it goes upstream and settled after its log line:

- RPM counts the request; TPM reserves what it may cost (its prompt, estimated
  at 4 characters a token, plus its `max_tokens`) and, when it ends, gives
  back the difference to what it really used;
- concurrency holds a lease until the request ends.

Over a limit: 429 in the OpenAI error shape, `Retry-After`, and the
`x-ratelimit-*` headers OpenAI clients read (on every admitted response too).
The counters live in a `Store` (store.py): Redis makes them exact across
workers and instances; in-process, each of N workers enforces 1/N of each
limit. When Redis does not answer, `on_error = "open"` admits the request and
`"closed"` refuses it with 503; either way a `store` log event says so (once
per outage) and /readyz reports it.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .config import GatewayKey
from .errors import GatewayError
from .store import Store, StoreUnavailable

MINUTE = 60.0
CHARS_PER_TOKEN = 4  # a rough prompt estimate, good enough to reserve with; usage settles it
LEASE_MARGIN_S = 60.0


@dataclass(slots=True)
class Admission:
    """What one request holds against its key's limits."""

    key: GatewayKey | None
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # limit -> {"limit", "remaining"}
    reset_s: dict[str, float] = field(default_factory=dict)
    lease: str | None = None
    token_window: int | None = None
    reserved: int = 0
    hit: str | None = None  # the limit that refused the request
    refusal: GatewayError | None = None

    def log_fields(self) -> dict[str, Any] | None:
        if not self.counts:
            return None
        return {**self.counts, "hit": self.hit}

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for limit, suffix in (("rpm", "requests"), ("tpm", "tokens")):
            if limit in self.counts:
                out[f"x-ratelimit-limit-{suffix}"] = str(self.counts[limit]["limit"])
                out[f"x-ratelimit-remaining-{suffix}"] = str(self.counts[limit]["remaining"])
                out[f"x-ratelimit-reset-{suffix}"] = f"{math.ceil(self.reset_s[limit])}s"
        return out


def reservation(body: dict[str, Any]) -> int:
    """Tokens a request may cost, before it runs: its prompt (estimated) plus its completion cap.
    `body` is a checked chat request in either dialect (OpenAI messages, or Anthropic's with `system`).

        >>> reservation({"messages": [{"role": "user", "content": "12345678"}], "max_tokens": 10})
        12
    """
    contents = [body.get("system")] + [m.get("content") for m in body.get("messages") or () if isinstance(m, dict)]
    chars = 0
    for content in contents:
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(p["text"]) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    cap = body.get("max_completion_tokens") or body.get("max_tokens") or 0
    return math.ceil(chars / CHARS_PER_TOKEN) + int(cap)


class Limiter:
    def __init__(self, store: Store, *, on_error: str, share: int = 1,
                 on_store_error: Callable[[str], None] = lambda reason: None) -> None:
        self.store = store
        self.on_error = on_error
        self.share = share if store.kind == "memory" else 1  # Redis: one exact limit for all
        self.store_ok = True
        self._on_store_error = on_store_error
        self._tasks: set[asyncio.Task[None]] = set()

    def _limit(self, configured: int) -> int:
        return max(1, math.ceil(configured / self.share))

    async def admit(self, key: GatewayKey | None, *, reserve: int, ttl_s: float) -> Admission:
        """Count the request against its key's limits; a refused one carries its `refusal` (429)."""
        admission = Admission(key)
        if key is None or not (key.rpm or key.tpm or key.max_concurrent):
            return admission
        try:
            await self._admit(admission, key, reserve, ttl_s)
        except StoreUnavailable as exc:
            self._store_failed(str(exc))
            if self.on_error == "closed":
                raise GatewayError(503, "limits_unavailable", "The gateway cannot check rate limits right now; "
                                   "retry shortly", outcome="unavailable", retry_after=1.0) from None
            return Admission(key)  # fail open: admitted, unlimited this time
        self.store_ok = True
        return admission

    async def _refuse_holding(self, admission: Admission, limit: str, what: str, reset_s: float) -> None:
        if admission.key is not None and admission.lease is not None:
            await self.store.release(admission.key.name, lease=admission.lease)
            admission.lease = None
        _refuse(admission, limit, what, reset_s)

    async def _admit(self, admission: Admission, key: GatewayKey, reserve: int, ttl_s: float) -> None:
        if key.max_concurrent:
            limit = self._limit(key.max_concurrent)
            lease = secrets.token_hex(8)
            allowed, held = await self.store.acquire(key.name, limit=limit, lease=lease, ttl_s=ttl_s + LEASE_MARGIN_S)
            admission.counts["concurrent"] = {"limit": limit, "remaining": max(0, limit - held)}
            if not allowed:
                return _refuse(admission, "concurrent", f"more than {limit} requests in flight", 1.0)
            admission.lease = lease
        try:
            if key.rpm:
                limit = self._limit(key.rpm)
                count = await self.store.hit(f"{key.name}:rpm", limit=limit, cost=1, window_s=MINUTE)
                admission.counts["rpm"] = {"limit": limit, "remaining": max(0, math.floor(limit - count.used))}
                admission.reset_s["rpm"] = count.reset_s
                if not count.allowed:
                    return await self._refuse_holding(admission, "rpm", f"more than {limit} requests per minute",
                                                      count.reset_s)
            if key.tpm:
                limit = self._limit(key.tpm)
                cost = min(reserve, limit)  # a request larger than the whole budget may still run alone
                count = await self.store.hit(f"{key.name}:tpm", limit=limit, cost=cost, window_s=MINUTE)
                admission.counts["tpm"] = {"limit": limit, "remaining": max(0, math.floor(limit - count.used))}
                admission.reset_s["tpm"] = count.reset_s
                if not count.allowed:
                    return await self._refuse_holding(admission, "tpm", f"more than {limit} tokens per minute",
                                                      count.reset_s)
                admission.token_window, admission.reserved = count.window, cost
        except BaseException:
            if admission.lease is not None:  # a later step failed: do not hold the slot until it expires
                self.settle(admission, None)
            raise

    def settle(self, admission: Admission, used_tokens: int | None) -> None:
        """The request ended: give back its lease and the tokens it reserved but did not use. Runs in
        the background, so it survives a cancelled handler and never delays the response."""
        if admission.key is None or (admission.lease is None and admission.token_window is None):
            return
        task = asyncio.get_running_loop().create_task(self._settle(admission, used_tokens))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, admission: Admission, used_tokens: int | None) -> None:
        assert admission.key is not None
        try:
            if admission.lease is not None:
                await self.store.release(admission.key.name, lease=admission.lease)
            if admission.token_window is not None and used_tokens is not None:
                await self.store.adjust(f"{admission.key.name}:tpm", window=admission.token_window,
                                        delta=used_tokens - admission.reserved, window_s=MINUTE)
        except StoreUnavailable as exc:
            self._store_failed(str(exc))  # the lease expires by itself

    async def check_store(self) -> bool:
        try:
            await self.store.ping()
        except StoreUnavailable as exc:
            self._store_failed(str(exc))
            return False
        self.store_ok = True
        return True

    def _store_failed(self, reason: str) -> None:
        if self.store_ok:  # once per outage, not once per request
            self._on_store_error(reason)
        self.store_ok = False

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)
        await self.store.close()


def _refuse(admission: Admission, limit: str, what: str, reset_s: float) -> None:
    name = admission.key.name if admission.key else "?"
    admission.counts[limit]["remaining"] = 0
    admission.reset_s.setdefault(limit, reset_s)
    admission.hit = limit
    admission.refusal = GatewayError(429, "rate_limit_exceeded", f"Rate limit of key {name!r} reached: {what}; "
                                     f"retry after {math.ceil(reset_s)}s", outcome="rate_limited", param=limit,
                                     retry_after=max(1.0, reset_s))
