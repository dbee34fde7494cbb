"""Resumable streams, the I/O: a stream that outlives its client's connection.

A resumable request is opened like any other (relay.py's OPEN: retries and
fallback while nothing is sent). Then its pump moves into a task of its own,
which writes each event, numbered (`resume.py`), into the stream's event log
(`eventlog.py`), and the client's handler becomes a reader of that log,
following its live tail. A resume (`GET /v1/streams/{id}`, on any worker or
instance that shares the log) is another reader, from `Last-Event-ID` on.

So a client going away only stops a reader. The owning task watches whether
anyone reads; after `resume.window_s` with nobody, it closes the upstream.
`DELETE /v1/streams/{id}` stops it at once. The task owns the request record
and finishes it (one log line) when the stream really ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from .config import Resume
from .errors import GatewayError
from .eventlog import EventLogs
from .relay import STREAM_HEADERS, Dispatch, OpenStream, open_stream, pump, relay_stream
from .renderers import Renderer
from .resume import (
    RETRY,
    EventFramer,
    Presence,
    StreamMeta,
    buffer_full,
    cancelled,
    new_stream_id,
    new_token,
    token_digest,
    token_matches,
    window_expired,
)
from .store import StoreUnavailable
from .stream_core import KEEP_ALIVE, Batch

READ_WAIT_S = 1.0  # a reader's longest wait on the log before it looks at its clocks again
TOUCH_EVERY_S = 1.0  # a reader says it is still there this often (one Redis SET) ...
TOUCH_TTL_S = 3.0  # ... and is thought gone this long after its last word, should it vanish silently

RESUME_HEADERS = ("X-Stream-Id", "X-Stream-Token")


def instance_name() -> str:
    """Which worker of which machine: what `resumed_on` lists."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(slots=True)
class _Owned:
    """A stream whose upstream this worker reads."""

    stream_id: str
    presence: Presence
    pump: asyncio.Task[None] | None = None
    reason: GatewayError | None = None  # why it was stopped early: window over, or cancelled
    watcher: asyncio.Task[None] | None = field(default=None, repr=False)

    def stop(self, reason: GatewayError) -> None:
        if self.reason is None and self.pump is not None and not self.pump.done():
            self.reason = reason
            self.pump.cancel()


