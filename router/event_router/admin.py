"""The admin endpoint: a separate HTTP listener (loopback by default) for probes, metrics and reloads.

GET /healthz  200 while the event loop runs (liveness).
GET /readyz   200 when every input can take events and the spool is writable, else 503 with details.
GET /metrics  Prometheus text format.
POST /reload  re-read router.toml (same as SIGHUP); 200 with the result, 422 when the file is invalid.
GET /tap      server-sent events: each event submitted and each delivery attempt recorded, as they happen
              (`event-router tap`); filters `trigger`, `route`, `output`, `outcome` (repeatable), `unmask=1`.
              Its answers (refusals too) name the router's router.toml (`Event-Router-Config`).
GET /outputs  per output: paused (since when, by whom), its breaker, pending and in-flight deliveries.
POST /outputs/{name}/pause, POST /outputs/{name}/resume: as `event-router output pause|resume NAME`, for every
              router on the spool; 200 with the output's state, 404 naming the configured outputs, 503
              when the spool cannot record it.
POST /outputs/{name}/retry: the output's deliveries waiting for a retry are due now; 200 with how many.
GET /console/ the web console (event_router.console).

Who may call what (event_router.console.security, in front of every route): /healthz, /readyz and
/metrics are open; with `[router.admin] token` (required off the loopback) everything else asks for it
(`Authorization: Bearer TOKEN`, or the console's login); without one, only requests to a loopback Host are
answered. A POST a browser marks as cross-site is refused (docs/operating.md, docs/security.md).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import Any, Protocol

import anyio
import orjson
from aiohttp import web
from anyio.abc import TaskStatus
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from event_router.api.errors import SpoolError, did_you_mean
from event_router.api.listen import listen_error
from event_router.console import mount as mount_console
from event_router.console.host import ConsoleHost
from event_router.console.security import guard
from event_router.core.gate import UnknownOutput
from event_router.core.model import RouterConfig
from event_router.core.routing import PatternError
from event_router.core.tap import (
    CONFIG_HEADER,
    DELIVERY_OUTCOMES,
    EVENT_OUTCOMES,
    TapFilter,
    TapFull,
    config_identity,
    other_config,
)

log = logging.getLogger("event_router.admin")


class Administered(ConsoleHost, Protocol):
    """What the admin endpoint asks of the running router (`event_router.app.App`): what its console asks
    (`ConsoleHost`), and more."""

    @property
    def config_file(self) -> Path: ...

    @property
    def metrics_registry(self) -> CollectorRegistry: ...

    async def reload(self) -> tuple[bool, list[str], list[str]]:
        """(applied, errors, warnings)"""
        ...


#: seconds between keep-alive comments on an idle tap: a client (or proxy) gone away is noticed
TAP_KEEPALIVE = 15.0
#: bytes of a tap connection's kernel send buffer
TAP_SEND_BUFFER = 64 * 1024


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


class TapRefused(Exception):
    """Why a tap's query is refused, with the HTTP status that says so."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def tap_filter(config: RouterConfig, query: Any) -> TapFilter:
    """The tap's filter from the query string (`trigger`, `route`, `output`, `outcome`, `unmask`); else
    `TapRefused`: a name that is not configured, an outcome that does not exist (400), unmasking not
    allowed (403)."""
    routes = tuple(query.getall("route", []))
    outputs = tuple(query.getall("output", []))
    outcomes = tuple(query.getall("outcome", []))
    known_routes = [route.name for route in config.routes]
    for route in routes:
        if route not in known_routes:
            known = ", ".join(known_routes) or "none"
            raise TapRefused(400, f"no route named {route!r} (routes: {known}){did_you_mean(route, known_routes)}")
    for output in outputs:
        if output not in config.outputs:
            known = ", ".join(config.outputs) or "none"
            raise TapRefused(
                400, f"no output named {output!r} (outputs: {known}){did_you_mean(output, config.outputs)}"
            )
    for outcome in outcomes:
        if outcome not in EVENT_OUTCOMES + DELIVERY_OUTCOMES:
            events, deliveries = ", ".join(EVENT_OUTCOMES), ", ".join(DELIVERY_OUTCOMES)
            raise TapRefused(400, f"no outcome {outcome!r} (events: {events}; deliveries: {deliveries})")
    unmask = query.get("unmask", "") in ("1", "true", "yes")
    if unmask and not config.admin_unmask:
        raise TapRefused(
            403, "unmasked data is not allowed on this router: set [router.admin] unmask = true to allow it"
        )
    triggers = tuple(query.getall("trigger", []))
    if any(not pattern.strip() for pattern in triggers):
        raise TapRefused(400, "trigger: an empty pattern matches no trigger (e.g. 'transport.**')")
    try:
        return TapFilter(triggers, routes, outputs, outcomes, unmask)
    except PatternError as exc:
        raise TapRefused(400, f"trigger: {exc}") from exc


