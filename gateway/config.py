"""Configuration: a TOML file read into frozen dataclasses.

Every problem in the file is collected and reported together, each with the
file, the key path and what was expected, so one run of `gateway
check-config` shows everything to fix. API keys never live in the file: it
names an environment variable (`api_key_env`) and the key is read from there.

    >>> cfg = load_config(DEFAULT_CONFIG_PATH)
    >>> sorted(cfg.routes) == sorted(cfg.public_models())
    True
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config" / "gateway.toml"
# An installed (non-editable) copy carries the default config inside the package.
if not DEFAULT_CONFIG_PATH.exists():  # pragma: no cover - depends on install mode
    DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent / "default.toml"

DIALECTS = ("openai", "anthropic")
MIN_EVENT_BYTES = 1024  # below this, ordinary chunks with usage would not fit
BASIS_POINTS = 10_000


class ConfigError(Exception):
    """The configuration is invalid; `problems` lists every finding."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect_s: float = 5.0
    first_token_s: float = 30.0
    idle_s: float = 30.0
    total_s: float = 600.0
    pool_s: float = 5.0  # the longest wait for a free connection of the provider's pool


@dataclass(frozen=True, slots=True)
class Retry:
    attempts: int = 2  # attempts on one provider before falling back
    backoff_base_ms: float = 100.0
    backoff_cap_ms: float = 2_000.0


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    dialect: str
    base_url: str
    api_key: str | None = field(default=None, repr=False)
    api_key_env: str | None = None
    max_connections: int = 100
    keepalive_s: float = 30.0
    anthropic_version: str = "2023-06-01"
    default_max_tokens: int = 1024
    forward_headers: tuple[str, ...] = ()  # lower-case prefixes of client headers passed upstream
    timeouts: Timeouts = Timeouts()
    retry: Retry = Retry()


@dataclass(frozen=True, slots=True)
class Target:
    provider: str
    model: str


@dataclass(frozen=True, slots=True)
class Arm:
    name: str
    provider: str
    model: str
    weight_bp: int  # share of users in basis points (1/10,000)

    @property
    def target(self) -> Target:
        return Target(self.provider, self.model)


@dataclass(frozen=True, slots=True)
class Hedge:
    """Hedged first token (hedge.py): start the next candidate too when the arm is slow to its first token."""

    after_ms: float | None = None  # None: adaptive, the arm's live TTFT p95 (`after_ms = "p95"`)
    budget_percent: float = 10.0  # hedges as a share of the route's requests over the window
    budget_window_s: float = 60.0
    floor_ms: float = 100.0  # adaptive: never hedge sooner than this
    warmup_ms: float = 1000.0  # adaptive: the delay until `min_samples` first tokens were seen
    min_samples: int = 20
    window: int = 500  # adaptive: the p95 is over the arm's last this many first tokens


@dataclass(frozen=True, slots=True)
class Guard:
    """Live canary guard (guard.py): a non-control arm proven worse than the control goes to weight 0."""

    confidence: float = 0.99  # 1 - the chance that an arm as good as the control ever trips


@dataclass(frozen=True, slots=True)
class Route:
    name: str  # the public model name clients ask for
    salt: str  # experiment salt: change it to reshuffle users
    arms: tuple[Arm, ...]
    fallback: tuple[Target, ...] = ()
    hedge: Hedge | None = None
    guard: Guard | None = None


@dataclass(frozen=True, slots=True)
class Price:
    input_per_mtok: float
    output_per_mtok: float


@dataclass(frozen=True, slots=True)
class MockServer:
    host: str = "127.0.0.1"
    port: int = 8901
    tokens: int = 20
    first_token_delay_ms: float = 50.0
    inter_token_delay_ms: float = 20.0
    profiles: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    record_requests: bool = False  # serve /_mock/requests (holds prompts, never keys): for tests only


