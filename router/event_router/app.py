"""The daemon: builds everything from router.toml, starts outputs then inputs, stops in reverse.

Ready (READY=1, `router ready`) once every input consumes: a broker input that cannot connect yet is
waited for while the rest runs (the webhook takes events, /readyz answers 503 naming the input).

Every input and output runs in its own cancel scope under a supervisor: one that fails after it started
is logged and restarted with backoff (`RESTART_POLICY`) while the rest keeps running; a reload stops and
restarts only the inputs and outputs whose tables changed (a replaced output's attempts in flight finish
beside its successor, which leaves them alone). SIGTERM/SIGINT: stop inputs first (the webhook stops accepting;
requests in progress finish and their events are stored), then let deliveries in flight finish up to
`shutdown_timeout`; what is left stays in the spool. SIGHUP: reload (an invalid file keeps the running
configuration). A wall-clock jump is logged and rebased away, so retries keep their schedule
(event_router.core.clock). Each output's gate (paused by an operator, or its breaker open) is kept by
`OutputControl` across reloads, in step with the spool's record of it (event_router.core.gate).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import anyio
from anyio.abc import TaskGroup, TaskStatus
from prometheus_client import CollectorRegistry

from event_router.api.backoff import Backoff
from event_router.api.errors import ConfigError, RouterError, SpoolError
from event_router.api.listen import format_listen
from event_router.api.retry import RetryPolicy
from event_router.config import ConfigErrors, load_config
from event_router.core.deadletters import ReplayReport, replay
from event_router.core.delivery import OutputWorker
from event_router.core.gate import OutputControl, UnknownOutput
from event_router.core.model import InputConfig, OutputConfig, RouterConfig
from event_router.core.pipeline import InternalSource, Pipeline
from event_router.core.spool import DataDirInUse, DeadLetterFilter, Spool
from event_router.core.spool.backend import describe as describe_spool
from event_router.core.spool.backend import directory_problem, spool_for
from event_router.core.stats import Stats
from event_router.core.tap import Tap
from event_router.core.validation import SchemaError, SchemaRegistry, builtin_schema_dir
from event_router.plugin_loader import PluginRegistry
from event_router.systemd import assign_sockets, listen_fds, notify

log = logging.getLogger("event_router.app")
STATUS_INTERVAL = 10.0
#: the wait before restarting an input or output that failed after it started: up to 1 s after its first
#: failure, the ceiling doubling per failure up to 30 s, full jitter (`Backoff`, the inputs' reconnect
#: back-off). The count starts again after a failure that came `max_backoff` (30 s) or more after it started
RESTART_POLICY = RetryPolicy(max_age=0, initial_backoff=1.0, max_backoff=30.0)
#: how often to compare the wall clock with the spool's: a jump is noticed within this many seconds
CLOCK_CHECK_INTERVAL = 1.0
#: seconds between looks at the readiness and refusals of inputs that a recovery input covers
GAP_CHECK_INTERVAL = 0.5
#: at start, how long the admin endpoint waits for the inputs to consume before it listens anyway
ADMIN_AFTER = 2.0
#: how often kept events past `[router] retention` are pruned (a short retention more often: a tenth of it,
#: at least a second apart), and how many one write forgets at most: a batch is one lazy write of its own, so
#: the commits of the stores it shares a group with wait for that many deletes only
PRUNE_INTERVAL = 60.0
PRUNE_BATCH = 500


def load_schemas(config: RouterConfig | None, registry: PluginRegistry) -> SchemaRegistry:
    """Built-in schemas, then plugins', then the user's `schemas_dir`: later ones override."""
    dirs = [builtin_schema_dir(), *registry.schema_dirs]
    if config is not None and config.schemas_dir is not None:
        dirs.append(config.schemas_dir)
    return SchemaRegistry.load(dirs)


class Reloaded(NamedTuple):
    """What a reload came to (`App.reload`): applied or refused, with why, and what it applied only in part."""

    applied: bool
    #: why the file was refused (empty when applied)
    errors: list[str]
    #: what an applied reload left for the next start (a changed `spool`, `data_dir`, `telemetry`...)
    warnings: list[str]


@dataclass(slots=True, eq=False)
class _Unit:
    """A running input or output: cancelled alone on reload or shutdown. Compared (and hashed) by identity."""

    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    finished: anyio.Event = field(default_factory=anyio.Event)
    #: set once the plugin called `task_status.started()` (an input: once it consumes), or once it failed
    #: before that (then `failure` says why)
    settled: anyio.Event = field(default_factory=anyio.Event)
    failure: BaseException | None = None


class _Tracked(TaskStatus[Any]):
    """Remembers whether `started()` was called, to tell a start-up failure from a later crash."""

    def __init__(self, inner: TaskStatus[Any], unit: _Unit | None = None, backoff: Backoff | None = None):
        self.inner = inner
        self.unit = unit
        self.backoff = backoff
        self.called = False

    def started(self, value: Any = None) -> None:
        if self.backoff is not None:  # each run after a restart too: its health counts from here
            self.backoff.healthy()
        if self.called:  # a plugin consuming again after a reconnect: it said so the first time
            return
        self.called = True
        if self.unit is not None:
            self.unit.settled.set()
        self.inner.started(value)


class App:
    """One running router."""

    def __init__(self, config: RouterConfig, registry: PluginRegistry, *, follow_log_level: bool = False):
        if config.unresolved_secrets:
            # stand-ins are for commands that send nothing: a running router would send them
            raise RouterError(
                f"{config.path.name} was loaded without resolving its secrets "
                f"({', '.join(config.unresolved_secrets)}): the router runs only with them resolved"
            )
        self.config = config
        self.registry = registry
        self.stats = Stats()
        self.spool: Spool = spool_for(config.data_dir, config.spool)
        self.schemas = load_schemas(config, registry)
        self.pipeline = Pipeline(config=config, schemas=self.schemas, spool=self.spool, stats=self.stats)
        self._internal_submit = partial(self.pipeline.submit, InternalSource("router"))
        #: the outputs' gates: paused or not (as the spool records it), and their breakers
        self.control = OutputControl(self.spool, self.stats, router=f"{socket.gethostname()}:{os.getpid()}")
        self.started_at = time.monotonic()
        #: the listening sockets systemd passed (`LISTEN_FDS`), open for the life of the process
        self.passed = listen_fds()
        self.admin_port: int | None = None
        #: the admin endpoint's server (None without `[router.admin]`): a reload that changes its `listen`
        #: starts another and stops this one once the other listens
        self._admin: _Unit | None = None
        #: whether a reload applies `[router] log_level` (False when `run --log-level` chose the level)
        self.follow_log_level = follow_log_level
        self._stop = anyio.Event()
        self._reload_lock = anyio.Lock()
        self._tg: TaskGroup | None = None
        self._inputs: dict[str, _Unit] = {}
        self._outputs: dict[str, _Unit] = {}
        #: outputs a reload replaced, finishing their attempts in flight (and their workers)
        self._retiring: dict[_Unit, OutputWorker | None] = {}
        #: set once everything is started and the router waits for its inputs to consume
        self.running = anyio.Event()
        #: set once every input consumes: READY=1, `router ready`
        self.ready = anyio.Event()
        self.stats.add_gauges(self._gauges)

    def request_stop(self) -> None:
        self._stop.set()

    # --- lifecycle ---------------------------------------------------------------------------------

    async def run(
        self, *, handle_signals: bool = True, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        config = self.config
        self._assign_sockets(config)
        try:
            # SQLite: a second router on this data_dir would deliver everything twice; PostgreSQL: several
            # routers share the database, each delivery leased to one
            self.spool.open("exclusive")
        except DataDirInUse as exc:
            raise ConfigError("router.data_dir", str(exc), file=config.path.name) from None
        except SpoolError as exc:
            if config.spool.backend != "sqlite":
                # the key at fault, as `check --connect` names it (and the `router failed to start` record)
                raise ConfigError("router.spool.dsn", str(exc), file=config.path.name) from None
            problem = directory_problem(config.data_dir)
            if problem is None:
                raise
            raise ConfigError("router.data_dir", problem, file=config.path.name) from exc
        ready = False
        if config.telemetry is not None:
            # imported only when configured: the `otel` extra (the config loader checked it is installed)
            from event_router.core.telemetry import start_telemetry

            self.pipeline.telemetry = start_telemetry(config.telemetry)
        try:
            jump = self.spool.claim_clock()
            if jump:
                self._log_jump(jump, " while the router was stopped")
            async with anyio.create_task_group() as tg:
                self._tg = tg
                # an output paused before this start delivers nothing: the states are read before any starts
                for out in config.outputs.values():
                    self.control.gate(out.name, out.breaker)
                self.control.load()
                for out in config.outputs.values():
                    await self._start_output(out)
                tg.start_soon(self.control.run)
                self._warn_orphans()
                # SIGTERM while a broker input is still connecting stops the router as usual
                if handle_signals:
                    tg.start_soon(self._signals)
                async with self._reload_lock:  # a SIGHUP now is applied once everything is started
                    # all at once: a broker that is down must not keep the webhook from listening
                    for inp in config.inputs.values():
                        self._launch_input(inp)
                    # an input that cannot start (its port in use) is reported before the admin endpoint's
                    # own failure; one still connecting to its broker does not hold it back for long
                    with anyio.move_on_after(ADMIN_AFTER):
                        await self._await_inputs()
                    if config.admin_listen is not None:
                        await self._start_admin(config.admin_listen)
                tg.start_soon(self._heartbeat)
                tg.start_soon(self._watch_clock)
                tg.start_soon(self._watch_gaps)
                tg.start_soon(self._prune_kept)
                waiting = self._not_consuming()
                if waiting and not self._stop.is_set():
                    log.info("waiting for inputs to consume before reporting ready", extra={"inputs": waiting})
                    notify(f"STATUS=starting: waiting for inputs to consume: {', '.join(waiting)}")
                self.running.set()
                # READY=1 promises every input consumes (a queue bound, a subscription made, a port
                # listening): what the Connector sends from then on is not lost
                await self._await_inputs()
                if not self._stop.is_set():
                    log.info(
                        "router ready",
                        extra={
                            "inputs": len(config.inputs),
                            "outputs": len(config.outputs),
                            "routes": len(config.routes),
                            "pending": self.spool.depth,
                            "startup_seconds": round(time.monotonic() - self.started_at, 3),
                        },
                    )
                    notify("READY=1", f"STATUS={self._status_line()}")
                    self.ready.set()
                task_status.started()
                ready = True
                await self._stop.wait()
                log.info(
                    "stopping: inputs first, then draining deliveries", extra={"timeout": self.config.shutdown_timeout}
                )
                notify("STOPPING=1", "STATUS=draining deliveries")
                # concurrently: each webhook answers the requests it has begun within its own bound
                async with anyio.create_task_group() as stopping:
                    for name in list(self._inputs):
                        stopping.start_soon(self._stop_input, name)
                # concurrently, each given shutdown_timeout; what does not finish stays in the spool
                async with anyio.create_task_group() as drain:
                    for name in list(self._outputs):
                        drain.start_soon(self._stop_output, name)
                    drain.start_soon(self._stop_retiring)
                await self.control.close()
                tg.cancel_scope.cancel()
        finally:
            self._tg = None
            self.spool.close()
            telemetry, self.pipeline.telemetry = self.pipeline.telemetry, None
            if telemetry is not None:
                # the spans still queued are exported, from a thread: the collector may be slow or away
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(telemetry.shutdown)
            # a start-up failure is logged (and said) by the caller: it did not run, so it did not "stop"
            if ready:
                log.info("router stopped", extra={"pending": self.spool.depth})

    async def _start_admin(self, listen: tuple[str, int]) -> None:
        """Serve the admin endpoint on `listen`; returns once it listens, else raises why it cannot (a
        `ConfigError` naming `router.admin.listen`: the address in use...)."""
        # imported only when configured: aiohttp's server side is not needed otherwise
        from event_router.admin import serve_admin

        assert self._tg is not None
        unit = _Unit()
        host, port = listen

        async def serve(*, task_status: TaskStatus[int]) -> None:
            with unit.scope:  # cancelled alone by a reload that moves the endpoint
                await serve_admin(self, host, port, task_status=task_status)

        self.admin_port = await self._tg.start(serve)
        self._admin = unit

    def _assign_sockets(self, config: RouterConfig) -> None:
        """Give the sockets systemd passed to their inputs; ConfigErrors when one fits none, or an input that
        requires one has none."""
        listeners = {name: inp.plugin.listener for name, inp in config.inputs.items()}
        errors = assign_sockets(listeners, self.passed, file=config.path.name)
        if errors:
            raise ConfigErrors(errors)

    async def _supervise(
        self,
        kind: str,
        name: str,
        unit: _Unit,
        run: Callable[[TaskStatus[Any]], Awaitable[None]],
        *,
        fatal: bool,
        task_status: TaskStatus[None],
    ) -> None:
        """Run `run`; restart it with backoff when it fails after it started (or always, when not fatal)."""
        backoff = Backoff(RESTART_POLICY)
        status = _Tracked(task_status, unit, backoff)
        if not fatal:
            task_status.started()
            status = _Tracked(anyio.TASK_STATUS_IGNORED, unit, backoff)
        with unit.scope:
            try:
                while True:
                    try:
                        await run(status)
                        if not status.called:
                            raise RuntimeError(f"the {kind} ended before it started")
                        return
                    except Exception as exc:
                        if fatal and not status.called:
                            # cannot even start (port taken...): the router must not come up half-way
                            unit.failure = exc  # `settled` is set by the finally below
                            return
                        delay = backoff.failed()
                        log.exception(
                            f"{kind} failed; restarting it",
                            extra={kind: name, "attempt": backoff.attempt, "retry_in": round(delay, 3)},
                        )
                        await anyio.sleep(delay)
                        status = _Tracked(anyio.TASK_STATUS_IGNORED, unit, backoff)
                        status.called = True
            finally:
                unit.settled.set()  # stopped (a reload replaced it): nothing waits for it any more
                unit.finished.set()

    def _input_runner(self, inp: InputConfig) -> Callable[[TaskStatus[Any]], Awaitable[None]]:
        sink = self.pipeline.sink_for(inp)

        async def run(status: TaskStatus[Any]) -> None:
            await inp.plugin.run(sink, task_status=status)

        return run

    def _launch_input(self, inp: InputConfig) -> None:
        """Start an input at start-up without waiting for it: `_await_inputs` waits, and reports its failure."""
        assert self._tg is not None
        unit = self._inputs[inp.name] = _Unit()
        self._tg.start_soon(
            partial(
                self._supervise,
                "input",
                inp.name,
                unit,
                self._input_runner(inp),
                fatal=True,
                task_status=anyio.TASK_STATUS_IGNORED,
            )
        )

    def _not_consuming(self) -> list[str]:
        return [name for name, unit in self._inputs.items() if not unit.settled.is_set()]

    async def _await_inputs(self) -> None:
        """Until every input consumes, or a stop is asked for; raises the error of an input that failed
        before it consumed. A broker input that cannot connect retries by itself: it is waited for."""
        while True:
            for name, unit in list(self._inputs.items()):
                if unit.failure is not None:
                    del self._inputs[name]
                    raise self._input_error(self.config.inputs[name], unit.failure) from unit.failure
            units = [unit for unit in self._inputs.values() if not unit.settled.is_set()]
            if not units or self._stop.is_set():
                return
            async with anyio.create_task_group() as news:

                async def first(event: anyio.Event) -> None:
                    await event.wait()
                    news.cancel_scope.cancel()

                for unit in units:
                    news.start_soon(first, unit.settled)
                news.start_soon(first, self._stop)

    def _input_error(self, inp: InputConfig, exc: BaseException) -> RouterError:
        if isinstance(exc, ConfigError):  # the plugin named the key of its table at fault (a `listen` in use...)
            key = f"inputs.{inp.name}.{exc.path}" if exc.path else f"inputs.{inp.name}"
            return ConfigError(key, exc.message, plugin=inp.type, file=self.config.path.name)
        return RouterError(f"input {inp.name} ({inp.type}) could not start: {exc}")

    async def _start_input(self, inp: InputConfig) -> None:
        """Start an input on reload: it runs, and is restarted with backoff, whatever happens; the router
        stays ready meanwhile and /readyz follows the input's `is_ready()`."""
        assert self._tg is not None
        unit = self._inputs[inp.name] = _Unit()
        run = self._input_runner(inp)
        await self._tg.start(
            lambda task_status: self._supervise("input", inp.name, unit, run, fatal=False, task_status=task_status)
        )

    async def _start_output(self, out: OutputConfig, *, predecessor: OutputWorker | None = None) -> None:
        assert self._tg is not None
        out.plugin.context.submit = self._internal_submit
        gate = self.control.gate(out.name, out.breaker)
        worker = OutputWorker(out, self.spool, self.stats, live=self.pipeline, predecessor=predecessor, gate=gate)
        self.pipeline.workers[out.name] = worker
        unit = self._outputs[out.name] = _Unit()

        async def run(status: TaskStatus[Any]) -> None:
            await worker.run(task_status=status)

        # an output that cannot open yet (target down) must not keep the router from taking events
        await self._tg.start(
            lambda task_status: self._supervise("output", out.name, unit, run, fatal=False, task_status=task_status)
        )

    async def _stop_input(self, name: str) -> None:
        unit = self._inputs.pop(name)
        unit.scope.cancel()
        await unit.finished.wait()

    async def _stop_output(self, name: str) -> None:
        """Let the output finish what is in flight (up to `shutdown_timeout`), then cancel it."""
        unit = self._outputs.get(name)
        if unit is None:
            return
        worker = self.pipeline.workers.get(name)
        if worker is not None:
            worker.stop()
        with anyio.move_on_after(self.config.shutdown_timeout):
            await unit.finished.wait()
        unit.scope.cancel()
        await unit.finished.wait()
        self._outputs.pop(name, None)
        if self.pipeline.workers.get(name) is worker:
            del self.pipeline.workers[name]

    def _retire_output(self, name: str) -> OutputWorker | None:
        """A reload replaces output `name`: its worker takes no new delivery at once, and finishes the attempts
        it has in flight in the background, each within the output's `timeout`, recording their outcomes;
        its successor starts meanwhile and leaves those deliveries alone. Returns the retiring worker."""
        assert self._tg is not None
        unit = self._outputs.pop(name)
        worker = self.pipeline.workers.pop(name, None)
        if worker is not None:
            worker.stop()
        self._retiring[unit] = worker
        self._tg.start_soon(self._finish_retiring, name, unit, worker)
        return worker

    async def _finish_retiring(self, name: str, unit: _Unit, worker: OutputWorker | None) -> None:
        # an attempt ends within the output's timeout; what is left is its outcome's commit. Past that bound
        # (a commit stuck on a full disk) the worker is cancelled and its unrecorded deliveries are sent again.
        bound = (worker.config.timeout if worker is not None else 0.0) + self.config.shutdown_timeout
        with anyio.move_on_after(bound):
            await unit.finished.wait()
        unit.scope.cancel()
        await unit.finished.wait()
        self._retiring.pop(unit, None)
        # whichever worker names this one as its predecessor (the current one, or one a later reload retired)
        for later in [self.pipeline.workers.get(name), *self._retiring.values()]:
            if later is not None and later.predecessor is worker:
                later.predecessor = None
        await self._let_go(name)  # a later reload removed the output: what this worker held is given back

    async def _let_go(self, name: str) -> None:
        """When output `name` is no longer configured: give back to the spool what this router holds of its
        deliveries (PostgreSQL: their leases, which would otherwise be renewed for as long as the router
        runs), but what a retiring worker of that name still attempts. They stay pending for the output
        (`status` shows them) until a router that has it delivers them."""
        if name in self.config.outputs:
            return
        keep: set[int] = set()
        for worker in self._retiring.values():
            if worker is not None and worker.name == name:
                keep.update(worker.holding)
        await self.spool.release(name, keep)

    async def _stop_retiring(self) -> None:
        """At shutdown: outputs a reload replaced get `shutdown_timeout` too, like the others."""
        with anyio.move_on_after(self.config.shutdown_timeout):
            for unit in list(self._retiring):
                await unit.finished.wait()
        for unit in list(self._retiring):
            unit.scope.cancel()

    def _warn_orphans(self) -> None:
        for output, count in self.spool.pending_outputs().items():
            if output not in self.config.outputs:
                log.warning(
                    "spool holds deliveries for an output that is not configured; they stay until it is",
                    extra={"output": output, "pending": count},
                )

    # --- signals, reload -----------------------------------------------------------------------------

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    assert self._tg is not None
                    self._tg.start_soon(self.reload)
                    continue
                log.info("signal received", extra={"signal": signal.Signals(signum).name})
                self._stop.set()
                return

    async def reload(self) -> Reloaded:
        """Re-read router.toml and apply it: routes swap atomically, changed inputs/outputs restart.

        An invalid file (or schema directory) keeps the running configuration. A changed spool, `data_dir`
        or telemetry is not applied: a warning says it takes effect at the next start. A changed
        `[router.admin] listen` moves the admin endpoint: the new address listens before the old one stops,
        and one that cannot listen refuses the reload. Every other `[router]` key is applied.
        Events in flight are neither lost nor sent twice: deliveries live in the spool, a replaced output
        finishes its attempts in flight (and records them) while its successor takes the rest, and a
        replaced input finishes its requests first.
        """
        async with self._reload_lock:
            if self.ready.is_set():  # before, systemd still waits for the first READY=1
                notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
            old = self.config
            try:
                # plugins get the running data_dir: a reload does not move it (below)
                new = load_config(old.path, self.registry, plugin_data_dir=old.data_dir)
                schemas = load_schemas(new, self.registry)
            except ConfigErrors as exc:
                return self._refuse([str(e) for e in exc.errors])
            except (SchemaError, RouterError) as exc:
                return self._refuse([str(exc)])
            new_inputs = _changed(old.inputs, new.inputs)
            new_outputs = _changed(old.outputs, new.outputs)
            warnings: list[str] = []
            running, configured = describe_spool(old.data_dir, old.spool), describe_spool(new.data_dir, new.spool)
            if new.spool != old.spool or configured != running:
                # the spool holds what every input acknowledged: it is moved by a restart, never under load
                warnings.append(
                    f"router.spool changed: it takes effect at the next restart; until then the router keeps its "
                    f"running spool ({running})"
                )
                log.warning(warnings[-1], extra={"running": running, "configured": configured})
            elif new.data_dir != old.data_dir:
                # not the spool's place (PostgreSQL), but the lock that keeps a second router off it, and what
                # the recovery inputs keep: moved by a restart too
                warnings.append(
                    f"router.data_dir changed: it takes effect at the next restart; until then the router keeps "
                    f"{old.data_dir}"
                )
                log.warning(warnings[-1], extra={"running": str(old.data_dir), "configured": str(new.data_dir)})
            if new.telemetry != old.telemetry:
                # the tracer is made at start, with its exporter; spans already begun belong to it
                warnings.append("router.telemetry changed: it takes effect at the next restart")
                log.warning(warnings[-1])
            if new.log_level != old.log_level and not self.follow_log_level:
                warnings.append(
                    f"router.log_level changed to {new.log_level}: not applied, `run --log-level` set this "
                    "router's level"
                )
                log.warning(warnings[-1])
            # unchanged inputs and outputs keep their running plugin instances; an unchanged output takes a
            # changed `[router] retry` all the same (its policy is read per attempt, from the current config)
            merged = replace(
                new,
                data_dir=old.data_dir,
                spool=old.spool,
                telemetry=old.telemetry,
                inputs={n: new.inputs[n] if n in new_inputs else old.inputs[n] for n in new.inputs},
                outputs={
                    n: new.outputs[n] if n in new_outputs else _with_retry(old.outputs[n], new.outputs[n].retry)
                    for n in new.outputs
                },
            )
            try:
                # the sockets systemd passed must fit the new inputs too (unchanged ones keep theirs)
                self._assign_sockets(merged)
            except ConfigErrors as exc:
                return self._refuse([str(e) for e in exc.errors])
            moved = merged.admin_listen != old.admin_listen
            previous = self._admin
            if moved and merged.admin_listen is not None:
                try:
                    # the new address listens before the old one stops: the endpoint is never away, and an
                    # address that cannot listen leaves everything as it was
                    await self._start_admin(merged.admin_listen)
                except ConfigError as exc:
                    error = str(exc)
                    if old.admin_listen is not None and old.admin_listen[1] == merged.admin_listen[1]:
                        error += (
                            f" (the admin endpoint listens on {format_listen(*old.admin_listen)}, on the same "
                            "port, until it stops: another host on that port takes a restart)"
                        )
                    return self._refuse([error])
            for name in new_outputs:  # outputs first: routes may target them as soon as they swap in
                retiring = self._retire_output(name) if name in self._outputs else None
                await self._start_output(merged.outputs[name], predecessor=retiring)
            # one step, no await: every event is routed entirely by the old or entirely by the new rules
            self.config = self.pipeline.config = merged
            self.schemas = self.pipeline.schemas = schemas
            if merged.log_level != old.log_level and self.follow_log_level:
                logging.getLogger().setLevel(merged.log_level.upper())
            if moved and previous is not None:
                assert old.admin_listen is not None
                # not waited for: the request that asked for this reload may be one the old endpoint serves,
                # and it answers it as it stops (its taps end)
                previous.scope.cancel()
                log.info("admin endpoint no longer listening", extra={"listen": format_listen(*old.admin_listen)})
                if merged.admin_listen is None:
                    self._admin = self.admin_port = None
            for name in [n for n in old.outputs if n not in merged.outputs]:
                await self._stop_output(name)
                self.control.forget(name)
                await self._let_go(name)
            for name in [n for n in old.inputs if n not in merged.inputs or n in new_inputs]:
                await self._stop_input(name)
            for name in new_inputs:
                await self._start_input(merged.inputs[name])
            changed = (
                (["router.admin"] if moved else [])
                + sorted(f"inputs.{n}" for n in new_inputs)
                + sorted(f"outputs.{n}" for n in new_outputs)
            )
            log.info(
                "configuration reloaded",
                extra={"routes": len(merged.routes), "restarted": changed, "warnings": warnings},
            )
            self.stats.incr("reloads", result="ok")
            self._notify_reloaded(self._status_line() + "".join(f"; {w}" for w in warnings))
            return Reloaded(True, [], warnings)

    def _refuse(self, errors: list[str]) -> Reloaded:
        """A reload that applies nothing: the running configuration stays, the log and systemd say why."""
        log.error("reload refused, keeping the running configuration", extra={"errors": errors})
        self.stats.incr("reloads", result="invalid")
        self._notify_reloaded("reload refused: invalid configuration; " + self._status_line())
        return Reloaded(False, errors, [])

    def _notify_reloaded(self, status: str) -> None:
        """READY=1 ends a reload only once the router was ready: during start-up it still means ready."""
        if self.ready.is_set():
            notify("READY=1", f"STATUS={status}")
        else:
            notify(f"STATUS={status}")

    # --- health, status ---------------------------------------------------------------------------

    @property
    def config_file(self) -> Path:
        return self.config.path

    @property
    def tap(self) -> Tap:
        return self.pipeline.tap

    @property
    def metrics_registry(self) -> CollectorRegistry:
        return self.stats.registry

    def readiness(self) -> dict[str, Any]:
        inputs: dict[str, bool] = {}
        reasons: dict[str, str] = {}
        for name, cfg in self.config.inputs.items():
            if name in self._inputs:
                inputs[name] = cfg.plugin.is_ready()
                if reason := cfg.plugin.not_ready_reason():
                    reasons[name] = reason
        spool = {"writable": self.spool.writable, "error": self.spool.last_error}
        report: dict[str, Any] = {
            "ready": all(inputs.values()) and self.spool.writable,
            "inputs": inputs,
            "spool": spool,
        }
        if reasons:
            report["reasons"] = reasons
        return report

    async def pause_output(self, name: str, paused: bool, by: str) -> dict[str, Any]:
        """Pause or resume output `name` (the admin endpoint): recorded in the spool for every router, applied
        here at once. `UnknownOutput` (naming the configured ones) for a name that is none of them, but for
        resuming one router.toml no longer has that the spool holds paused (as `event-router output resume`):
        else its pause would hold it again once it is configured back."""
        if name not in self.config.outputs:
            state = None if paused else (await anyio.to_thread.run_sync(self.spool.output_states)).get(name)
            if state is None or not state.paused:
                raise UnknownOutput(name, list(self.config.outputs))
            _, changed = await anyio.to_thread.run_sync(self.spool.set_paused, name, False, by)
            return {"output": name, "changed": changed, "configured": False, "paused": False}
        _, changed = await self.control.set_paused(name, paused, by)
        return {"output": name, "changed": changed, **self.outputs_report()[name]}

    async def retry_output(self, name: str, by: str) -> int:
        """Make output `name`'s deliveries that wait for a retry due now (the console's "retry now"), and
        let its worker look at once; how many. `UnknownOutput` for a name that is not configured."""
        if name not in self.config.outputs:
            raise UnknownOutput(name, list(self.config.outputs))
        count = await anyio.to_thread.run_sync(self.spool.retry_now, name)
        worker = self.pipeline.workers.get(name)
        if worker is not None:
            worker.wake()
        log.info("retries made due now", extra={"output": name, "deliveries": count, "by": by})
        return count

    async def replay_dead_letters(self, ids: Sequence[int], by: str) -> ReplayReport:
        """Replay these dead letters as `event-router dlq replay IDS` does, on this router's spool (its counts
        see them at once), and let the workers look at once."""
        where = DeadLetterFilter(ids=tuple(ids))
        report = await anyio.to_thread.run_sync(partial(replay, self.spool, self.config, self.schemas, where, by=by))
        for worker in list(self.pipeline.workers.values()):
            worker.wake()
        log.info(
            "dead letters replayed",
            extra={
                "dead_letters": list(ids),
                "replayed": report.replayed,
                "dead_again": report.dead_again,
                "skipped": report.skipped,
                "by": by,
            },
        )
        return report

    async def purge_dead_letters(self, ids: Sequence[int], by: str) -> int:
        """Delete these dead letters for good (as `event-router dlq purge IDS`); how many."""
        count: int = await anyio.to_thread.run_sync(self.spool.purge_dead_letters, DeadLetterFilter(ids=tuple(ids)))
        log.info("dead letters purged", extra={"dead_letters": list(ids), "purged": count, "by": by})
        return count

    def outputs_report(self) -> dict[str, dict[str, Any]]:
        """Per configured output: paused (since when, by whom), its breaker, its deliveries (`GET /outputs`)."""
        pending = self.spool.pending_outputs()
        report: dict[str, dict[str, Any]] = {}
        for name in self.config.outputs:
            gate = self.control.gates.get(name)
            worker = self.pipeline.workers.get(name)
            report[name] = {
                **(gate.describe() if gate is not None else {}),
                "pending": pending.get(name, 0),
                "in_flight": worker.in_flight if worker is not None else 0,
            }
        return report

    def _status_line(self) -> str:
        ready = sum(cfg.plugin.is_ready() for cfg in self.config.inputs.values())
        return (
            f"{self.spool.depth} events pending; inputs ready {ready}/{len(self.config.inputs)}; "
            f"{self.stats.get('dead_letters')} dead-lettered since start"
        )

    async def _heartbeat(self) -> None:
        """WATCHDOG=1 from the event loop itself (a stuck loop stops them) and a periodic STATUS=."""
        watchdog: float | None = None
        usec = os.environ.get("WATCHDOG_USEC")
        if usec and os.environ.get("WATCHDOG_PID", str(os.getpid())) == str(os.getpid()):
            watchdog = int(usec) / 1e6 / 2
        interval = min(watchdog or STATUS_INTERVAL, STATUS_INTERVAL)
        next_status = time.monotonic() + STATUS_INTERVAL
        while True:
            messages = ["WATCHDOG=1"] if watchdog else []
            if time.monotonic() >= next_status:
                messages.append(f"STATUS={self._status_line()}")
                next_status = time.monotonic() + STATUS_INTERVAL
            if messages:
                notify(*messages)
            await anyio.sleep(interval)

    async def _watch_gaps(self) -> None:
        """Tell a recovery input when the input it covers had a gap: it was not ready (or the spool could not
        write) and is again, or it answered requests with an error since the last check. The Connector does not
        send again what was lost meanwhile; a look now rebuilds it `settle` later instead of an interval later."""
        was_ready: dict[str, bool] = {}
        refused: dict[str, int] = {}
        while True:
            await anyio.sleep(GAP_CHECK_INTERVAL)
            inputs = self.config.inputs  # the current config: a reload may have replaced them
            for inp in list(inputs.values()):
                covered = inp.plugin.covers() if inp.plugin.rebuilds else None
                if covered is None or covered not in inputs:
                    continue
                ready = inputs[covered].plugin.is_ready() and self.spool.writable
                count = self.stats.get("requests_rejected", input=covered)
                reason = None
                if ready and not was_ready.get(covered, ready):
                    reason = "was not ready"
                elif count > refused.get(covered, 0):  # since the process started: before this task, too
                    reason = "refused requests"
                was_ready[covered], refused[covered] = ready, count
                if reason is not None:
                    inp.plugin.gap_detected(covered, reason)

    async def _prune_kept(self) -> None:
        """Forget the kept events received more than `[router] retention` ago (with retention 0, those kept
        before it was turned off), PRUNE_BATCH per write. PostgreSQL: every router runs this; one at a time
        prunes, the others find nothing (`Spool.prune_kept`)."""
        while True:
            retention = self.config.retention  # the current config: a reload may change it
            await anyio.sleep(min(PRUNE_INTERVAL, max(1.0, retention / 10)) if retention else PRUNE_INTERVAL)
            before = time.time() - self.config.retention
            pruned = 0
            try:
                while True:
                    count = await self.spool.prune_kept(before, PRUNE_BATCH)
                    pruned += count
                    if count < PRUNE_BATCH:
                        break
            except SpoolError as exc:
                log.warning("could not prune kept events; trying again later", extra={"error": str(exc)})
            if pruned:
                log.debug("kept events pruned", extra={"pruned": pruned, "retention": self.config.retention})

    async def _watch_clock(self) -> None:
        """Rebase the spool's clock, the spool and the workers' timers when the wall clock jumps."""
        clock = self.spool.clock
        while True:
            await anyio.sleep(CLOCK_CHECK_INTERVAL)
            jump = clock.jump()
            if not jump:
                continue
            self._log_jump(jump, "")
            workers = list(self.pipeline.workers.values())
            # no await until the spool's rebase is queued: every time computed before is in the old base
            # and is moved with the spool's rows or the workers' memory, every time after is in the new
            clock.shift(jump)
            for worker in workers:
                worker.rebase(jump)
            try:
                with anyio.CancelScope(shield=True):
                    await self.spool.rebase(jump)
            except SpoolError as exc:
                log.error(
                    "could not move the spool's times with the clock; pending retries fall due that much off",
                    extra={"jump_seconds": round(jump, 3), "error": str(exc)},
                )
            for worker in workers:
                worker.wake()  # what the spool held back while the rebase was being committed

    def _log_jump(self, jump: float, when: str) -> None:
        direction = "forward" if jump > 0 else "back"
        log.warning(
            f"the wall clock jumped {direction} by {abs(jump):.0f}s{when}; pending retries keep their schedule "
            "in elapsed time, and retry budgets (max_age) count elapsed time only",
            extra={"jump_seconds": round(jump, 3), "pending": self.spool.depth},
        )

    def _gauges(self) -> Iterable[tuple[str, str, dict[str, str], float]]:
        # from what the spool counted as it committed (no query): a scrape runs no statement on the loop
        yield "spool_pending_events", "Events stored and not yet delivered everywhere", {}, self.spool.depth
        age = self.spool.oldest_pending_age()
        yield "spool_oldest_pending_age_seconds", "Age of the oldest pending event", {}, age or 0.0
        yield "dead_letters_stored", "Dead letters in the store", {}, self.spool.dead_letter_count()
        # every configured output has its series, 0 when nothing waits (an absent series is no data, not 0, to a
        # dashboard or an alert), and an output no longer configured has one while the spool holds deliveries for it
        pending = dict.fromkeys(self.config.outputs, 0) | self.spool.pending_outputs()
        for output, count in pending.items():
            yield "deliveries_pending", "Deliveries waiting per output", {"output": output}, count
        for name, out in self.config.outputs.items():
            yield (
                "deliveries_pending_limit",
                "An output's max_pending: past it, its new deliveries are parked as dead letters",
                {"output": name},
                out.max_pending,
            )
        yield "spool_writable", "1 when the last spool commit succeeded", {}, float(self.spool.writable)
        for name, worker in self.pipeline.workers.items():
            yield "deliveries_in_flight", "Deliveries being attempted now", {"output": name}, worker.in_flight
        for name, gate in self.control.gates.items():
            yield (
                "output_paused",
                "1 while the output is paused: none of its deliveries start",
                {"output": name},
                float(gate.paused),
            )
            yield (
                "output_breaker_open",
                "1 while the output's breaker is open (or its probe is out): pending deliveries wait",
                {"output": name},
                float(gate.state != "closed"),
            )
        for name, when in self.pipeline.last_looks.items():
            yield (
                "recovery_last_look_timestamp_seconds",
                "Unix time of the gap-recovery input's last look that did not fail",
                {"input": name},
                when,
            )
        for name, cfg in self.config.inputs.items():
            yield (
                "input_ready",
                "1 when the input can take events (connected...)",
                {"input": name},
                float(cfg.plugin.is_ready()),
            )


def _with_retry(out: OutputConfig, retry: RetryPolicy) -> OutputConfig:
    """`out` with `retry` (the same object when its policy is that already)."""
    return out if out.retry == retry else replace(out, retry=retry)


def _changed(old: dict[str, Any] | Any, new: dict[str, Any] | Any) -> list[str]:
    """Names in `new` that are new or whose table differs from `old`'s."""
    return [name for name in new if name not in old or old[name].table != new[name].table]
