"""Bare aiohttp servers the scenarios run as separate processes.

python bench/_servers.py file PORT PATH   the baseline of webhook_to_file: parse the JSON body, append it
                                          to PATH (written to the kernel, no fsync), answer 200
python bench/_servers.py target PORT      the receiver of webhook_to_http_latency: note time.time_ns() and
                                          the Idempotency-Key of every POST; GET /records returns them
python bench/_servers.py flaky PORT SEED  the flapping receiver of bench/soak.py: up (200, Idempotency-Key
                                          noted) for 15-25 s, then down for 5-15 s, each outage one of
                                          503 / connection dropped / hanging 5 s then 503, chosen at random
                                          (seeded); GET /steady ends the flapping (up from then on);
                                          GET /records returns the keys answered 200 and what it did
python bench/_servers.py otlp PORT        an OTLP/HTTP collector that keeps nothing, for `run.py --telemetry`:
                                          POST /v1/traces answered 200 with an empty ExportTraceServiceResponse
                                          (the protobuf's empty message is no bytes), the bodies not decoded;
                                          GET /count returns the requests and bytes taken
"""

from __future__ import annotations

import asyncio
import gc
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
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


#: (min, max) seconds of an up phase and of an outage, and how long a hanging request is held
FLAP_UP = (15.0, 25.0)
FLAP_DOWN = (5.0, 15.0)
HANG_SECONDS = 5.0
OUTAGES = ("503", "drop", "hang")


def flaky_app(seed: int) -> web.Application:
    rng = random.Random(seed)
    started = time.monotonic()
    state: dict[str, Any] = {"mode": "up", "until": started + rng.uniform(*FLAP_UP), "steady": False}
    #: (seconds since start, mode, planned seconds): the schedule as it happened
    phases: list[tuple[float, str, float]] = [(0.0, "up", round(state["until"] - started, 1))]
    keys: list[str] = []
    answers: Counter[str] = Counter()

    def mode() -> str:
        now = time.monotonic()
        if not state["steady"] and now >= state["until"]:
            if state["mode"] == "up":
                state["mode"], length = rng.choice(OUTAGES), rng.uniform(*FLAP_DOWN)
            else:
                state["mode"], length = "up", rng.uniform(*FLAP_UP)
            state["until"] = now + length
            phases.append((round(now - started, 1), state["mode"], round(length, 1)))
        return str(state["mode"])

    async def receive(request: web.Request) -> web.Response:
        await request.read()
        current = mode()
        answers[current] += 1
        if current == "up":
            keys.append(request.headers.get("Idempotency-Key", ""))
            return web.Response(status=200, body=OK, content_type="application/json")
        if current == "drop":
            assert request.transport is not None
            request.transport.close()  # the client sees the connection go away without an answer
        elif current == "hang":
            await asyncio.sleep(HANG_SECONDS)
        return web.Response(status=503, body=b'{"error":"flapping"}', content_type="application/json")

    async def steady(_: web.Request) -> web.Response:
        state.update(mode="up", steady=True)
        phases.append((round(time.monotonic() - started, 1), "steady", 0.0))
        return web.Response(body=OK, content_type="application/json")

    async def records(_: web.Request) -> web.Response:
        data = {"keys": keys, "answers": dict(answers), "phases": phases}
        return web.Response(body=orjson.dumps(data), content_type="application/json")

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_get("/steady", steady)
    app.router.add_get("/records", records)
    app.router.add_post("/{tail:.*}", receive)
    return app


def otlp_app() -> web.Application:
    app = web.Application()
    taken = Counter[str]()

    async def traces(request: web.Request) -> web.Response:
        taken["requests"] += 1
        taken["bytes"] += len(await request.read())
        return web.Response(status=200, body=b"", content_type="application/x-protobuf")

    async def count(_: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(taken), content_type="application/json")

    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/count", count)
    return app


def main(argv: list[str]) -> None:
    kind, port = argv[0], int(argv[1])
    apps: dict[str, Callable[[], web.Application]] = {
        "file": lambda: file_app(argv[2]),
        "target": target_app,
        "flaky": lambda: flaky_app(int(argv[2])),
        "otlp": otlp_app,
    }
    app = apps[kind]()
    if kind == "target":
        # like the load generator: an instrument whose collector pauses must not show as the router's latency
        gc.disable()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main(sys.argv[1:])
