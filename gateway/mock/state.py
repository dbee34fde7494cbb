"""The mock app's shared state: profiles, request records, `times` counters and the shutdown flag."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from .faults import FaultCounters
from .knobs import MockProfile

# Records hold whole bodies; the cap keeps a long benchmark against the mock
# from growing without bound.
_MAX_RECORDS: Final = 10_000


@dataclass(slots=True)
class State:
    profiles: Mapping[str, MockProfile]
    default: MockProfile
    require_api_key: str | None
    records: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=_MAX_RECORDS))
    next_id: int = 1
    fault_counts: FaultCounters = field(default_factory=FaultCounters)
    closing: bool = False


STATE: Final = web.AppKey("mock_state", State)
