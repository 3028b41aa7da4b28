"""The router process's side of a webhook input's front processes (`processes = N`).

The router opens the listening socket (so a port that is taken fails the start, as without fronts), starts
N `webhook_front` processes that accept on it, and answers what they forward: `WebhookInput.screen`,
`prepare` and `store`, exactly what its own HTTP handler runs. Requests that arrive while a store is being
committed are stored together in the next one, so under load one submit and one commit cover many events.

A front that exits unexpectedly is logged and started again with backoff while the others (and the
listening socket) stay; its clients' requests in progress get a connection error and, with no 2xx, send
again. Stopping (shutdown, reload) tells every front to stop accepting and finish its requests, answers
them, then closes the socket.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from typing import TYPE_CHECKING

import anyio
import orjson
from anyio.abc import TaskStatus

from event_router.api import EventSink, Rejected, RouterError
from event_router.inputs.frames import FrameChannel, encode
from event_router.inputs.webhook_front import (
    ANSWER,
    ANSWER_HEAD,
    DONE,
    FULL,
    READY,
    REFUSED,
    REQUEST,
    REQUEST_HEAD,
    STOP,
)
from event_router.ops.logs import JsonFormatter, TextFormatter

if TYPE_CHECKING:
    from event_router.inputs.webhook import Answer, Parsed, WebhookInput

#: how long a front may take from spawn to accepting (~0.2 s here)
START_TIMEOUT = 20.0
#: how long a stopping front waits for the answers to requests in progress before it closes their connections
DRAIN_SECONDS = 5.0
MAX_RESTART_DELAY = 30.0
#: events one submit takes at most; more wait for the next
MAX_BATCH = 512
#: stores in flight at once. One: what arrives during a commit waits and goes into the next store whole.
#: A second store only made a second, smaller commit group queued behind the first in the spool's one
#: writer thread; at 64 senders it cost 10-15 % more router CPU per request (alternating runs: ratio to
#: the bare server 0.58-0.63 with one store, 0.52-0.57 with two)
STORES = 1
_FAILED: Answer = (500, {"error": "the router failed on this request; it was not stored"}, None)
#: environment a front must not inherit: systemd's notify and socket activation are the router's own
_PRIVATE_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


def _log_format() -> str:
    """The router's log format, so a front's lines look like the router's own."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, JsonFormatter):
            return "json"
        if isinstance(handler.formatter, TextFormatter):
            return "text"
    return "auto"


class _Link(FrameChannel):
    """The router's end of one front's channel."""

    def __init__(self, fronts: Fronts, index: int):
        super().__init__(fronts.log)
        self.fronts = fronts
        self.index = index
        self.ready = asyncio.Event()
        self.done = asyncio.Event()
        self.closed = asyncio.Event()
        #: the front is at max_connections (it answers new connections 503)
        self.full = False

    def on_frame(self, kind: int, rid: int, payload: bytes) -> None:
        if kind == REQUEST[0]:
            self.fronts.take(self, rid, payload)
        elif kind == REFUSED[0]:
            self.fronts.refused_by_front(payload)
        elif kind == READY[0]:
            self.ready.set()
        elif kind == DONE[0]:
            self.done.set()
        elif kind == FULL[0]:
            self.full = payload == b"1"

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()

    def answer(self, rid: int, answer: Answer) -> None:
        if not self.open:
            return  # the front is gone; its client saw the connection drop and gets no 2xx
        status, body, headers = answer
        head = orjson.dumps(headers) if headers else b""
        self.send(encode(ANSWER, rid, ANSWER_HEAD.pack(status, len(head)), head, orjson.dumps(body)))

    def stop(self) -> None:
        self.send(encode(STOP, 0))


