"""Where resumable streams' events live: in this process, or in Redis Streams.

One event log per stream: its metadata (what a resume is checked against),
its numbered events, an end mark, who is reading it and where it was resumed.
The owner (the task reading the upstream) appends; readers (the original
request, resumes on any worker or instance) replay from a sequence number and
follow the live tail. The stores never decide anything: `resume.py` does.

In Redis, a stream's events are one Redis Stream whose entry ids are `0-<seq>`,
so a resume after N is `XREAD BLOCK ... STREAMS key 0-N`; `XADD` carries a
`MAXLEN` and every key an expiry, so a crashed owner leaves nothing behind.

    >>> import asyncio
    >>> from gateway.resume import StreamMeta
    >>> async def demo():
    ...     logs = MemoryEventLogs()
    ...     await logs.create(StreamMeta("s", "digest", "", "r", "here"), ttl_s=60)
    ...     await logs.append("s", [(1, b"id: 1\\ndata: a\\n\\n"), (2, b"id: 2\\ndata: b\\n\\n")], ttl_s=60)
    ...     await logs.end("s", keep_s=60)
    ...     return await logs.read("s", after=1, wait_s=0.1)
    >>> asyncio.run(demo())
    Chunk(events=[(2, b'id: 2\\ndata: b\\n\\n')], ended=True)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .resume import StreamMeta
from .store import StoreUnavailable


@dataclass(frozen=True, slots=True)
class Chunk:
    events: list[tuple[int, bytes]]  # (seq, framed event), in order, all after the reader's position
    ended: bool  # nothing follows: the stream ended (or is gone)


class EventLogs(Protocol):
    kind: str
    check_every_s: float  # how often the owner asks whether anyone reads (the cost of asking)

    async def create(self, meta: StreamMeta, *, ttl_s: float) -> None: ...
    async def meta(self, stream_id: str) -> StreamMeta | None: ...
    async def append(self, stream_id: str, events: list[tuple[int, bytes]], *, ttl_s: float) -> None: ...
    async def end(self, stream_id: str, *, keep_s: float) -> None: ...
    async def drop(self, stream_id: str) -> None: ...
    async def read(self, stream_id: str, *, after: int, wait_s: float) -> Chunk: ...
    async def touch(self, stream_id: str, *, ttl_s: float) -> None: ...
    async def leave(self, stream_id: str) -> None: ...
    async def present(self, stream_id: str) -> bool: ...
    async def resumed(self, stream_id: str, instance: str) -> None: ...
    async def resumes(self, stream_id: str) -> list[str]: ...
    async def cancel(self, stream_id: str) -> None: ...
    async def listen(self, on_cancel: Callable[[str], None]) -> None: ...
    async def close(self) -> None: ...


@dataclass(slots=True)
class _Stream:
    meta: StreamMeta
    events: list[bytes] = field(default_factory=list)  # events[i] has seq i + 1
    ended: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    seen_until: float = 0.0
    resumed_on: list[str] = field(default_factory=list)
    expiry: asyncio.TimerHandle | None = None


class MemoryEventLogs:
    """This process's own logs: for one worker (a resume must reach the same process)."""

    kind = "memory"
    check_every_s = 0.05

    def __init__(self) -> None:
        self._streams: dict[str, _Stream] = {}
        self._on_cancel: Callable[[str], None] | None = None

    def _expire_in(self, stream: _Stream, seconds: float) -> None:
        if stream.expiry is not None:
            stream.expiry.cancel()
        stream.expiry = asyncio.get_running_loop().call_later(
            seconds, lambda: self._forget(stream.meta.stream_id, stream))

    def _forget(self, stream_id: str, stream: _Stream) -> None:
        if self._streams.get(stream_id) is stream:
            del self._streams[stream_id]
            stream.ended = True
            stream.changed.set()  # readers still following it stop

    async def create(self, meta: StreamMeta, *, ttl_s: float) -> None:
        stream = self._streams[meta.stream_id] = _Stream(meta)
        self._expire_in(stream, ttl_s)

    async def meta(self, stream_id: str) -> StreamMeta | None:
        stream = self._streams.get(stream_id)
        return stream.meta if stream else None

    async def append(self, stream_id: str, events: list[tuple[int, bytes]], *, ttl_s: float) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        stream.events.extend(event for _, event in events)
        stream.changed.set()

    async def end(self, stream_id: str, *, keep_s: float) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        stream.ended = True
        stream.changed.set()
        self._expire_in(stream, keep_s)

    async def drop(self, stream_id: str) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            if stream.expiry is not None:
                stream.expiry.cancel()
            self._forget(stream_id, stream)

    async def read(self, stream_id: str, *, after: int, wait_s: float) -> Chunk:
        stream = self._streams.get(stream_id)
        if stream is None:
            return Chunk([], True)
        if after >= len(stream.events) and not stream.ended:
            stream.changed.clear()
            try:
                async with asyncio.timeout(wait_s):
                    await stream.changed.wait()
            except TimeoutError:
                pass
        events = stream.events[after:]
        return Chunk(list(enumerate(events, after + 1)), stream.ended)

    async def touch(self, stream_id: str, *, ttl_s: float) -> None:
        if stream := self._streams.get(stream_id):
            stream.seen_until = time.monotonic() + ttl_s

    async def leave(self, stream_id: str) -> None:
        if stream := self._streams.get(stream_id):
            stream.seen_until = 0.0

    async def present(self, stream_id: str) -> bool:
        stream = self._streams.get(stream_id)
        return stream is not None and stream.seen_until > time.monotonic()

    async def resumed(self, stream_id: str, instance: str) -> None:
        if stream := self._streams.get(stream_id):
            stream.resumed_on.append(instance)

    async def resumes(self, stream_id: str) -> list[str]:
        stream = self._streams.get(stream_id)
        return list(stream.resumed_on) if stream else []

    async def cancel(self, stream_id: str) -> None:
        if self._on_cancel is not None:
            self._on_cancel(stream_id)

    async def listen(self, on_cancel: Callable[[str], None]) -> None:
        self._on_cancel = on_cancel

    async def close(self) -> None:
        for stream in self._streams.values():
            if stream.expiry is not None:
                stream.expiry.cancel()
        self._streams.clear()


