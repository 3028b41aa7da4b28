"""Built-in output `file`: appends one JSON object per line (JSON Lines), fsynced before success."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import anyio
import orjson

from event_router.api import ConfigError, Delivery, Output, PermanentError, PluginContext, hookimpl

#: strftime codes allowed in `path`: dates for daily/hourly files, nothing that comes from an event
_DATE_CODES = set("YmdHjUWGVu")


class FileOutput(Output):
    """Writes each delivery as one line to a file (`type = "file"`).

    The line is the normalised event; when the route reshapes, it is
    `{"id": <event id>, "trigger": ..., "route": ..., "payload": <reshaped>}`, so every line carries the
    event id receivers de-duplicate on. A batch of lines is written and fsynced once before any of them
    counts as delivered. `path` may contain strftime date codes (`%Y-%m-%d`...) taken from the event's
    `received_at`, for daily files; nothing in the path ever comes from event data.
    """

    type_name = "file"
    max_batch = 512
    config_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["path"],
        "properties": {
            "path": {"type": "string", "minLength": 1},
            "fsync": {"type": "boolean", "description": "fsync after every batch (default true)"},
            "mode": {"type": "string", "pattern": "^0?[0-7]{3}$", "description": "permissions of new files (0600)"},
        },
    }

    def __init__(self, config: Mapping[str, Any], context: PluginContext) -> None:
        super().__init__(config, context)
        raw: str = config["path"]
        if "{{" in raw:
            raise ConfigError("path", "templates are not allowed in a file path; use strftime date codes like %Y-%m-%d")
        for code in re.findall(r"%(.)", raw):
            if code not in _DATE_CODES and code != "%":
                allowed = " ".join("%" + c for c in sorted(_DATE_CODES))
                raise ConfigError("path", f"%{code} is not allowed in a file path (allowed: {allowed}, %%)")
        self.template = str(context.config_dir / raw)
        self.dated = "%" in raw
        self.fsync = config.get("fsync", True)
        # events carry personal data: files are private unless the operator says otherwise
        self.mode = int(config.get("mode", "0600"), 8)
        self._handles: dict[str, IO[bytes]] = {}
        # one thread of its own, fed through a SimpleQueue: a hand-over paid on every batch, cheaper than
        # anyio's to_thread or an executor's futures; writes to one file are sequential anyway
        self._thread: _WriterThread | None = None

    def guarantee(self) -> str:
        if not self.fsync:
            return "at least once while the host stays up: fsync = false, a power loss can undo lines delivered"
        return "at least once, fsynced; a line written again after a crash carries the same id"

    def path_for(self, delivery: Delivery) -> str:
        if not self.dated:
            return self.template
        stamp = datetime.fromisoformat(delivery.event.received_at.replace("Z", "+00:00"))
        return stamp.strftime(self.template)

    async def deliver(self, delivery: Delivery) -> None:
        (outcome,) = await self.deliver_batch([delivery])
        if outcome is not None:
            raise outcome

    async def deliver_batch(self, deliveries: Sequence[Delivery]) -> list[BaseException | None]:
        by_path: dict[str, list[bytes]] = {}
        for d in deliveries:
            by_path.setdefault(self.path_for(d), []).append(self._line(d))
        if self._thread is None:
            self._thread = _WriterThread(f"file-{self.name}", self._write)
        written = self._thread.submit(by_path)
        # a write once started is waited for, as anyio's to_thread does: told "failed" (a timeout, a
        # shutdown) while the lines still land, the core would write them again
        with anyio.CancelScope(shield=True):
            await written
        return [None] * len(deliveries)

    def _line(self, delivery: Delivery) -> bytes:
        if delivery.body is not None and not delivery.reshaped:
            return delivery.body + b"\n"
        body = (
            {
                "id": delivery.event.id,
                "trigger": delivery.event.trigger,
                "route": delivery.route,
                "payload": delivery.payload,
            }
            if delivery.reshaped
            else delivery.payload
        )
        return orjson.dumps(body) + b"\n"

    def _write(self, by_path: dict[str, list[bytes]]) -> None:
        for path, lines in by_path.items():
            handle = self._handle(path)
            handle.write(b"".join(lines))
            handle.flush()
            if self.fsync:
                os.fsync(handle.fileno())

    def _handle(self, path: str) -> IO[bytes]:
        handle = self._handles.get(path)
        if handle is None:
            if self.dated:  # a new day: yesterday's file will not be written again
                self._close_all()
            target = Path(path)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, self.mode)
                handle = os.fdopen(fd, "ab")
            except OSError as exc:
                raise PermanentError(f"cannot open {path}: {exc.strerror}") from exc
            self._handles[path] = handle
        return handle

    def _close_all(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    async def close(self) -> None:
        if self._thread is not None:
            thread, self._thread = self._thread, None
            await anyio.to_thread.run_sync(thread.stop)
        self._close_all()

    def describe(self, delivery: Delivery) -> dict[str, Any]:
        return {"path": self.path_for(delivery), "line": orjson.loads(self._line(delivery))}


class _WriterThread:
    """One thread that runs `work` on what `submit` hands it, in order; each result goes back to the loop
    that handed it over."""

    def __init__(self, name: str, work: Callable[[dict[str, list[bytes]]], None]) -> None:
        self._work = work
        self._queue: queue.SimpleQueue[tuple[Any, asyncio.AbstractEventLoop, asyncio.Future[None]] | None]
        self._queue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: dict[str, list[bytes]]) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((job, loop, future))
        return future

    def stop(self) -> None:
        """Ends the thread once what was handed over before is done."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            job, loop, future = item
            outcome: BaseException | None = None
            try:
                self._work(job)
            except BaseException as exc:  # handed to the waiting coroutine, which raises it
                outcome = exc
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(_settle, future, outcome)


def _settle(future: asyncio.Future[None], exc: BaseException | None) -> None:
    if future.done():  # its waiter was cancelled (it never is while shielded; kept safe anyway)
        return
    if exc is None:
        future.set_result(None)
    else:
        future.set_exception(exc)


@hookimpl
def event_router_output_types() -> list[type[Output]]:
    return [FileOutput]