class Resumables:
    """This worker's resumable streams: the ones it owns, and readers of any."""

    def __init__(self, logs: EventLogs, settings: Resume, *, heartbeat_s: float, instance: str) -> None:
        self.logs, self.settings, self.heartbeat_s, self.instance = logs, settings, heartbeat_s, instance
        self._owned: dict[str, _Owned] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.logs.listen(self._cancel_here)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.logs.close()

    # --- the original request ----------------------------------------------------

    async def stream(self, d: Dispatch, request: web.Request, renderer: Renderer, headers: dict[str, str],
                     key_name: str | None, hand_off: Callable[[], Callable[[], None]]) -> web.StreamResponse:
        """Open as any stream, then hand the pump (and the record: `hand_off` gives back how to finish
        it) to a task of its own, and follow its log. If the log cannot be created (the shared store
        is down), the stream is relayed as a plain one."""
        opened = await open_stream(d, renderer)
        d.record.served_by(opened.stream)
        stream_id, token = new_stream_id(), new_token()
        meta = StreamMeta(stream_id, token_digest(token), key_name or "", d.record.request_id, self.instance)
        try:
            await self.logs.create(meta, ttl_s=d.plan.total_s + self.settings.window_s + 60)
            await self.logs.touch(stream_id, ttl_s=TOUCH_TTL_S)  # its first reader is this request
        except StoreUnavailable:
            created = False
        except BaseException:
            opened.lease.end(close=True)
            raise
        else:
            created = True
        if not created:
            d.ticket.on_cut(lambda: opened.lease.end(close=True))
            try:
                return await relay_stream(d, request, opened, headers)
            finally:
                d.ticket.on_cut(None)
                opened.lease.end()
        d.record.committed()
        owned = self._owned[stream_id] = _Owned(stream_id, Presence(self.settings.window_s))
        task = asyncio.create_task(self._own(d, opened, owned, hand_off()))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await self.follow(request, stream_id, 0, {**headers, "X-Stream-Id": stream_id,
                                                         "X-Stream-Token": token})

    async def _own(self, d: Dispatch, opened: OpenStream, owned: _Owned, finish: Callable[[], None]) -> None:
        record, logs, stream_id = d.record, self.logs, owned.stream_id
        framer = EventFramer(self.settings.max_bytes_per_stream)
        ttl_s = d.plan.total_s + self.settings.window_s + 60
        closing = False  # the stream has ended: what comes now is its last event, kept past the bound

        async def write(batch: Batch, overhead_s: float) -> GatewayError | None:
            nonlocal closing
            if batch.parts:
                framed = [framer.frame_last(part) for part in batch.parts] if closing else framer.frame(batch.parts)
                if framed is None:
                    closing = True
                    return buffer_full(self.settings.max_bytes_per_stream)
                await logs.append(stream_id, framed, ttl_s=ttl_s)
            record.wrote(len(batch.data), batch.events, batch.outputs, time.monotonic(), overhead_s)
            closing = closing or batch.ended
            return None

        loop = asyncio.get_running_loop()
        d.ticket.on_cut(lambda: opened.lease.end(close=True))  # the shutdown's drain: as in relay.stream_response
        owned.pump = asyncio.create_task(pump(d, opened, write))
        owned.watcher = asyncio.create_task(self._watch(owned))
        resumed_on: list[str] = []
        try:
            try:
                await owned.pump
            except asyncio.CancelledError:
                if owned.reason is None:
                    raise  # the app is closing
                record.abandoned(owned.reason)
            except Exception as exc:  # the log stopped taking events (StoreUnavailable), or a bug
                record.crashed(exc)
            resumed_on = await self._resumes(stream_id)
            with contextlib.suppress(StoreUnavailable):
                if owned.reason is None:
                    await logs.end(stream_id, keep_s=self.settings.window_s)  # a late resume still gets the end
                else:
                    await logs.drop(stream_id)  # a resume now gets 404
        finally:
            owned.watcher.cancel()
            d.ticket.on_cut(None)
            opened.lease.end()  # back to the pool if fully read, closed otherwise
            self._owned.pop(stream_id, None)
            if not record.is_finished:
                record.resumable_ended(resumed_on, owned.presence.away_ms(loop.time()))
                finish()

    async def _resumes(self, stream_id: str) -> list[str]:
        try:
            return await self.logs.resumes(stream_id)
        except StoreUnavailable:
            return []

    async def _watch(self, owned: _Owned) -> None:
        """Look whether anyone reads, now and then; close the upstream once the window is over."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.logs.check_every_s)
            try:
                present = await self.logs.present(owned.stream_id)
            except StoreUnavailable:
                present = True  # unknown: the window is not cut short by the store's outage
            if owned.presence.observe(present=present, now=loop.time()):
                owned.stop(window_expired(self.settings.window_s))
                return

    def _cancel_here(self, stream_id: str) -> None:
        if owned := self._owned.get(stream_id):
            owned.stop(cancelled())

    # --- resumes and cancels -----------------------------------------------------

    async def find(self, stream_id: str, token: str | None, key_name: str | None) -> StreamMeta | None:
        """The stream, if the token and the gateway key are its own; None for anything else."""
        try:
            meta = await self.logs.meta(stream_id)
        except StoreUnavailable:
            return None
        if meta is None or not token_matches(meta.token_digest, token) or meta.key_name != (key_name or ""):
            return None
        return meta

    async def cancel(self, meta: StreamMeta) -> None:
        if meta.stream_id in self._owned:
            self._cancel_here(meta.stream_id)  # at once, without a round trip
        else:
            await self.logs.cancel(meta.stream_id)

    async def resume(self, request: web.Request, meta: StreamMeta, after: int) -> web.StreamResponse:
        with contextlib.suppress(StoreUnavailable):
            await self.logs.resumed(meta.stream_id, self.instance)
        return await self.follow(request, meta.stream_id, after, {"X-Request-Id": meta.request_id,
                                                                  "X-Stream-Id": meta.stream_id})

    # --- a reader ----------------------------------------------------------------

    async def follow(self, request: web.Request, stream_id: str, after: int,
                     headers: dict[str, str]) -> web.StreamResponse:
        """Write the events after `after`, then the live tail, until the stream's end (or the client's)."""
        loop = asyncio.get_running_loop()
        response = web.StreamResponse(status=200, headers={**STREAM_HEADERS, **headers})
        await response.prepare(request)
        touched = -TOUCH_EVERY_S
        wrote = loop.time()
        try:
            await response.write(RETRY)
            while True:
                if loop.time() - touched >= TOUCH_EVERY_S:
                    await self.logs.touch(stream_id, ttl_s=TOUCH_TTL_S)
                    touched = loop.time()
                chunk = await self.logs.read(stream_id, after=after, wait_s=min(READ_WAIT_S, self.heartbeat_s))
                if chunk.events:
                    await response.write(b"".join(event for _, event in chunk.events))
                    after, wrote = chunk.events[-1][0], loop.time()
                elif loop.time() - wrote >= self.heartbeat_s:
                    await response.write(KEEP_ALIVE)
                    wrote = loop.time()
                if chunk.ended:
                    break
            await response.write_eof()
        except (ConnectionResetError, StoreUnavailable):
            pass  # the client went away (or the log did): only this reader ends
        finally:
            with contextlib.suppress(StoreUnavailable):
                await self.logs.leave(stream_id)
        return response
