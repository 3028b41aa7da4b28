"""The admin endpoint: a separate HTTP listener (loopback by default) for probes, metrics and reloads.

GET /healthz  200 while the event loop runs (liveness).
GET /readyz   200 when every input can take events and the spool is writable, else 503 with details.
GET /metrics  Prometheus text format.
POST /reload  re-read router.toml (same as SIGHUP); 200 with the result, 422 when the file is invalid.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

import anyio
import orjson
from aiohttp import web
from anyio.abc import TaskStatus
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from event_router.api.listen import listen_error

log = logging.getLogger("event_router.admin")


class Administered(Protocol):
    """What the admin endpoint asks of the running router (`event_router.app.App`)."""

    @property
    def config_file(self) -> Path: ...

    @property
    def metrics_registry(self) -> CollectorRegistry: ...

    def readiness(self) -> dict[str, Any]: ...

    async def reload(self) -> tuple[bool, list[str]]: ...


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


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

    async def reload(_: web.Request) -> web.Response:
        ok, errors = await app.reload()
        return _json(200 if ok else 422, {"reloaded": ok, "errors": errors})

    web_app = web.Application()
    web_app.router.add_get("/healthz", healthz)
    web_app.router.add_get("/readyz", readyz)
    web_app.router.add_get("/metrics", metrics)
    web_app.router.add_post("/reload", reload)
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
