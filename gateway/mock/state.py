"""The mock app's shared state: profiles, request records, `times` counters and the shutdown flag."""

from __future__ import annotations

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


STATE: Final = web.AppKey("mock_state", State)
