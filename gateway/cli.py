"""The `gateway` command: serve | mock-upstream | check-config | report."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import AsyncIterator

from aiohttp import web

from .config import DEFAULT_CONFIG_PATH, Config, ConfigError, MockServer, load_config, with_overrides


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

    mock = commands.add_parser("mock-upstream", help="run only the built-in mock provider")
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, default=8901)
    mock.add_argument("--tokens", type=int, default=20)
    mock.add_argument("--first-token-delay-ms", type=float, default=50.0)
    mock.add_argument("--inter-token-delay-ms", type=float, default=20.0)

    check = commands.add_parser("check-config", help="validate a config file; exit 1 on errors")
    check.add_argument("path", nargs="?", default=None)

    commands.add_parser("report", help="A/B report over request logs (see `gateway report --help`)")

    args = parser.parse_args(argv)
    if args.command == "mock-upstream":
        settings = MockServer(host=args.host, port=args.port, tokens=args.tokens,
                              first_token_delay_ms=args.first_token_delay_ms,
                              inter_token_delay_ms=args.inter_token_delay_ms)
        return _run(_serve_mock_only(settings))
    try:
        config = load_config(args.config if args.command == "serve" else args.path)
    except ConfigError as exc:
        print(f"configuration error{'s' if len(exc.problems) > 1 else ''}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    if args.command == "check-config":
        print(f"{config.source}: ok ({len(config.providers)} providers, {len(config.routes)} routes)")
        return 0
    return _run(_serve(with_overrides(config, host=args.host, port=args.port)))


def _run(coro: object) -> int:
    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except KeyboardInterrupt:
        return 0


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _start_mock(settings: MockServer) -> AsyncIterator[int]:
    from .mock import MockProfile, start_mock

    default = MockProfile(tokens=settings.tokens, first_token_delay_ms=settings.first_token_delay_ms,
                          inter_token_delay_ms=settings.inter_token_delay_ms)
    profiles = {name: MockProfile(**{"tokens": settings.tokens, **values})  # type: ignore[arg-type]
                for name, values in settings.profiles.items()}
    runner, port = await start_mock(settings.host, settings.port, profiles, default)
    try:
        yield port
    finally:
        await runner.cleanup()


async def _serve_mock_only(settings: MockServer) -> int:
    async for port in _start_mock(settings):
        print(f"mock provider on http://{settings.host}:{port} (OpenAI: /v1/chat/completions, "
              f"Anthropic: /v1/messages)", file=sys.stderr, flush=True)
        await _wait_for_signal()
    return 0


async def _serve(config: Config) -> int:
    from .app import build_app

    mock = _start_mock(config.mock) if config.mock else None
    if mock is not None:
        port = await anext(mock)
        print(f"built-in mock provider on http://{config.mock.host}:{port}", file=sys.stderr, flush=True)  # type: ignore[union-attr]
    # handler_cancellation: a client that goes away cancels its handler, which
    # closes the upstream request at once (see relay.py).
    runner = web.AppRunner(build_app(config), handler_cancellation=True, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.server.host, config.server.port)
        await site.start()
        host, port = runner.addresses[0][:2]
        print(f"gateway listening on http://{host}:{port}", file=sys.stderr, flush=True)
        await _wait_for_signal()
    finally:
        await runner.cleanup()
        if mock is not None:
            await mock.aclose()
    return 0
