"""The chat requests in flight in one worker: admitted under a cap, drained at shutdown.

Every chat request holds a `Ticket` from `admit` to `release`. Over
`server.max_streams` tickets, `admit` refuses with a 429 (`too_many_streams`,
`Retry-After`): past that point more concurrent streams would only queue on
the providers' pools and slow every stream down.

At shutdown the server (cli.py) waits for the tickets to be released, up to
the drain window, then `cut`s the rest: each one is marked, then ended the
way that suits where it is. A committed stream registered `on_cut` (the relay
closes its upstream, so its pump wakes and ends the stream with an error
event); anything else (opening, backing off, reading the body, a non-streamed
answer) is cancelled, and `_handle` answers 503. Either way the request knows
it was the shutdown, not its client, because its ticket says `cut`.

    >>> import asyncio
    >>> async def demo():
    ...     flight = InFlight(max_streams=1)
    ...     ticket = flight.admit()
    ...     try:
    ...         flight.admit()
    ...     except GatewayError as refused:
    ...         print(refused.status, refused.code, refused.retry_after)
    ...     flight.release(ticket)
    ...     return await flight.wait_released(0.1)
    >>> asyncio.run(demo())
    429 too_many_streams 1
    True
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from . import errors
from .errors import GatewayError


class Ticket:
    """One request in flight: the task that serves it, and how the drain ends it."""

    __slots__ = ("task", "cut", "_on_cut")

    def __init__(self, task: asyncio.Task[object] | None = None) -> None:
        self.task = task
        self.cut = False  # the drain window ended while this request was in flight
        self._on_cut: Callable[[], None] | None = None

    def on_cut(self, callback: Callable[[], None] | None) -> None:
        """How to end this request if the drain window ends (None: cancel its task)."""
        self._on_cut = callback

    def end(self) -> None:
        self.cut = True
        if self._on_cut is not None:
            self._on_cut()
        elif self.task is not None:
            self.task.cancel()


class InFlight:
    def __init__(self, max_streams: int) -> None:
        self.max_streams = max_streams
        self.draining = False  # shutdown began: /readyz answers 503, responses close their connection
        self._tickets: set[Ticket] = set()
        self._cut = False
        self._released: asyncio.Event | None = None

    def __len__(self) -> int:
        return len(self._tickets)

    def admit(self) -> Ticket:
        """A ticket for the current task, or a GatewayError: the cap (429), or the drain is over (503)."""
        if self._cut:
            raise errors.shutting_down()
        if len(self._tickets) >= self.max_streams:
            raise GatewayError(429, "too_many_streams", f"The gateway is serving its limit of {self.max_streams} "
                               "requests at once; retry shortly", outcome="overloaded", retry_after=1)
        ticket = Ticket(asyncio.current_task())
        self._tickets.add(ticket)
        return ticket

    def release(self, ticket: Ticket | None) -> None:
        if ticket is None:
            return
        self._tickets.discard(ticket)
        if not self._tickets and self._released is not None:
            self._released.set()

    async def wait_released(self, timeout: float) -> bool:
        """Wait until no request is in flight, up to `timeout` seconds; True if none is."""
        if not self._tickets:
            return True
        self._released = asyncio.Event()
        try:
            async with asyncio.timeout(timeout):
                await self._released.wait()
        except TimeoutError:
            return False
        finally:
            self._released = None
        return True

    def cut(self) -> int:
        """The drain window is over: end every request still in flight; how many there were."""
        self._cut = True
        tickets = list(self._tickets)
        for ticket in tickets:
            ticket.end()
        return len(tickets)
