"""The `gateway` command: serve | mock-upstream | check-config | report."""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from aiohttp import web

from . import edge
from .config import (
    DEFAULT_CONFIG_PATH,
    Config,
    ConfigError,
    MockServer,
    is_loopback,
    load_config,
    with_overrides,
)
from .config import Server as ServerConfig
from .edge_events import EdgeEvents
from .inflight import InFlight


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["report"]:  # the report has its own argument parser
        from .report import main as report_main

        return report_main(argv[1:])
    parser = argparse.ArgumentParser(prog="gateway", description="Streaming LLM gateway")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway (and the built-in mock if configured)")
    serve.add_argument("--config", default=None, help=f"TOML config (default: {DEFAULT_CONFIG_PATH})")
    serve.add_argument("--host", default=None, help="bind address (overrides [server] host)")
    serve.add_argument("--port", type=int, default=None, help="port (overrides [server] port)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes sharing the port (default 1)")
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a child of --workers

    mock = commands.add_parser("mock-upstream", help="run only the built-in mock provider")
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, default=8901)
    mock.add_argument("--tokens", type=int, default=20)
    mock.add_argument("--first-token-delay-ms", type=float, default=50.0)
    mock.add_argument("--inter-token-delay-ms", type=float, default=20.0)
    mock.add_argument("--record", action="store_true",
                      help="serve GET/DELETE /_mock/requests: what the mock saw, prompts included (for tests)")

    check = commands.add_parser("check-config", help="validate a config file; exit 1 on errors")
    check.add_argument("path", nargs="?", default=None)

    commands.add_parser("report", help="A/B report over request logs (see `gateway report --help`)")

    hash_key = commands.add_parser("hash-key", help="make a gateway API key and the config lines holding its hash")
    hash_key.add_argument("--name", default="client", help="the key's name in the config and the logs")
    hash_key.add_argument("--stdin", action="store_true",
                          help="hash a key read from standard input instead of making a new one")

    args = parser.parse_args(argv)
    if args.command == "hash-key":
        return _hash_key(args.name, sys.stdin.readline().strip() if args.stdin else None)
    if args.command == "mock-upstream":
        settings = MockServer(host=args.host, port=args.port, tokens=args.tokens,
                              first_token_delay_ms=args.first_token_delay_ms,
                              inter_token_delay_ms=args.inter_token_delay_ms, record_requests=args.record)
        return _run(_serve_mock_only(settings))
    try:
        config = load_config(args.config if args.command == "serve" else args.path)
    except ConfigError as exc:
        print(f"configuration error{'s' if len(exc.problems) > 1 else ''}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    if args.command == "check-config":
        if refusal := config.open_problem():
            print(f"configuration error:\n  {refusal}", file=sys.stderr)
            return 1
        print(f"{config.source}: ok ({len(config.providers)} providers, {len(config.routes)} routes)")
        return 0
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    config = with_overrides(config, host=args.host, port=args.port)
    workers = int(os.environ.get("GATEWAY_WORKERS", "1")) if args.worker else args.workers
    if refusal := config.open_problem() or config.resume.problem(workers=workers, redis=bool(config.store.redis_url)):
        print(f"configuration error:\n  {refusal}", file=sys.stderr)
        return 1
    if not config.auth.enabled and not args.worker:
        where = "loopback only" if is_loopback(config.server.host) else "allow_open = true"
        print(f"gateway runs open: no gateway keys are configured ({where}); anyone who can connect may use it",
              file=sys.stderr, flush=True)
    return _run(_serve(config, workers=args.workers, worker=args.worker))


def _hash_key(name: str, key: str | None) -> int:
    from .keys import hash_key, new_key

    if key is not None and len(key) < 16:
        print("a gateway key must be at least 16 characters (make one with `gateway hash-key`)", file=sys.stderr)
        return 1
    if key is None:
        key = new_key()
        print(f"# the key, for the client (shown once, stored nowhere): {key}")
    print(f'[[auth.keys]]\nname = "{name}"\nhash = "{hash_key(key)}"\n'
          '# routes = ["chat"]    # the public models it may use (default: all)\n'
          "# rpm = 600            # requests per minute\n"
          "# tpm = 200000         # tokens per minute\n"
          "# max_concurrent = 20  # requests in flight")
    return 0


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            return runner.run(coro)
    except KeyboardInterrupt:
        return 0


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (the `fast` extra), else asyncio's.
    `GATEWAY_LOOP=asyncio` asks for asyncio's even then; `GATEWAY_LOOP=uvloop` for uvloop's or
    an error."""
    wanted = os.environ.get("GATEWAY_LOOP", "").strip().lower()
    if wanted not in ("", "asyncio", "uvloop"):
        raise SystemExit(f"GATEWAY_LOOP must be asyncio or uvloop, not {wanted!r}")
    if wanted == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if wanted == "uvloop":
            raise SystemExit("GATEWAY_LOOP=uvloop, but uvloop is not installed: pip install 'llm-gateway[fast]'") \
                from None
        return None
    return uvloop.new_event_loop


def loop_name() -> str:
    return type(asyncio.get_running_loop()).__module__.partition(".")[0]


async def _wait_for_signal() -> signal.Signals:
    """The first SIGINT or SIGTERM. Later ones change nothing: a shutdown, once begun, drains
    (with `--workers`, Ctrl-C reaches each worker twice: from the terminal and from the parent)."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[signal.Signals] = loop.create_future()

    def note(sig: signal.Signals) -> None:
        if not received.done():
            received.set_result(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, note, sig)
    return await received


@asynccontextmanager
async def _mock_server(settings: MockServer) -> AsyncIterator[int]:
    from .mock import MockProfile, start_mock

    default = MockProfile(tokens=settings.tokens, first_token_delay_ms=settings.first_token_delay_ms,
                          inter_token_delay_ms=settings.inter_token_delay_ms)
    profiles = {name: MockProfile(**{"tokens": settings.tokens, **values})  # type: ignore[arg-type]
                for name, values in settings.profiles.items()}
    runner, port = await start_mock(settings.host, settings.port, profiles, default,
                                    record_requests=settings.record_requests)
    if settings.record_requests:
        print(f"mock records requests, prompts included, at http://{settings.host}:{port}/_mock/requests",
              file=sys.stderr, flush=True)
    try:
        yield port
    finally:
        await runner.cleanup()


async def _serve_mock_only(settings: MockServer) -> int:
    async with _mock_server(settings) as port:
        print(f"mock provider on http://{settings.host}:{port} (OpenAI: /v1/chat/completions, "
              f"Anthropic: /v1/messages)", file=sys.stderr, flush=True)
        await _wait_for_signal()
    return 0


async def _serve(config: Config, *, workers: int = 1, worker: bool = False) -> int:
    async with AsyncExitStack() as stack:
        if config.mock is not None and not worker:  # workers share their parent's mock
            port = await stack.enter_async_context(_mock_server(config.mock))
            print(f"built-in mock provider on http://{config.mock.host}:{port}", file=sys.stderr, flush=True)
        if workers > 1:
            return await _supervise(config, workers)
        await _serve_one(config, reuse_port=worker)
    return 0


def _on_sighup(reload: Callable[[], None]) -> None:
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)


