"""Sticky arm assignment for canary and A/B routes.

A user's bucket is a stable hash of the route's salt and the user key, in
0..9,999; arms own consecutive ranges of buckets in the order the config
lists them. The hash is blake2b, not Python's `hash()`, which is salted per
process: the same user lands in the same arm in every worker, after every
restart, on every machine. Raising the weight of the *last* arm (put the
canary last) only moves users into it, never out of it.

    >>> from gateway.config import Arm, Route
    >>> route = Route("chat", "exp-1", (Arm("control", "a", "m", 9000), Arm("canary", "b", "m", 1000)))
    >>> bucket("exp-1", "user-42"), choose_arm(route, bucket("exp-1", "user-42")).name
    (9192, 'canary')
    >>> bucket("exp-1", "user-7"), choose_arm(route, bucket("exp-1", "user-7")).name
    (5535, 'control')
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from .config import BASIS_POINTS, Arm, Config, Route, Target
from .errors import GatewayError

ARM_OVERRIDE_HEADER = "X-Gateway-Arm-Override"


@dataclass(frozen=True, slots=True)
class UserKey:
    value: str
    source: str  # user | header | api_key | random


def _bytes(text: str) -> bytes:
    # Header values arrive decoded with surrogateescape: any bytes a client sent hash as those bytes.
    return text.encode("utf-8", "surrogateescape")


def bucket(salt: str, user_key: str) -> int:
    digest = hashlib.blake2b(_bytes(f"{salt}\x00{user_key}"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BASIS_POINTS


def user_key_hash(salt: str, user_key: str) -> str:
    """What the log records instead of the user id: stable per route, not reversible by lookup table
    without the salt."""
    return hashlib.blake2b(_bytes(f"log\x00{salt}\x00{user_key}"), digest_size=8).hexdigest()


def choose_arm(route: Route, user_bucket: int, weights: tuple[int, ...] | None = None) -> Arm:
    """The arm owning the bucket, under the configured weights or live ones (live.py), in config order."""
    edge = 0
    for arm, weight in zip(route.arms, weights or [arm.weight_bp for arm in route.arms]):
        edge += weight
        if user_bucket < edge:
            return arm
    return route.arms[-1]  # unreachable when weights sum to 10,000


def pick_user_key(body_user: object, header_user: str | None, api_key: str | None) -> UserKey:
    """The identity that keeps a user on one arm, from the most to the least specific source."""
    if isinstance(body_user, str) and body_user:
        return UserKey(body_user, "user")
    if header_user:
        return UserKey(header_user, "header")
    if api_key:
        return UserKey(api_key, "api_key")
    return UserKey(secrets.token_hex(8), "random")


def candidates(route: Route, arm: Arm) -> list[Target]:
    """The arm's own target first, then the route's fallback chain, without repeats."""
    chain = [arm.target]
    for target in route.fallback:
        if target not in chain:
            chain.append(target)
    return chain


@dataclass(frozen=True, slots=True)
class Plan:
    """Where one request goes: its route, the user's arm, and the providers to try in order."""

    route: Route
    arm: Arm
    user: UserKey
    targets: tuple[Target, ...]
    total_s: float  # the arm's provider's deadline for the whole request

    @property
    def user_key_hash(self) -> str:
        return user_key_hash(self.route.salt, self.user.value)


def plan(config: Config, model: str, user: UserKey, arm_override: str | None = None,
         live_weights: Callable[[Route], tuple[int, ...] | None] = lambda route: None) -> Plan:
    """Route -> arm (sticky, under the live weights when there are any, or the override header where
    the config allows it) -> candidates.

        >>> from gateway.config import load_config
        >>> p = plan(load_config(), "chat", UserKey("user-42", "user"))
        >>> p.arm.name, [t.provider for t in p.targets]
        ('control', ['mock-control', 'mock-cheap'])
    """
    route = config.routes.get(model)
    if route is None:
        raise GatewayError(404, "model_not_found",
                           f"The model {model!r} does not exist; available: {', '.join(config.public_models())}",
                           param="model")
    arm = choose_arm(route, bucket(route.salt, user.value), live_weights(route))
    if arm_override is not None and config.server.allow_arm_override:
        chosen = next((a for a in route.arms if a.name == arm_override), None)
        if chosen is None:
            raise GatewayError(400, "unknown_arm", f"Route {route.name!r} has no arm {arm_override!r}",
                               param=ARM_OVERRIDE_HEADER)
        arm = chosen
    return Plan(route, arm, user, tuple(candidates(route, arm)), config.providers[arm.provider].timeouts.total_s)
