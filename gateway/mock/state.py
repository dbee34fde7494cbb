"""The mock app's shared state: profiles, request records, `times` counters and the shutdown flag."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from aiohttp import web

from .faults import FaultCounters
from .knobs import MockProfile
from .records import Recorder


@dataclass(slots=True)
class State:
    profiles: Mapping[str, MockProfile]
    default: MockProfile
    require_api_key: str | None
    recorder: Recorder
    next_id: int = 1
    fault_counts: FaultCounters = field(default_factory=FaultCounters)
    closing: bool = False
    # The host cancels a handler whose client goes away (start_mock's runner has handler_cancellation):
    # a sleeping stream then waits for its time or the shutdown, and polls nothing.
    cancels_handlers: bool = False
    _shutdown: asyncio.Future[None] | None = None

    def shutdown(self) -> asyncio.Future[None]:
        """Done when the app shuts down: what a sleeping handler waits on beside its time."""
        if self._shutdown is None:
            self._shutdown = asyncio.get_running_loop().create_future()
            if self.closing:
                self._shutdown.set_result(None)
        return self._shutdown

    def close(self) -> None:
        self.closing = True
        if self._shutdown is not None and not self._shutdown.done():
            self._shutdown.set_result(None)


STATE: Final = web.AppKey("mock_state", State)
