"""The floor of this runtime: a bare aiohttp byte relay, nothing else (no parsing, no log, no limits).

    python bench/bare_relay.py --upstream http://127.0.0.1:8901 [--port 0]

Every POST goes to the same path on the upstream with its body and its
Content-Type, Accept and X-Mock-* headers; the answer's status, Content-Type
and bytes come back as they arrive. Uses uvloop when it is installed.
Prints "bare relay listening on http://127.0.0.1:PORT" to stderr when ready.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import aiohttp
from aiohttp import web

PASSED = ("content-type", "accept")


async def relay(request: web.Request) -> web.StreamResponse:
    session: aiohttp.ClientSession = request.app["session"]
    headers = {k: v for k, v in request.headers.items() if k.lower() in PASSED or k.lower().startswith("x-mock-")}
    body = await request.read()
    async with session.post(request.app["upstream"] + request.path_qs, data=body, headers=headers) as upstream:
        response = web.StreamResponse(status=upstream.status)
        response.content_type = upstream.content_type
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


async def main(upstream: str, port: int) -> None:
    app = web.Application()
    app["upstream"] = upstream.rstrip("/")
    app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)
    app.router.add_post("/{tail:.*}", relay)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=2048)
    await site.start()
    bound = runner.addresses[0][1]
    loop_name = type(asyncio.get_running_loop()).__module__.split(".")[0]
    print(f"bare relay listening on http://127.0.0.1:{bound} ({loop_name})", file=sys.stderr, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await app["session"].close()
        await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        uvloop = None
    (uvloop.run if uvloop else asyncio.run)(main(args.upstream, args.port))
