"""The daemon: builds everything from router.toml, starts outputs then inputs, stops in reverse.

SIGTERM/SIGINT: stop inputs first (the webhook stops accepting, in-flight requests finish and their
events are stored), then let deliveries in flight finish up to `shutdown_timeout`; what is left stays in
the spool for the next start. SIGHUP: reload router.toml (an invalid file keeps the running config).
"""

from __future__ import annotations

import logging
import signal
import time
from functools import partial
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

from event_router.config import ConfigErrors, RouterConfig, load_config
from event_router.delivery import OutputWorker
from event_router.pipeline import Pipeline
from event_router.plugins import PluginRegistry
from event_router.spool import Spool
from event_router.stats import Stats
from event_router.systemd import notify
from event_router.validation import SchemaRegistry, builtin_schema_dir

log = logging.getLogger("event_router.app")


def spool_path(config: RouterConfig) -> Path:
    return config.data_dir / "spool.db"


def load_schemas(config: RouterConfig, registry: PluginRegistry) -> SchemaRegistry:
    """Built-in schemas, then plugins', then the user's `schemas_dir`: later ones override."""
    dirs = [builtin_schema_dir(), *registry.schema_dirs]
    if config.schemas_dir is not None:
        dirs.append(config.schemas_dir)
    return SchemaRegistry.load(dirs)


class App:
    """One running router."""

    def __init__(self, config: RouterConfig, registry: PluginRegistry):
        self.config = config
        self.registry = registry
        self.stats = Stats()
        self.spool = Spool(spool_path(config))
        self.schemas = load_schemas(config, registry)
        self.pipeline = Pipeline(config=config, schemas=self.schemas, spool=self.spool, stats=self.stats)
        self._stop = anyio.Event()
        self.started_at = time.monotonic()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(
        self, *, handle_signals: bool = True, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        config = self.config
        self.spool.open()
        try:
            workers = {
                name: OutputWorker(
                    out,
                    self.spool,
                    self.stats,
                    policy_for=partial(self._policy, name),
                    options_for=self._route_options,
                )
                for name, out in config.outputs.items()
            }
            self.pipeline.workers = workers
            self._warn_orphans()
            async with anyio.create_task_group() as outputs:
                for worker in workers.values():
                    await outputs.start(worker.run)
                async with anyio.create_task_group() as inputs:
                    for inp in config.inputs.values():
                        await inputs.start(partial(inp.plugin.run, self.pipeline.sink_for(inp)))
                    ready_in = time.monotonic() - self.started_at
                    log.info(
                        "router ready",
                        extra={
                            "inputs": len(config.inputs),
                            "outputs": len(workers),
                            "routes": len(config.routes),
                            "pending": self.spool.depth,
                            "startup_seconds": round(ready_in, 3),
                        },
                    )
                    notify("READY=1", f"STATUS=ready; {self.spool.depth} events pending")
                    task_status.started()
                    await self._wait_for_stop(handle_signals)
                    log.info(
                        "stopping: inputs first, then draining deliveries",
                        extra={"timeout": config.shutdown_timeout},
                    )
                    notify("STOPPING=1", "STATUS=draining deliveries")
                    inputs.cancel_scope.cancel()
                for worker in workers.values():
                    worker.stop()
                outputs.cancel_scope.deadline = anyio.current_time() + config.shutdown_timeout
        finally:
            self.spool.close()
            log.info("router stopped", extra={"pending": self.spool.depth})

    def _policy(self, output: str, route: str):  # type: ignore[no-untyped-def]
        return self.pipeline.config.retry_for(output, route)

    def _route_options(self, route: str):  # type: ignore[no-untyped-def]
        for r in self.pipeline.config.routes:
            if r.name == route:
                return r.options
        return {}

    def _warn_orphans(self) -> None:
        for output, count in self.spool.pending_outputs().items():
            if output not in self.config.outputs:
                log.warning(
                    "spool holds deliveries for an output that is not configured; they stay until it is",
                    extra={"output": output, "pending": count},
                )

    async def _wait_for_stop(self, handle_signals: bool) -> None:
        if not handle_signals:
            await self._stop.wait()
            return
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._signals, tg.cancel_scope)
            await self._stop.wait()
            tg.cancel_scope.cancel()

    async def _signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self.reload()
                    continue
                log.info("signal received", extra={"signal": signal.Signals(signum).name})
                self._stop.set()
                return

    def reload(self) -> bool:
        """Re-read router.toml. Routes are swapped atomically; a file with errors keeps the running config.

        Inputs and outputs are constructed at start; a change to them is reported and needs a restart.
        """
        notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            new = load_config(self.config.path, self.registry)
        except ConfigErrors as exc:
            log.error(
                "reload refused, keeping the running configuration",
                extra={"errors": [str(e) for e in exc.errors]},
            )
            self.stats.incr("reloads", result="invalid")
            notify("READY=1", "STATUS=reload refused: invalid configuration")
            return False
        changed = [
            f"{kind}.{name}"
            for kind, old, cur in (
                ("inputs", self.config.inputs, new.inputs),
                ("outputs", self.config.outputs, new.outputs),
            )
            for name in sorted(set(old) | set(cur))
            if name not in old or name not in cur or old[name].table != cur[name].table
        ]
        if changed:
            log.warning("reload: inputs/outputs changed; restart the router to apply them", extra={"changed": changed})
        self.pipeline.config = _with_routes(self.pipeline.config, new)
        self.stats.incr("reloads", result="ok")
        log.info("configuration reloaded", extra={"routes": len(new.routes)})
        notify("READY=1", "STATUS=ready (reloaded)")
        return True


def _with_routes(current: RouterConfig, new: RouterConfig) -> RouterConfig:
    from dataclasses import replace

    valid = tuple(r for r in new.routes if all(t in current.outputs for t in r.to))
    return replace(current, routes=valid, unmatched=new.unmatched)
