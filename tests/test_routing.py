"""Sticky, weighted arm assignment."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pytest

from gateway.config import Arm, Route, Target
from gateway.routing import bucket, candidates, choose_arm, pick_user_key, user_key_hash

from .conftest import ROOT

USERS = [f"user-{i}" for i in range(100_000)]


def canary_route(canary_bp: int) -> Route:
    return Route("chat", "exp-salt", (Arm("control", "a", "m1", 10_000 - canary_bp),
                                      Arm("canary", "b", "m2", canary_bp)),
                 fallback=(Target("c", "m3"), Target("a", "m1")))


def assignments(route: Route) -> list[str]:
    return [choose_arm(route, bucket(route.salt, u)).name for u in USERS]


ASSIGN_SCRIPT = """
import hashlib, sys
from gateway.config import Arm, Route
from gateway.routing import bucket, choose_arm
route = Route("chat", "exp-salt", (Arm("control", "a", "m1", 9000), Arm("canary", "b", "m2", 1000)))
names = "".join(choose_arm(route, bucket(route.salt, f"user-{i}")).name[1] for i in range(100_000))
print(hashlib.sha256(names.encode()).hexdigest())
"""


def test_assignment_is_identical_across_processes_with_different_hash_seeds() -> None:
    digests = set()
    for seed in ("1", "2", "random"):
        result = subprocess.run([sys.executable, "-c", ASSIGN_SCRIPT], cwd=ROOT, capture_output=True,
                                text=True, env={**os.environ, "PYTHONHASHSEED": seed}, check=True)
        digests.add(result.stdout.strip())
    assert len(digests) == 1


@pytest.mark.parametrize("canary_bp", [100, 1000, 2000, 5000])
def test_observed_split_is_within_half_a_percent_of_the_weights(canary_bp: int) -> None:
    share = Counter(assignments(canary_route(canary_bp)))["canary"] / len(USERS)
    assert abs(share - canary_bp / 10_000) <= 0.005


def test_raising_the_canary_weight_only_moves_users_into_the_canary() -> None:
    before = assignments(canary_route(1000))
    after = assignments(canary_route(2000))
    moved = Counter((a, b) for a, b in zip(before, after) if a != b)
    assert set(moved) == {("control", "canary")}
    assert all(b == "canary" for a, b in zip(before, after) if a == "canary")


def test_the_salt_reshuffles_users() -> None:
    same = sum(bucket("salt-1", u) == bucket("salt-2", u) for u in USERS[:10_000])
    assert same < 100


def test_buckets_cover_the_whole_range() -> None:
    buckets = [bucket("s", u) for u in USERS]
    assert min(buckets) == 0 and max(buckets) == 9_999


def test_user_key_prefers_body_user_then_header_then_api_key() -> None:
    assert pick_user_key("u1", "h1", "k1").source == "user"
    assert pick_user_key(None, "h1", "k1").source == "header"
    assert pick_user_key("", None, "k1").source == "api_key"
    random_key = pick_user_key(None, None, None)
    assert random_key.source == "random" and random_key != pick_user_key(None, None, None)


def test_logged_user_hash_is_stable_and_not_the_user_id() -> None:
    assert user_key_hash("s", "alice@example.com") == user_key_hash("s", "alice@example.com")
    assert "alice" not in user_key_hash("s", "alice@example.com")
    assert len(user_key_hash("s", "alice@example.com")) == 16


def test_candidates_are_the_arm_then_the_fallback_chain_without_repeats() -> None:
    route = canary_route(1000)
    assert candidates(route, route.arms[0]) == [Target("a", "m1"), Target("c", "m3")]
    assert candidates(route, route.arms[1]) == [Target("b", "m2"), Target("c", "m3"), Target("a", "m1")]