class RedisEventLogs:
    """Events in Redis Streams, readable from every worker of every instance that shares the Redis."""

    kind = "redis"
    check_every_s = 0.5

    def __init__(self, url: str, *, timeout_ms: float, prefix: str, max_events: int) -> None:
        import redis.asyncio as redis  # only when configured

        self._timeout = timeout_ms / 1000
        self._prefix = f"{prefix}:resume"
        self._max_events = max_events
        # Blocking reads hold their connection for up to `wait_s`: the socket timeout allows for it.
        self._redis = redis.Redis.from_url(url, socket_timeout=self._timeout + 2.0,
                                           socket_connect_timeout=self._timeout, retry_on_timeout=False)
        self._listener: asyncio.Task[None] | None = None

    async def _call(self, coro: Any, wait_s: float = 0.0) -> Any:
        import redis

        try:
            return await asyncio.wait_for(coro, self._timeout + wait_s)
        except (TimeoutError, redis.RedisError, OSError) as exc:
            raise StoreUnavailable(type(exc).__name__) from None

    def _key(self, stream_id: str, part: str) -> str:
        return f"{self._prefix}:{stream_id}:{part}"

    def _keys(self, stream_id: str) -> list[str]:
        return [self._key(stream_id, part) for part in ("meta", "events", "seen", "resumes")]

    async def create(self, meta: StreamMeta, *, ttl_s: float) -> None:
        pipe = self._redis.pipeline(transaction=False)
        key = self._key(meta.stream_id, "meta")
        pipe.hset(key, mapping={"token": meta.token_digest, "key": meta.key_name, "request_id": meta.request_id,
                                "owner": meta.owner})
        pipe.pexpire(key, int(ttl_s * 1000))
        await self._call(pipe.execute())

    async def meta(self, stream_id: str) -> StreamMeta | None:
        found = await self._call(self._redis.hgetall(self._key(stream_id, "meta")))
        if not found:
            return None
        text = {k.decode(): v.decode() for k, v in found.items()}
        return StreamMeta(stream_id, text["token"], text["key"], text["request_id"], text["owner"])

    async def append(self, stream_id: str, events: list[tuple[int, bytes]], *, ttl_s: float) -> None:
        key = self._key(stream_id, "events")
        pipe = self._redis.pipeline(transaction=False)
        for seq, event in events:
            pipe.xadd(key, {"d": event}, id=f"0-{seq}", maxlen=self._max_events, approximate=True)
        if events and events[0][0] == 1:
            pipe.pexpire(key, int(ttl_s * 1000))  # once: the meta's expiry, set at create, is the same
        await self._call(pipe.execute())

    async def end(self, stream_id: str, *, keep_s: float) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.xadd(self._key(stream_id, "events"), {"end": b"1"}, id="*")  # after every 0-N id
        for key in self._keys(stream_id):
            pipe.pexpire(key, int(keep_s * 1000))
        await self._call(pipe.execute())

    async def drop(self, stream_id: str) -> None:
        await self._call(self._redis.delete(*self._keys(stream_id)))

    async def read(self, stream_id: str, *, after: int, wait_s: float) -> Chunk:
        key = self._key(stream_id, "events")
        answer = await self._call(self._redis.xread({key: f"0-{after}"}, block=max(1, int(wait_s * 1000))),
                                  wait_s)
        events: list[tuple[int, bytes]] = []
        ended = False
        for _, entries in answer or []:
            for entry_id, fields in entries:
                if b"end" in fields:
                    ended = True
                    break
                events.append((int(entry_id.split(b"-")[1]), fields[b"d"]))
        if not answer and not await self._call(self._redis.exists(self._key(stream_id, "meta"))):
            ended = True  # expired or dropped: nothing will ever follow
        return Chunk(events, ended)

    async def touch(self, stream_id: str, *, ttl_s: float) -> None:
        await self._call(self._redis.set(self._key(stream_id, "seen"), b"1", px=int(ttl_s * 1000)))

    async def leave(self, stream_id: str) -> None:
        await self._call(self._redis.delete(self._key(stream_id, "seen")))

    async def present(self, stream_id: str) -> bool:
        return bool(await self._call(self._redis.exists(self._key(stream_id, "seen"))))

    async def resumed(self, stream_id: str, instance: str) -> None:
        pipe = self._redis.pipeline(transaction=False)
        key = self._key(stream_id, "resumes")
        pipe.rpush(key, instance)
        pipe.pexpire(key, 3_600_000)  # the stream's end sets the real expiry
        await self._call(pipe.execute())

    async def resumes(self, stream_id: str) -> list[str]:
        return [v.decode() for v in await self._call(self._redis.lrange(self._key(stream_id, "resumes"), 0, -1))]

    async def cancel(self, stream_id: str) -> None:
        # The owner may be another worker or instance: every one hears it, the owner acts.
        await self._call(self._redis.publish(f"{self._prefix}:cancel", stream_id))

    async def listen(self, on_cancel: Callable[[str], None]) -> None:
        self._listener = asyncio.create_task(self._listen(on_cancel))

    async def _listen(self, on_cancel: Callable[[str], None]) -> None:
        import redis

        while True:
            try:
                pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(f"{self._prefix}:cancel")
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        on_cancel(message["data"].decode())
            except (redis.RedisError, OSError):
                await asyncio.sleep(1.0)  # Redis is away: cancels wait for it, resumes fail meanwhile

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        await self._redis.aclose()