async def _serve_one(config: Config, *, reuse_port: bool) -> None:
    from .app import IN_FLIGHT, LOG, build_app, reload

    server = config.server
    role = f"worker {os.getpid()}" if reuse_port else "gateway"

    def say(line: str) -> None:  # workers share the parent's stderr: each line says whose it is
        _say(f"{role}: {line}" if reuse_port else line)

    before, fd_limit = edge.raise_open_file_limit()
    # The built-in mock, if it runs in this process, holds the other end of every upstream connection.
    upstream_fds = sum(p.max_connections for p in config.providers.values()) * (2 if config.mock else 1)
    cap = edge.connection_cap(server.max_connections, fd_limit, upstream_fds)
    say(f"event loop {loop_name()}; open-file limit {fd_limit}"
        + (f" (raised from {before})" if fd_limit != before else "")
        + f"; at most {cap} client connections"
        + (f" (server.max_connections {server.max_connections} does not fit beside {upstream_fds} upstream "
           "connections)" if cap < server.max_connections else ""))
    workers = int(os.environ.get("GATEWAY_WORKERS", "1"))  # set by the parent of --workers N
    app = build_app(config, workers=workers)
    events = EdgeEvents(lambda kind, fields: app[LOG].event(kind, **fields))
    runner = edge.EdgeRunner(app, edge.Limits.of(server, cap), events, shutdown_timeout=CUT_GRACE_S)
    await runner.setup()
    try:
        site = web.TCPSite(runner, server.host, server.port, reuse_port=reuse_port)
        await site.start()
        host, port = runner.addresses[0][:2]
        _say(f"{role} listening on http://{host}:{port}")
        if not reuse_port:
            _print_demo_url(host, port)
        asyncio.get_running_loop().set_exception_handler(_quiet_accept_errors(events))

        def reload_file() -> None:  # SIGHUP: the file again, for the requests to come (reload.py)
            try:
                new = with_overrides(load_config(config.source), host=server.host, port=server.port)
            except ConfigError as exc:
                say(f"SIGHUP: reload refused, {config.source} has problems: " + "; ".join(exc.problems))
                return
            refused = reload(app, new, workers)
            say(f"SIGHUP: reload refused: {refused}" if refused else f"SIGHUP: reloaded {config.source}")

        _on_sighup(reload_file)
        await _wait_for_signal()
        await _drain(runner, site, app[IN_FLIGHT], server, say)
    finally:
        await runner.cleanup()
    say("stopped")