class Fronts:
    """Starts, supervises and serves one webhook input's front processes."""

    def __init__(self, webhook: WebhookInput, sink: EventSink):
        self.webhook = webhook
        self.sink = sink
        self.log = webhook.log
        self.links: list[_Link | None] = [None] * webhook.processes
        #: each front's current process, set as soon as it is spawned, so stopping reaches one still starting
        self.procs: list[asyncio.subprocess.Process | None] = [None] * webhook.processes
        self._queue: list[tuple[_Link, int, Parsed | Rejected]] = []
        #: store tasks running: up to STORES
        self._storing: set[asyncio.Task[None]] = set()

    def is_ready(self) -> bool:
        return self.not_ready_reason() is None

    def not_ready_reason(self) -> str | None:
        for index, link in enumerate(self.links):
            if link is None or not link.ready.is_set() or link.closed.is_set():
                return f"webhook front process {index} is not running"
            if link.full:
                return (
                    f"webhook front process {index} is at max_connections "
                    f"({self.webhook.max_connections}): new connections get 503"
                )
        return None

    # --- requests ----------------------------------------------------------------------------------------

    def take(self, link: _Link, rid: int, payload: bytes) -> None:
        """One forwarded request: checked and decoded now, queued for the next store if it holds an event."""
        from event_router.inputs.webhook import Received

        try:
            (size,) = REQUEST_HEAD.unpack_from(payload)
            start = REQUEST_HEAD.size
            meta = orjson.loads(payload[start : start + size])
            raw = payload[start + size :]
            # names are lower-cased by the front: a plain dict looks them up as the checks expect
            received = Received(meta["r"], meta["h"], meta["p"], meta["t"])
        except (ValueError, KeyError, TypeError) as exc:
            self.log.error("webhook front sent a malformed request frame", extra={"error": str(exc)})
            self.webhook.refused(self.sink, None, _FAILED)
            link.answer(rid, _FAILED)
            return
        try:
            answer = self.webhook.screen(received)
            if answer is None:
                prepared = self.webhook.prepare(received, raw)
                if not isinstance(prepared, tuple):
                    self._queue.append((link, rid, prepared))
                    if len(self._storing) < STORES:
                        self._start_store()
                    return
                answer = prepared
        except Exception:  # a bug must cost this request, not the channel every other request rides on
            self.log.exception("the router failed on a webhook request; it was not stored")
            answer = _FAILED
        self.webhook.refused(self.sink, received.remote, answer)
        link.answer(rid, answer)

    def refused_by_front(self, payload: bytes) -> None:
        """A request a front answered itself (no such path, body too large, malformed HTTP...)."""
        try:
            (size,) = REQUEST_HEAD.unpack_from(payload)
            start = REQUEST_HEAD.size
            meta = orjson.loads(payload[start : start + size])
            body = orjson.loads(payload[start + size :])
            self.webhook.refused(self.sink, meta["r"], (int(meta["s"]), body, None))
        except (ValueError, KeyError, TypeError) as exc:
            self.log.error("webhook front sent a malformed refusal frame", extra={"error": str(exc)})

    def _start_store(self) -> None:
        # a plain asyncio task: stopping the input must not cancel a store whose clients wait for it
        task = asyncio.get_running_loop().create_task(self._store())
        self._storing.add(task)
        task.add_done_callback(self._stored)

    def _stored(self, task: asyncio.Task[None]) -> None:
        self._storing.discard(task)
        if self._queue and len(self._storing) < STORES:  # a failure ended it early: the rest still get stored
            self._start_store()

    async def _store(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            try:
                answers = await self.webhook.store(self.sink, [item for _, _, item in batch])
            except Exception:  # store answers every failure it knows; this is one it does not: a bug
                self.log.exception("the router failed on webhook requests; they were not stored")
                answers = [_FAILED] * len(batch)
            for (link, rid, item), answer in zip(batch, answers, strict=True):
                if answer[0] >= 400:
                    meta = item.meta if isinstance(item, Rejected) else item.event.meta
                    self.webhook.refused(self.sink, meta.get("remote"), answer)
                link.answer(rid, answer)

    # --- processes ---------------------------------------------------------------------------------------

    async def run(self, listener: socket.socket, *, task_status: TaskStatus[None]) -> None:
        try:
            for index in range(len(self.procs)):
                await self._spawn(index, listener)
            task_status.started()
            async with anyio.create_task_group() as tg:
                for index in range(len(self.procs)):
                    tg.start_soon(self._supervise, index, listener)
        finally:
            with anyio.CancelScope(shield=True):
                await self._stop_all()

    async def _spawn(self, index: int, listener: socket.socket) -> None:
        """Start front `index` and wait until it accepts; RouterError if it cannot."""
        webhook = self.webhook
        ours, theirs = socket.socketpair()
        settings = {
            "listen_fd": listener.fileno(),
            "channel_fd": theirs.fileno(),
            "path": webhook.route_path,
            "max_body": webhook.max_body,
            "max_connections": webhook.max_connections,
            "header_timeout": webhook.header_timeout,
            "body_timeout": webhook.body_timeout,
            "drain_seconds": DRAIN_SECONDS,
            "tls": webhook.tls_paths(),
            "log_level": logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower(),
            "log_format": _log_format(),
        }
        env = {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "event_router.inputs.webhook_front",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                pass_fds=(listener.fileno(), theirs.fileno()),
                env=env,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.procs[index] = proc
        assert proc.stdin is not None
        proc.stdin.write(orjson.dumps(settings))
        proc.stdin.close()
        link = _Link(self, index)
        await asyncio.get_running_loop().connect_accepted_socket(lambda: link, ours)
        self.links[index] = link
        exited = asyncio.ensure_future(proc.wait())
        ready = asyncio.ensure_future(link.ready.wait())
        try:
            await asyncio.wait((exited, ready), timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
            ready.cancel()
        if not link.ready.is_set():
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise RouterError(
                f"input {webhook.name}: webhook front process {index} did not start "
                f"(exit code {proc.returncode}; its error is in the log above)"
            )
        self.log.debug("webhook front started", extra={"front": index, "pid": proc.pid})

    async def _supervise(self, index: int, listener: socket.socket) -> None:
        delay = 1.0
        while True:
            proc = self.procs[index]
            assert proc is not None
            code = await proc.wait()
            self.log.error(
                "webhook front process exited; starting it again",
                extra={"front": index, "pid": proc.pid, "exit_code": code, "retry_in": delay},
            )
            while True:
                await anyio.sleep(delay)
                delay = min(delay * 2, MAX_RESTART_DELAY)
                try:
                    await self._spawn(index, listener)
                    break
                except (RouterError, OSError) as exc:
                    self.log.error("webhook front could not start", extra={"front": index, "error": str(exc)})
            delay = 1.0

    async def _stop_all(self) -> None:
        """Stop accepting everywhere, let every front finish its requests (answered here), then end them."""
        for link in self.links:
            if link is not None:
                link.stop()
        with anyio.move_on_after(DRAIN_SECONDS + 5):
            for proc in self.procs:
                if proc is not None:
                    await proc.wait()
        for proc in self.procs:
            if proc is not None and proc.returncode is None:
                self.log.warning("webhook front did not stop in time; killing it", extra={"pid": proc.pid})
                proc.kill()
                await proc.wait()
        for link in self.links:
            if link is not None:
                link.close()
        # answers to requests stored after the fronts were gone have nobody to go to; the events are stored
        while self._storing:
            await asyncio.wait(set(self._storing))
