"""Bare aiohttp servers the scenarios run as separate processes.

python bench/_servers.py file PORT PATH   the baseline of webhook_to_file: parse the JSON body, append it
                                          to PATH (written to the kernel, no fsync), answer 200
python bench/_servers.py target PORT      the receiver of webhook_to_http_latency: note time.time_ns() and
                                          the Idempotency-Key of every POST; GET /records returns them
"""

from __future__ import annotations

import sys
import time
from typing import Any

import orjson
from aiohttp import web

OK = b'{"ok":true}'


def file_app(path: str) -> web.Application:
    out = open(path, "ab")  # noqa: SIM115 - open for the server's lifetime

    async def handle(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        out.write(orjson.dumps(body) + b"\n")
        out.flush()
        return web.Response(status=200, body=OK, content_type="application/json")

    async def close(_: web.Application) -> None:
        out.close()

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_post("/{tail:.*}", handle)
    app.on_cleanup.append(close)
    return app


def target_app() -> web.Application:
    keys: list[str] = []
    times: list[int] = []

    async def receive(request: web.Request) -> web.Response:
        received = time.time_ns()  # as soon as the request's headers are parsed
        await request.read()
        keys.append(request.headers.get("Idempotency-Key", ""))
        times.append(received)
        return web.Response(status=200, body=OK, content_type="application/json")

    async def records(_: web.Request) -> web.Response:
        data: dict[str, Any] = {"keys": keys, "times": times}
        return web.Response(body=orjson.dumps(data), content_type="application/json")

    async def count(_: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps({"count": len(keys)}), content_type="application/json")

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_get("/records", records)
    app.router.add_get("/count", count)
    app.router.add_post("/{tail:.*}", receive)
    return app


def main(argv: list[str]) -> None:
    kind, port = argv[0], int(argv[1])
    app = file_app(argv[2]) if kind == "file" else target_app()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main(sys.argv[1:])