async def serve_admin(
    app: Administered, host: str, port: int, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Serve until cancelled; `task_status.started(port)` once listening (the bound port, for port 0)."""

    async def healthz(_: web.Request) -> web.Response:
        return _json(200, {"status": "alive"})

    async def readyz(_: web.Request) -> web.Response:
        report = app.readiness()
        return _json(200 if report["ready"] else 503, report)

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(app.metrics_registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    # which router answers (the file it runs does not change while it runs): only to those let in
    identity = {CONFIG_HEADER: config_identity(app.config_file)}

    async def reload(request: web.Request) -> web.Response:
        # `event-router reload -c FILE` says which file it means: a reload of another router is refused
        # here, before it happens (the command cannot undo one it finds afterwards was the wrong router's)
        meant = request.headers.get(CONFIG_HEADER)
        if meant is not None and meant != identity[CONFIG_HEADER]:
            answer = _json(409, {"error": other_config(identity[CONFIG_HEADER], meant)})
        else:
            ok, errors, warnings = await app.reload()
            answer = _json(200 if ok else 422, {"reloaded": ok, "errors": errors, "warnings": warnings})
        answer.headers.update(identity)
        return answer

    taps: set[asyncio.Task[Any]] = set()

    async def tap(request: web.Request) -> web.StreamResponse:
        try:
            wanted = tap_filter(app.config, request.query)
        except TapRefused as refused:
            refusal = _json(refused.status, {"error": str(refused)})
            refusal.headers.update(identity)
            return refusal
        try:
            subscription = app.tap.subscribe(wanted)
        except TapFull as exc:
            refusal = _json(429, {"error": str(exc)})
            refusal.headers.update(identity)
            return refusal
        task = asyncio.current_task()
        assert task is not None
        taps.add(task)
        try:
            response = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **identity}
            )
            sock = request.transport.get_extra_info("socket") if request.transport is not None else None
            if sock is not None:
                # what a slow tap has not read waits in its bounded queue, where it is counted and reported
                # as dropped, not in megabytes of kernel buffer that would hide how far behind it is
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, TAP_SEND_BUFFER)
            await response.prepare(request)
            await response.write(b": tap open\n\n")
            while True:
                try:
                    async with asyncio.timeout(TAP_KEEPALIVE):
                        record = await subscription.next()
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                await response.write(b"data: " + orjson.dumps(record) + b"\n\n")
        except (ConnectionError, asyncio.CancelledError):  # the client went away, or the router stops
            return web.Response()
        finally:
            subscription.close()
            taps.discard(task)

    async def end_taps(_: web.Application) -> None:
        # a tap never ends by itself: the router's stop must not wait for its clients to go
        for task in list(taps):
            task.cancel()

    async def outputs(_: web.Request) -> web.Response:
        return _json(200, {"outputs": app.outputs_report()})

    async def retry(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            count = await app.retry_output(name, f"admin endpoint ({request.remote})")
        except UnknownOutput as exc:
            return _json(404, {"error": str(exc)})
        except SpoolError as exc:
            return _json(503, {"error": str(exc)})
        return _json(200, {"output": name, "due_now": count})

    async def pause(request: web.Request) -> web.Response:
        paused = request.match_info["action"] == "pause"
        try:
            state = await app.pause_output(request.match_info["name"], paused, f"admin endpoint ({request.remote})")
        except UnknownOutput as exc:  # the message names the configured outputs
            return _json(404, {"error": str(exc)})
        except SpoolError as exc:  # not recorded: nothing changed, on this router or another
            return _json(503, {"error": str(exc)})
        return _json(200, state)

    web_app = web.Application(middlewares=[guard(lambda: app.config.admin_token)])
    web_app.on_shutdown.append(end_taps)
    web_app.router.add_get("/healthz", healthz)
    web_app.router.add_get("/readyz", readyz)
    web_app.router.add_get("/metrics", metrics)
    web_app.router.add_post("/reload", reload)
    web_app.router.add_get("/tap", tap)
    web_app.router.add_get("/outputs", outputs)
    web_app.router.add_post("/outputs/{name}/{action:pause|resume}", pause)
    web_app.router.add_post("/outputs/{name}/retry", retry)
    mount_console(web_app, app)
    runner = web.AppRunner(web_app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise listen_error("router.admin.listen", host, port, exc, file=app.config_file.name) from exc
        sockets = getattr(site._server, "sockets", None) or ()
        bound = sockets[0].getsockname()[1] if sockets else port
        log.info("admin endpoint listening", extra={"listen": f"{host}:{bound}"})
        task_status.started(bound)
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()