@dataclass(frozen=True, slots=True)
class Server:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 1_048_576
    max_event_bytes: int = 16 * 1024 * 1024  # an upstream SSE event past this is an error: bounded memory
    heartbeat_s: float = 15.0
    default_route: str | None = None  # for /v1/stream/chat requests without a model
    allow_arm_override: bool = False  # honour X-Gateway-Arm-Override (testing only)
    # Browser origins allowed to call the API from another site. Empty: same
    # origin only (the demo page at / needs no CORS); "*" only when configured.
    cors_origins: tuple[str, ...] = ()
    # Proxies (addresses or CIDRs) whose X-Forwarded-For is believed; empty: nobody's.
    trusted_proxies: tuple[str, ...] = ()
    # The connection edge (gateway/edge.py): what a client may cost before it is a request.
    read_timeout_s: float = 30.0  # a request's head, then its body, must each arrive within this
    keepalive_s: float = 75.0  # idle between requests; above the usual balancer idle timeout (60 s)
    max_connections: int = 10_000  # open client connections per worker (lowered to fit the open-file limit)
    max_streams: int = 1_000  # chat requests in flight per worker; over it a 429
    max_header_count: int = 100
    max_header_line_bytes: int = 8190  # the longest request line, header name or header value
    # Graceful shutdown (cli.py): the defaults fit Kubernetes' default 30 s grace period.
    drain_delay_s: float = 5.0  # /readyz answers 503 while the listener still accepts
    drain_timeout_s: float = 20.0  # then in-flight requests get this long to finish


@dataclass(frozen=True, slots=True)
class Log:
    path: str | None = None  # None: JSON lines on stdout


@dataclass(frozen=True, slots=True)
class GatewayKey:
    """A client key of the gateway: stored only as a salted hash (`gateway hash-key`)."""

    name: str  # what the log line and the metrics say; never the key
    hash: str = field(repr=False)  # "sha256$<salt hex>$<digest hex>"
    routes: tuple[str, ...] = ()  # the public models it may use; empty: all
    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # tokens per minute (prompt + completion)
    max_concurrent: int | None = None  # requests in flight at once


@dataclass(frozen=True, slots=True)
class Auth:
    keys: tuple[GatewayKey, ...] = ()
    allow_open: bool = False  # serve without keys on a non-loopback address (say so, in the file)

    @property
    def enabled(self) -> bool:
        return bool(self.keys)


STORE_FAIL_MODES = ("open", "closed")


@dataclass(frozen=True, slots=True)
class Store:
    """Shared state for limits: in-process (each worker its own share) or Redis (exact across all)."""

    redis_url: str | None = field(default=None, repr=False)  # may hold a password
    on_error: str = "open"  # Redis unreachable: "open" admits requests, "closed" refuses them (503)
    timeout_ms: float = 250.0  # every Redis call; never a hang
    prefix: str = "gateway"


@dataclass(frozen=True, slots=True)
class Resume:
    """Resumable streams (resumable.py): how long an upstream outlives its client, how much is kept."""

    # None: on when resumes can reach the stream (one worker, or a Redis store); True: required
    # (a config error where they cannot); False: requests asking for it are served as before.
    enabled: bool | None = None
    window_s: float = 30.0  # the issue's `resume_window_s`: the upstream runs on this long without a client
    max_bytes_per_stream: int = 4 * 1024 * 1024  # events stored per stream (ids included); past it, cut

    def active(self, *, workers: int, redis: bool) -> bool:
        return self.enabled is not False and (workers == 1 or redis)

    def problem(self, *, workers: int, redis: bool) -> str | None:
        """Why this setting cannot run with `workers` processes, or None."""
        if self.enabled and workers > 1 and not redis:
            return (f"resume.enabled: resumable streams with {workers} workers need a shared event log: "
                    "set [store] redis_url, or run one worker, or set enabled = false")
        return None


@dataclass(frozen=True, slots=True)
class Admin:
    """The admin API (/admin/...): off unless the environment variable `key_env` names holds a key."""

    key: str | None = field(default=None, repr=False)
    key_env: str | None = None


@dataclass(frozen=True, slots=True)
class Config:
    source: str
    server: Server
    log: Log
    providers: Mapping[str, Provider]
    routes: Mapping[str, Route]
    pricing: Mapping[str, Price]
    mock: MockServer | None = None
    auth: Auth = Auth()
    store: Store = Store()
    resume: Resume = Resume()
    admin: Admin = Admin()

    def public_models(self) -> list[str]:
        return list(self.routes)

    def default_model(self) -> str:
        """The route for requests that name none (the browser stream)."""
        return self.server.default_route or next(iter(self.routes))

    def secrets(self) -> list[str]:
        found = [p.api_key for p in self.providers.values() if p.api_key]
        if self.admin.key:
            found.append(self.admin.key)
        if self.store.redis_url:
            found.append(self.store.redis_url)
            password = urlsplit(self.store.redis_url).password
            if password:
                found.append(password)
        return found

    def open_problem(self) -> str | None:
        """Why this config must not serve as it is: no gateway keys on a non-loopback address."""
        if self.auth.enabled or self.auth.allow_open or is_loopback(self.server.host):
            return None
        return (f"{self.source}: auth: no gateway keys, and server.host {self.server.host!r} is not a loopback "
                "address: anyone who can reach it would spend the providers' keys. Add [[auth.keys]] "
                "(see `gateway hash-key`), or write `allow_open = true` under [auth] if that is what you want.")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- reading -----------------------------------------------------------------

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               list: "an array", dict: "a table"}