CUT_GRACE_S = 2.0  # after the drain window: for cut streams to write their error event and log line


async def _drain(runner: edge.EdgeRunner, site: web.TCPSite, in_flight: InFlight, server: ServerConfig,
                 say: Callable[[str], None]) -> None:
    """Graceful shutdown: /readyz 503 while still accepting, then stop accepting, then the drain
    window for what is in flight, then the rest are cut (an error event, or a 503)."""
    in_flight.draining = True
    say(f"shutting down: /readyz answers 503, still accepting for {server.drain_delay_s:g}s")
    await asyncio.sleep(server.drain_delay_s)  # for a load balancer to take this instance out
    await site.stop()
    idle = runner.edge.close_idle()
    say(f"stopped accepting (closed {idle} idle connections); {len(in_flight)} requests in flight, "
        f"waiting up to {server.drain_timeout_s:g}s")
    if not await in_flight.wait_released(server.drain_timeout_s):
        say(f"drain window over: ending {len(in_flight)} requests with gateway_shutting_down")
    in_flight.cut()  # and nothing is admitted any more, should a late request slip in on an open connection
    await in_flight.wait_released(CUT_GRACE_S)


def _quiet_accept_errors(events: EdgeEvents) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """asyncio logs a traceback for every failed accept (EMFILE: up to 128 a loop turn). The cap
    keeps the open-file limit out of reach; should it be reached anyway, one throttled line.
    (uvloop never reports it: libuv accepts and closes the surplus connections itself.)"""
    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if context.get("message") == "socket.accept() out of system resource" and isinstance(exc, OSError):
            events("accept_failed", peer=None, status=None, error_code=errno.errorcode.get(exc.errno or 0),
                   error_message=exc.strerror)
        else:
            loop.default_exception_handler(context)
    return handle


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _print_demo_url(host: str, port: int) -> None:
    # What a new user opens first; a wildcard bind is reached through loopback.
    shown = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, f"[{host}]" if ":" in host else host)
    print(f"open http://{shown}:{port}/ in a browser for the streaming demo", file=sys.stderr, flush=True)


async def _supervise(config: Config, workers: int) -> int:
    """Run `workers` processes on one port (SO_REUSEPORT: the kernel spreads connections).

    The port is reserved here first, so `--port 0` works too. Workers share the
    Prometheus multiprocess directory, so any worker's /metrics covers them all.
    SIGINT or SIGTERM is passed on to every worker; each drains, and the parent
    exits 0 once every one has exited 0.
    """
    reserve = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserve.bind((config.server.host, config.server.port))  # bound, never listening: gets no connections
    port = reserve.getsockname()[1]
    env = dict(os.environ, GATEWAY_WORKERS=str(workers))
    metrics_dir = None
    if not env.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
        env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    args = [sys.executable, "-m", "gateway", "serve", "--worker", "--config", config.source,
            "--host", config.server.host, "--port", str(port)]
    procs = [await asyncio.create_subprocess_exec(*args, env=env, stderr=asyncio.subprocess.PIPE)
             for _ in range(workers)]
    try:
        ready = 0
        for proc in procs:  # each worker says when it listens; pass its other lines through
            assert proc.stderr is not None
            while line := await proc.stderr.readline():
                sys.stderr.buffer.write(line)
                if b" listening on " in line:
                    ready += 1
                    break
        if ready < workers:
            _say(f"only {ready} of {workers} workers started")
            return 1
        forwarding = [asyncio.create_task(_forward(proc)) for proc in procs]

        def pass_sighup() -> None:  # every worker reloads the file itself
            for proc in procs:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGHUP)

        _on_sighup(pass_sighup)
        _say(f"gateway listening on http://{config.server.host}:{port} ({workers} workers)")
        _print_demo_url(config.server.host, port)
        received = await _wait_for_signal()
        for proc in procs:  # each worker drains on its own (cli._drain); the parent waits for every one
            if proc.returncode is None:
                proc.send_signal(received)
        budget = config.server.drain_delay_s + config.server.drain_timeout_s + 2 * CUT_GRACE_S + 10
        try:
            async with asyncio.timeout(budget):
                codes = await asyncio.gather(*(proc.wait() for proc in procs))
        except TimeoutError:
            _say(f"workers still running {budget:g}s after {received.name}: killed")
            return 1
        await asyncio.gather(*forwarding)  # their last lines, up to "stopped"
        failed = [f"worker {proc.pid} exited with {code}" for proc, code in zip(procs, codes) if code != 0]
        if failed:
            _say("; ".join(failed))
            return 1
        return 0
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
        await asyncio.gather(*(proc.wait() for proc in procs))
        reserve.close()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


async def _forward(proc: asyncio.subprocess.Process) -> None:
    assert proc.stderr is not None
    while line := await proc.stderr.readline():
        sys.stderr.buffer.write(line)
        sys.stderr.flush()
