"""SIGHUP: the config file read again and applied to a running worker, without dropping a stream.

What a request reads when it starts (routes and their weights, hedges and
guards, pricing, gateway keys) lives in one `Runtime` that a reload replaces
piece by piece; a request in flight keeps the plan it was given. What cannot
change under a running server (its address and limits, the log, the store,
the providers' pooled connections, the admin endpoints) is compared, and a
file that changes any of it is refused whole, with a message naming it: a
restart applies that. A file with a problem is refused too; either way the
worker keeps serving with what it had.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from .canary import CanaryGuard
from .config import Config
from .hedge import Hedger

RESTART_ONLY = ("server", "log", "mock", "providers", "store", "admin")


def restart_needed(old: Config, new: Config) -> list[str]:
    """The tables of `new` that differ from `old` and only a restart can apply.

        >>> from dataclasses import replace
        >>> from gateway.config import load_config
        >>> old = load_config()
        >>> restart_needed(old, replace(old, pricing={}))
        []
        >>> restart_needed(old, replace(old, log=replace(old.log, path="x")))
        ['log']
    """
    return [name for name in RESTART_ONLY if getattr(old, name) != getattr(new, name)]


@dataclass(slots=True)
class Runtime:
    """What a request reads at its start: the config, each route's hedger and the canary guard.
    A reload replaces it whole (the app holds it in a mutable box: its keys are frozen once it runs)."""

    config: Config
    hedgers: dict[str, Hedger]
    guard: CanaryGuard
    workers: int = 1

    @classmethod
    def of(cls, config: Config, workers: int = 1) -> Runtime:
        return cls(config, {name: Hedger(route.hedge) for name, route in config.routes.items()
                            if route.hedge is not None}, CanaryGuard(config, workers=workers), workers)

    def reloaded(self, new: Config) -> Runtime:
        """The new config. What did not change keeps its state: a route's hedger (budget, TTFT
        history) when its hedge is the same, its guard's evidence when its arms and confidence are."""
        hedgers = {}
        for name, route in new.routes.items():
            if route.hedge is None:
                continue
            kept = self.hedgers.get(name)
            hedgers[name] = kept if kept is not None and kept.config == route.hedge else Hedger(route.hedge)
        guard = CanaryGuard(new, workers=self.workers)
        for name, fresh in list(guard.guards.items()):
            old = self.guard.guards.get(name)
            if old is not None and (list(old.arms), old.alpha, old.control) == (list(fresh.arms), fresh.alpha,
                                                                                 fresh.control):
                guard.guards[name] = old
        guard.figures = self.guard.figures
        return Runtime(new, hedgers, guard, self.workers)


class Box:
    """The app's current Runtime (aiohttp freezes an app's keys once it runs; the box's content may change)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime


RUNTIME = web.AppKey("runtime", Box)