class _Reader:
    """Typed access to one TOML table that records problems instead of raising."""

    def __init__(self, problems: list[str], source: str, path: str, table: Any) -> None:
        self.problems, self.source, self.path = problems, source, path
        self.table = table if isinstance(table, dict) else {}
        self.used: set[str] = set()
        if not isinstance(table, dict):
            self.problem("", f"expected a table, got {_describe(table)}")

    def problem(self, key: str, message: str) -> None:
        where = f"{self.path}.{key}" if self.path and key else (key or self.path or "(top level)")
        self.problems.append(f"{self.source}: {where}: {message}")

    def get(self, key: str, kind: type, default: Any = None, *, required: bool = False) -> Any:
        self.used.add(key)
        if key not in self.table:
            if required:
                self.problem(key, f"missing; expected {_TYPE_NAMES[kind]}")
            return default
        value = self.table[key]
        ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            self.problem(key, f"expected {_TYPE_NAMES[kind]}, got {_describe(value)}")
            return default
        return value

    def number(self, key: str, default: float, *, minimum: float = 0.0, positive: bool = True) -> float:
        value = self.get(key, float, default)
        if positive and not value > minimum:
            self.problem(key, f"expected a number greater than {minimum:g}, got {value!r}")
            return default
        if not positive and not value >= minimum:
            self.problem(key, f"expected a number >= {minimum:g}, got {value!r}")
            return default
        return value

    def integer(self, key: str, default: int, *, minimum: int = 1) -> int:
        value = self.get(key, int, default)
        if value < minimum:
            self.problem(key, f"expected an integer >= {minimum}, got {value!r}")
            return default
        return value

    def strings(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self.get(key, list, None)
        if value is None:
            return default
        if not all(isinstance(v, str) for v in value):
            self.problem(key, "expected an array of strings")
            return default
        return tuple(value)

    def sub(self, key: str) -> _Reader:
        self.used.add(key)
        child = f"{self.path}.{key}" if self.path else key
        return _Reader(self.problems, self.source, child, self.table.get(key, {}))

    def finish(self) -> None:
        for key in self.table:
            if key not in self.used:
                self.problem(key, "unknown key")


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if not isinstance(value, (dict, list)) else type(value).__name__


def load_config(path: str | os.PathLike[str] | None = None,
                environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file; raise ConfigError listing every problem."""
    path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    source = str(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{source}: file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{source}: cannot read: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: not valid TOML: {exc}"]) from None
    return parse_config(raw, source, os.environ if environ is None else environ)


def parse_config(raw: dict[str, Any], source: str, environ: Mapping[str, str]) -> Config:
    problems: list[str] = []
    top = _Reader(problems, source, "", raw)
    server = _server(top.sub("server"))
    log = _log(top.sub("log"))
    mock = _mock(top.sub("mock")) if "mock" in raw else None
    top.used.add("mock")
    providers = _providers(top.sub("providers"), environ)
    routes = _routes(top.sub("routes"), providers)
    pricing = _pricing(top.sub("pricing"))
    auth = _auth(top.sub("auth"), routes)
    store = _store(top.sub("store"))
    resume = _resume(top.sub("resume"))
    admin = _admin(top.sub("admin"), environ)
    top.finish()
    if not routes and not problems:
        problems.append(f"{source}: routes: at least one route is required")
    if server.default_route is not None and server.default_route not in routes:
        problems.append(f"{source}: server.default_route: no route named {server.default_route!r}")
    if problems:
        raise ConfigError(problems)
    return Config(source, server, log, providers, routes, pricing, mock, auth, store, resume, admin)


def _server(r: _Reader) -> Server:
    d = Server()
    port = r.get("port", int, d.port)
    if not 0 <= port <= 65535:
        r.problem("port", f"expected a TCP port 0..65535, got {port}")
    s = Server(
        host=r.get("host", str, d.host),
        port=port,
        max_body_bytes=r.integer("max_body_bytes", d.max_body_bytes),
        max_event_bytes=r.integer("max_event_bytes", d.max_event_bytes, minimum=MIN_EVENT_BYTES),
        heartbeat_s=r.number("heartbeat_s", d.heartbeat_s),
        default_route=r.get("default_route", str, None),
        allow_arm_override=r.get("allow_arm_override", bool, False),
        cors_origins=_origins(r, "cors_origins", d.cors_origins),
        trusted_proxies=_networks(r, "trusted_proxies", d.trusted_proxies),
        read_timeout_s=r.number("read_timeout_s", d.read_timeout_s),
        keepalive_s=r.number("keepalive_s", d.keepalive_s),
        max_connections=r.integer("max_connections", d.max_connections),
        max_streams=r.integer("max_streams", d.max_streams),
        max_header_count=r.integer("max_header_count", d.max_header_count),
        max_header_line_bytes=r.integer("max_header_line_bytes", d.max_header_line_bytes, minimum=256),
        drain_delay_s=r.number("drain_delay_s", d.drain_delay_s, positive=False),
        drain_timeout_s=r.number("drain_timeout_s", d.drain_timeout_s, positive=False),
    )
    r.finish()
    return s


# What a browser sends as Origin: scheme, host, optional port; nothing else.
_ORIGIN = re.compile(r"https?://[^/?#\s]+")


def _origins(r: _Reader, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    origins = r.strings(key, default)
    for origin in origins:
        # A path or trailing slash would never equal an Origin header: the page would be refused in silence.
        if origin != "*" and not _ORIGIN.fullmatch(origin):
            r.problem(key, f"expected \"*\" or origins like \"https://app.example.com\" (scheme://host[:port], "
                           f"no path), got {origin!r}")
    return origins


def _networks(r: _Reader, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    networks = r.strings(key, default)
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            r.problem(key, f"expected IP addresses or CIDR networks, got {network!r}")
    return networks


def _log(r: _Reader) -> Log:
    path = r.get("path", str, None)
    r.finish()
    return Log(path=path or None)


def _mock(r: _Reader) -> MockServer:
    d = MockServer()
    profiles: dict[str, dict[str, float]] = {}
    pr = r.sub("profiles")
    for name in pr.table:
        pr.used.add(name)
        p = pr.sub(name)
        profiles[name] = {
            "tokens": p.integer("tokens", d.tokens),
            "first_token_delay_ms": p.number("first_token_delay_ms", d.first_token_delay_ms, positive=False),
            "inter_token_delay_ms": p.number("inter_token_delay_ms", d.inter_token_delay_ms, positive=False),
        }
        p.finish()
    m = MockServer(
        host=r.get("host", str, d.host),
        port=r.get("port", int, d.port),
        tokens=r.integer("tokens", d.tokens),
        first_token_delay_ms=r.number("first_token_delay_ms", d.first_token_delay_ms, positive=False),
        inter_token_delay_ms=r.number("inter_token_delay_ms", d.inter_token_delay_ms, positive=False),
        profiles=profiles,
        record_requests=r.get("record_requests", bool, d.record_requests),
    )
    r.finish()
    return m


def _providers(r: _Reader, environ: Mapping[str, str]) -> dict[str, Provider]:
    providers: dict[str, Provider] = {}
    for name in r.table:
        r.used.add(name)
        providers[name] = _provider(name, r.sub(name), environ)
    return providers


def _provider(name: str, r: _Reader, environ: Mapping[str, str]) -> Provider:
    d = Provider(name=name, dialect="openai", base_url="")
    dialect = r.get("dialect", str, "openai", required=True)
    if dialect not in DIALECTS:
        r.problem("dialect", f"expected one of {', '.join(DIALECTS)}, got {dialect!r}")
    base_url = r.get("base_url", str, "", required=True)
    if base_url and not base_url.startswith(("http://", "https://")):
        r.problem("base_url", f"expected an http:// or https:// URL, got {base_url!r}")
    key_env = r.get("api_key_env", str, None) or None
    api_key = None
    if key_env is not None:
        api_key = environ.get(key_env)
        if not api_key:
            r.problem("api_key_env", f"environment variable {key_env} is not set (it should hold the API key)")
    t, rt, dt, dr = r.sub("timeouts"), r.sub("retry"), Timeouts(), Retry()
    timeouts = Timeouts(
        connect_s=t.number("connect_s", dt.connect_s),
        first_token_s=t.number("first_token_s", dt.first_token_s),
        idle_s=t.number("idle_s", dt.idle_s),
        total_s=t.number("total_s", dt.total_s),
        pool_s=t.number("pool_s", dt.pool_s),
    )
    retry = Retry(
        attempts=rt.integer("attempts", dr.attempts),
        backoff_base_ms=rt.number("backoff_base_ms", dr.backoff_base_ms, positive=False),
        backoff_cap_ms=rt.number("backoff_cap_ms", dr.backoff_cap_ms, positive=False),
    )
    t.finish()
    rt.finish()
    p = Provider(
        name=name,
        dialect=dialect,
        base_url=base_url.rstrip("/"),
        api_key=api_key,
        api_key_env=key_env,
        max_connections=r.integer("max_connections", d.max_connections),
        keepalive_s=r.number("keepalive_s", d.keepalive_s),
        anthropic_version=r.get("anthropic_version", str, d.anthropic_version),
        default_max_tokens=r.integer("default_max_tokens", d.default_max_tokens),
        forward_headers=tuple(h.lower() for h in r.strings("forward_headers")),
        timeouts=timeouts,
        retry=retry,
    )
    r.finish()
    return p


def _target(r: _Reader, providers: Mapping[str, Provider]) -> tuple[str, str]:
    provider = r.get("provider", str, "", required=True)
    model = r.get("model", str, "", required=True)
    if provider and provider not in providers:
        known = ", ".join(sorted(providers)) or "none defined"
        r.problem("provider", f"unknown provider {provider!r} (known: {known})")
    return provider, model


def _routes(r: _Reader, providers: Mapping[str, Provider]) -> dict[str, Route]:
    routes: dict[str, Route] = {}
    for name in r.table:
        r.used.add(name)
        rr = r.sub(name)
        arms = _arms(rr, providers)
        fallback = []
        for i, item in enumerate(rr.get("fallback", list, [])):
            fr = _Reader(rr.problems, rr.source, f"{rr.path}.fallback[{i}]", item)
            fallback.append(Target(*_target(fr, providers)))
            fr.finish()
        hedge = _hedge(rr.sub("hedge")) if "hedge" in rr.table else None
        guard = _guard(rr.sub("guard")) if "guard" in rr.table else None
        rr.used.update(("hedge", "guard"))
        if hedge is not None and not fallback:
            rr.problem("hedge", "a hedge starts the next candidate of the fallback list, and it is empty")
        routes[name] = Route(name=name, salt=rr.get("salt", str, name), arms=tuple(arms),
                             fallback=tuple(fallback), hedge=hedge, guard=guard)
        rr.finish()
    return routes


def _hedge(r: _Reader) -> Hedge:
    d = Hedge()
    after: float | None = None
    raw = r.table.get("after_ms")
    r.used.add("after_ms")
    if raw == "p95":
        after = None
    elif isinstance(raw, (int, float)) and not isinstance(raw, bool) and raw > 0:
        after = float(raw)
    else:
        r.problem("after_ms", f"expected a number of milliseconds greater than 0, or \"p95\", got {raw!r}")
    percent = r.number("budget_percent", d.budget_percent)
    if percent > 100:
        r.problem("budget_percent", f"expected a percentage in (0, 100], got {percent!r}")
    h = Hedge(after_ms=after, budget_percent=percent,
              budget_window_s=r.number("budget_window_s", d.budget_window_s),
              floor_ms=r.number("floor_ms", d.floor_ms, positive=False),
              warmup_ms=r.number("warmup_ms", d.warmup_ms),
              min_samples=r.integer("min_samples", d.min_samples),
              window=r.integer("window", d.window))
    r.finish()
    return h


def _guard(r: _Reader) -> Guard:
    d = Guard()
    confidence = r.number("confidence", d.confidence)
    if not 0.5 <= confidence < 1:
        r.problem("confidence", f"expected a number in [0.5, 1), got {confidence!r}")
        confidence = d.confidence
    g = Guard(confidence=confidence)
    r.finish()
    return g


def _admin(r: _Reader, environ: Mapping[str, str]) -> Admin:
    key_env = r.get("key_env", str, None) or None
    key = environ.get(key_env) or None if key_env else None
    if key_env is not None and key is None:
        r.problem("key_env", f"environment variable {key_env} is not set (it should hold the admin key)")
    r.finish()
    return Admin(key=key, key_env=key_env)


def _arms(rr: _Reader, providers: Mapping[str, Provider]) -> list[Arm]:
    raw_arms = rr.get("arms", list, [], required=True)
    if "arms" in rr.table and not raw_arms:
        rr.problem("arms", "expected at least one arm")
    arms: list[tuple[str, str, str, float]] = []
    seen: set[str] = set()
    for i, item in enumerate(raw_arms):
        ar = _Reader(rr.problems, rr.source, f"{rr.path}.arms[{i}]", item)
        name = ar.get("name", str, f"arm{i}", required=True)
        if name in seen:
            ar.problem("name", f"duplicate arm name {name!r}")
        seen.add(name)
        provider, model = _target(ar, providers)
        weight = ar.get("weight", float, 0.0, required=True)
        if weight < 0 or not math.isfinite(weight):
            ar.problem("weight", f"expected a non-negative number, got {weight!r}")
        arms.append((name, provider, model, weight))
        ar.finish()
    total = sum(a[3] for a in arms)
    if not arms:
        return []
    # Weights are percentages (summing to 100) or basis points (summing to 10,000).
    if math.isclose(total, 100.0):
        scale = 100
    elif math.isclose(total, float(BASIS_POINTS)):
        scale = 1
    else:
        rr.problem("arms", f"weights must sum to 100 (percent) or 10000 (basis points), got {total:g}")
        return [Arm(n, p, m, 0) for n, p, m, _ in arms]
    result = []
    for i, (n, p, m, w) in enumerate(arms):
        bp = w * scale
        if not math.isclose(bp, round(bp)):
            rr.problem(f"arms[{i}].weight", f"{w:g} is finer than one basis point (0.01%)")
        result.append(Arm(n, p, m, round(bp)))
    return result


KEY_HASH = re.compile(r"sha256\$[0-9a-f]{32}\$[0-9a-f]{64}")


def _auth(r: _Reader, routes: Mapping[str, Route]) -> Auth:
    keys: list[GatewayKey] = []
    names: set[str] = set()
    for i, item in enumerate(r.get("keys", list, [])):
        kr = _Reader(r.problems, r.source, f"{r.path}.keys[{i}]", item)
        name = kr.get("name", str, f"key{i}", required=True)
        if name in names:
            kr.problem("name", f"duplicate key name {name!r}")
        names.add(name)
        digest = kr.get("hash", str, "", required=True)
        if digest and not KEY_HASH.fullmatch(digest):
            kr.problem("hash", "expected sha256$<32 hex salt>$<64 hex digest>, as `gateway hash-key` prints it "
                               "(never the key itself)")
        allowed = kr.strings("routes")
        for route in allowed:
            if route not in routes:
                kr.problem("routes", f"no route named {route!r}")
        limits = {k: kr.integer(k, 0) if k in kr.table else None for k in ("rpm", "tpm", "max_concurrent")}
        keys.append(GatewayKey(name, digest, allowed, **limits))
        kr.finish()
    auth = Auth(keys=tuple(keys), allow_open=r.get("allow_open", bool, False))
    r.finish()
    return auth


def _store(r: _Reader) -> Store:
    d = Store()
    url = r.get("redis_url", str, None) or None
    if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
        r.problem("redis_url", "expected a redis://, rediss:// or unix:// URL")
    on_error = r.get("on_error", str, d.on_error)
    if on_error not in STORE_FAIL_MODES:
        r.problem("on_error", f"expected one of {', '.join(STORE_FAIL_MODES)}, got {on_error!r}")
    store = Store(redis_url=url, on_error=on_error, timeout_ms=r.number("timeout_ms", d.timeout_ms),
                  prefix=r.get("prefix", str, d.prefix))
    r.finish()
    return store


def _resume(r: _Reader) -> Resume:
    d = Resume()
    resume = Resume(enabled=r.get("enabled", bool, d.enabled), window_s=r.number("window_s", d.window_s),
                    max_bytes_per_stream=r.integer("max_bytes_per_stream", d.max_bytes_per_stream,
                                                   minimum=MIN_EVENT_BYTES))
    r.finish()
    return resume


def _pricing(r: _Reader) -> dict[str, Price]:
    prices: dict[str, Price] = {}
    for model in r.table:
        r.used.add(model)
        pr = r.sub(model)
        prices[model] = Price(
            input_per_mtok=pr.number("input_per_mtok", 0.0, positive=False),
            output_per_mtok=pr.number("output_per_mtok", 0.0, positive=False),
        )
        pr.finish()
    return prices


def with_overrides(cfg: Config, *, host: str | None = None, port: int | None = None) -> Config:
    """Apply command-line flags, which win over the file."""
    server = replace(cfg.server, host=host or cfg.server.host,
                     port=cfg.server.port if port is None else port)
    return replace(cfg, server=server)
