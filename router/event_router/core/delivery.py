"""One worker per output: takes due deliveries, runs them with the output's concurrency, records outcomes.

New deliveries arrive in memory straight from the pipeline (no read back from disk on the hot path).
When more are pending than the in-memory buffer holds, or after a restart, the worker reads them from
the spool in due order until it has caught up; the spool stays the only truth about what is pending.
Deliveries with an ordering key are always read from the spool, which hands out only the first pending
one of each key (`event_router.core.spool.BLOCKED`): the worker reads again as soon as one is stored or
one is finished, so the next of its key follows at once.
Times are read from the spool's clock, which wall-clock jumps do not move (event_router.core.clock).
Before it starts a batch the worker asks the output's gate (event_router.core.gate): paused by an operator,
or held by the output's breaker, nothing starts and nothing is fetched.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import orjson
from anyio.abc import TaskStatus

from event_router.api.errors import DeliveryError, RetryableError, SpoolError, answer_excerpt
from event_router.api.event import Event
from event_router.api.plugin import Delivery, is_retryable
from event_router.api.ratelimit import Pace
from event_router.api.retry import RetryPolicy
from event_router.core.gate import Admission, DeliveryGate
from event_router.core.model import OutputConfig, RouterConfig
from event_router.core.plan import PlannedDelivery
from event_router.core.spool import Attempt, AttemptOutcome, DeliveryRow, Spool
from event_router.core.stats import Stats
from event_router.core.tap import Tap

if TYPE_CHECKING:  # imported only with `[router.telemetry]`: it needs the `otel` extra
    from event_router.core.telemetry import AttemptTrace, Telemetry

log = logging.getLogger("event_router.core.delivery")

#: of a delivery's failed attempts, the first and every WARN_EVERY-th are logged as warnings, the rest as info
WARN_EVERY = 10

#: backoff between tries to commit delivery outcomes while the spool cannot write (disk full...)
COMMIT_RETRY = RetryPolicy(initial_backoff=0.1, max_backoff=5.0)


@dataclass(slots=True)
class _Pending:
    did: int
    route: str
    attempts: int
    first_at: float
    #: the event's id and trigger, kept after `shed` for the log lines of the outcome
    event_id: str = ""
    trigger: str = ""
    event: Event | None = None
    body: bytes | None = None
    payload: Any = None
    payload_raw: bytes | None = None
    reshaped: bool = False
    #: the span of the attempt under way, with telemetry on (ended when its outcome is recorded)
    trace: AttemptTrace | None = None
    #: has an ordering key: once finished, the next of its key is due in the spool
    keyed: bool = False
    #: of its latest attempt, for the attempt's record: Unix time it began, seconds it took, and what the
    #: receiver answered (status, the start of the answer) when the output says
    tried_at: float = 0.0
    took: float = 0.0
    status: int | None = None
    answer: str | None = None

    @classmethod
    def from_row(cls, row: DeliveryRow) -> _Pending:
        return cls(
            did=row.did,
            route=row.route,
            attempts=row.attempts,
            first_at=row.first_at,
            event_id=row.event_id,
            trigger=row.trigger,
            body=row.body,
            payload_raw=row.payload,
            reshaped=row.payload is not None,
            keyed=row.ordering_key is not None,
        )

    def shed(self) -> None:
        """Attempted: recording the outcome needs only ids and times, and it may wait for a slow commit."""
        self.event = self.body = self.payload = self.payload_raw = None

    def to_delivery(self, route_options: Mapping[str, Any]) -> Delivery:
        if self.event is None:
            assert self.body is not None
            self.event = Event.from_json(self.body)
        if self.reshaped and self.payload_raw is not None and self.payload is None:
            self.payload = orjson.loads(self.payload_raw)
        payload = self.payload if self.reshaped else self.event.to_dict()
        return Delivery(
            id=self.did,
            event=self.event,
            payload=payload,
            route=self.route,
            attempt=self.attempts + 1,
            route_options=route_options,
            reshaped=self.reshaped,
            body=None if self.reshaped else self.body,
        )


def describe_failure(exc: BaseException) -> str:
    """One line for logs and dead letters: the output's own message, or the exception type and text."""
    if isinstance(exc, DeliveryError):
        text = str(exc)
        # a code ends the line, where `dlq list` readers look for it ("... [error.connector.recordNotFound]"),
        # except an HTTP status the message says already ("answered 422" needs no "[422]")
        said = exc.code is not None and exc.code.isdigit() and re.search(rf"\b{exc.code}\b", text) is not None
        return f"{text} [{exc.code}]" if exc.code and not said else text
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _drop_traceback(exc: BaseException | None) -> None:
    """An outcome waits for its commit; its traceback's frames would keep the deliveries (parsed events,
    request bodies) alive until then."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__


class LiveConfig(Protocol):
    """Where a worker reads the configuration in force: the pipeline, whose `config` a reload swaps in one
    step. A delivery's route options and retry policy are looked up there when it is attempted, so a reload
    that changes a route applies to the deliveries already pending."""

    @property
    def config(self) -> RouterConfig: ...

    @property
    def tap(self) -> Tap: ...

    @property
    def telemetry(self) -> Telemetry | None: ...


class OutputWorker:
    """Delivers everything routed to one output, at most `concurrency` batches at a time."""

    def __init__(
        self,
        config: OutputConfig,
        spool: Spool,
        stats: Stats,
        *,
        live: LiveConfig,
        # bounds the deliveries held in memory per output, whatever the backlog; beyond it they wait in
        # the spool and are read in due order
        buffer_size: int = 1024,
        poll_interval: float = 1.0,
        predecessor: OutputWorker | None = None,
        gate: DeliveryGate | None = None,
    ):
        self.config = config
        #: asked before each batch: the output paused, or its breaker open (one gate per output, kept by the
        #: app across reloads; a worker made alone gets one that is always open)
        self.gate = gate or DeliveryGate(config.name)
        self.name = config.name
        self.plugin = config.plugin
        self.spool = spool
        self.stats = stats
        self.live = live
        self.buffer_size = buffer_size
        self.poll_interval = poll_interval
        self._buffer: deque[_Pending] = deque()
        #: deliveries in the buffer or in flight, by id: a spool read must not hand them out twice
        self._claimed: dict[int, _Pending] = {}
        #: True while the spool may hold due deliveries that are not in memory (start-up, overflow)
        self._spilled = True
        self._next_poll = 0.0
        self._next_due: float | None = None
        #: why the last spool read failed (a transient failure: the database away), until one succeeds
        self._read_failure: str | None = None
        #: a delivery with an ordering key was stored, or one was finished: the spool may have one due
        self._keyed = False
        self._wake = asyncio.Event()
        self._stopping = False
        # a semaphore, not a CapacityLimiter: the batch task releases what the loop acquired
        self._limiter = anyio.Semaphore(config.concurrency)
        # and this one bounds the batches attempted whose outcomes are not committed yet: while a commit
        # is slow (a checkpoint, a busy disk) the worker went on attempting deliveries that all waited in
        # memory, unbounded, and the heap kept the peak (RSS rose in steps; bench/RESULTS.md, Soak)
        self._unrecorded = anyio.Semaphore(config.concurrency * self.UNRECORDED_PER_SLOT)
        self.in_flight = 0
        #: the worker this one replaces on a reload, while it finishes its attempts: what it has in flight
        #: is not handed out here too (the app clears it once that worker ended)
        self.predecessor = predecessor
        #: `rate_limit` (see `_paced`); a reload that keeps the limit keeps the bucket, so it grants no new burst
        kept: Pace | None = predecessor._pace if predecessor is not None else None
        self._pace: Pace | None = kept if kept is not None and kept.limit == config.rate_limit else None
        if self._pace is None and config.rate_limit is not None:
            self._pace = Pace(config.rate_limit)
        #: the wait for the rate limit, while there is one: `stop` ends it
        self._pacing: anyio.CancelScope | None = None
        #: the wait for a free slot, while there is one: a failed batch ends it
        self._slot_wait: anyio.CancelScope | None = None

    #: deliveries near the head of the buffer keep the parsed event; those behind keep its stored JSON
    PARSED_AHEAD = 64
    #: batches attempted and not yet recorded, per unit of concurrency (in flight or awaiting the commit)
    UNRECORDED_PER_SLOT = 4

    def offer_new(
        self, did: int, event: Event, planned: PlannedDelivery, *, body: bytes, payload_raw: bytes | None
    ) -> None:
        """A delivery the pipeline just stored (`body`, `payload_raw`: its stored JSON). Kept in memory
        unless the buffer is full."""
        if did in self._claimed or self._stopping:  # a spool read already took it; or left to a successor
            return
        if planned.ordering_key is not None:
            # it may wait behind an earlier one of its key: only the spool knows, and hands it out when due
            self._keyed = True
            self._wake.set()
            return
        if self._spilled or len(self._buffer) >= self.buffer_size:
            self._spilled = True
            self._wake.set()
            return
        pending = _Pending(
            did=did,
            route=planned.route,
            attempts=0,
            first_at=self.spool.clock.now(),
            event_id=event.id,
            trigger=event.trigger,
            reshaped=planned.reshaped,
        )
        pending.body = body  # held by the spool write anyway; outputs may send these bytes as they are
        if len(self._buffer) < self.PARSED_AHEAD:  # goes out soon: no need to parse it again
            pending.event, pending.payload = event, planned.payload
        else:
            # a backlog is forming (the output is slow or down): a parsed event is several times its JSON and,
            # held for minutes then freed, fragments the heap; the bytes are parsed when delivered
            pending.payload_raw = payload_raw
        self._buffer.append(pending)
        self._claimed[did] = pending
        self._wake.set()

    def rebase(self, shift: float) -> None:
        """The spool's clock moved by `shift` seconds (a wall-clock jump): move the times held in memory too."""
        for pending in self._claimed.values():
            pending.first_at += shift
        self._next_poll += shift
        if self._next_due is not None:
            self._next_due += shift

    def wake(self) -> None:
        """Look at the spool now (a `dlq replay` from another process added deliveries)."""
        self._spilled = True
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def stop(self) -> None:
        """Take no new delivery; the ones in flight finish (the app bounds how long it waits). What is held
        and not begun is let go at once, for a successor (a reload) to take from the spool."""
        self._stopping = True
        for pending in self._buffer:
            self._claimed.pop(pending.did, None)
        self._buffer.clear()
        self._wake.set()
        if self._pacing is not None:
            self._pacing.cancel()

    @property
    def holding(self) -> Collection[int]:
        """The deliveries in memory here: buffered, or being attempted and recorded."""
        return self._claimed

    def _excluded(self) -> Collection[int]:
        """Deliveries a spool read must skip: in memory here, or still being attempted by a predecessor (a
        second reload may come before the first one's predecessor is done)."""
        if self.predecessor is None:
            return self._claimed
        excluded = set(self._claimed)
        before: OutputWorker | None = self.predecessor
        while before is not None:
            excluded.update(before._claimed)
            before = before.predecessor
        return excluded

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await self.plugin.open()
        task_status.started()
        self.gate.watch(self.wake)
        # Each batch runs in a task of its own, made with asyncio's create_task: at one delivery per batch,
        # an anyio task group's start_soon cost ten times as much on the event loop that also answers the
        # webhook (bench/RESULTS.md). This loop keeps what the task group did: a batch that fails fails the
        # worker at once, and the worker ends only once its batches have. A batch is cancelled through its
        # anyio cancel scope, never by `Task.cancel`: anyio delivers the cancellation again until the batch
        # leaves its scope, and honours the shields inside it (an output's write that must not be cut off).
        batches: dict[asyncio.Task[None], anyio.CancelScope] = {}
        failures: list[BaseException] = []
        raised = 0  # the failures raised from here; those after them are logged

        def finished(task: asyncio.Task[None]) -> None:
            del batches[task]
            error = None if task.cancelled() else task.exception()
            if error is not None:
                failures.append(error)
                self._wake.set()
                # a wait for a slot or for the rate limit ends too: the worker fails at once
                if self._slot_wait is not None:
                    self._slot_wait.cancel()
                if self._pacing is not None:
                    self._pacing.cancel()

        try:
            while not self._stopping and not failures:
                held = self.gate.wait()
                if held:  # paused, or the breaker open: nothing starts, nothing more is read
                    await self._sleep(held)
                    continue
                self._refill()
                if not self._buffer:
                    await self._sleep()
                    continue
                if not await self._take_slots():
                    continue
                # asked again once the slots are free: a pause or the breaker may have come meanwhile
                admission = None if self.stopping or failures else self.gate.admit()
                if admission is None:
                    self._limiter.release()
                    self._unrecorded.release()
                    continue
                # paced once admitted, so that attempts start at the pace the tokens come
                count = await self._paced(min(self.plugin.max_batch, len(self._buffer), admission.limit))
                if self.stopping or failures:
                    self.gate.abandoned(admission)  # a probe's admission, unanswered, would hold the gate shut
                    self._limiter.release()
                    self._unrecorded.release()
                    break
                count = min(count, len(self._buffer))
                batch = [self._buffer.popleft() for _ in range(count)]
                self.in_flight += len(batch)
                scope = anyio.CancelScope()
                task = asyncio.get_running_loop().create_task(self._run_batch(batch, admission, scope))
                batches[task] = scope
                task.add_done_callback(finished)
            while batches and not failures:  # stopping: what is in flight finishes
                await asyncio.wait(list(batches), return_when=asyncio.FIRST_COMPLETED)
            if failures:
                raised = len(failures)
                raise failures[0] if len(failures) == 1 else BaseExceptionGroup("batches failed", failures)
        finally:
            self.gate.unwatch(self.wake)
            with anyio.CancelScope(shield=True):
                for scope in batches.values():
                    scope.cancel()
                while batches:
                    await asyncio.wait(list(batches))
                for error in failures[raised:]:  # a batch that failed as the worker ended
                    log.error(
                        "a batch of the output failed as its worker ended", exc_info=error, extra={"output": self.name}
                    )
                await self.plugin.close()

    async def _take_slots(self) -> bool:
        """A slot of `_unrecorded` and one of `_limiter`, taken at once when both are free; False, holding
        neither, when a failed batch ended the wait (`_slot_wait`).

        anyio's `acquire` yields to the event loop even when the slot is free: with two per batch, a busy loop
        made each delivery in the buffer wait for two turns of it behind the one before (an output that
        takes one delivery per batch, as http does, started them milliseconds apart with every slot free)."""
        try:
            self._unrecorded.acquire_nowait()
        except anyio.WouldBlock:
            if not await self._wait_for(self._unrecorded):
                return False
        try:
            self._limiter.acquire_nowait()
        except anyio.WouldBlock:
            try:
                taken = await self._wait_for(self._limiter)
            except BaseException:  # cancelled while waiting: the slot taken above goes back
                self._unrecorded.release()
                raise
            if not taken:
                self._unrecorded.release()
                return False
        return True

    async def _wait_for(self, slots: anyio.Semaphore) -> bool:
        """Wait for a slot of `slots`; False when a failed batch ended the wait first (no slot taken)."""
        try:
            with anyio.CancelScope() as scope:
                self._slot_wait = scope
                await slots.acquire()
        finally:
            self._slot_wait = None
        return not scope.cancelled_caught

    async def _paced(self, most: int) -> int:
        """How many of the next `most` deliveries the output's `rate_limit` lets go now: it waits for a token
        for the first. Waiting here is no attempt: a delivery's attempts, backoff and `timeout` are untouched,
        and retries take tokens like first attempts. 0 when `stop` ended the wait."""
        if self._pace is None:
            return most
        if self._stopping:
            return 0
        granted = 0
        with anyio.CancelScope() as self._pacing:
            granted, waited = await self._pace.take(most)
            if waited:
                self.stats.incr("rate_limited", output=self.name)
        self._pacing = None
        return granted

    def _refill(self) -> None:
        now = self.spool.clock.now()
        due = self._next_due is not None and now >= self._next_due
        if not (self._spilled and not self._buffer) and not due and not self._keyed and now < self._next_poll:
            return
        room = self.buffer_size - len(self._buffer)
        if room <= 0:  # the buffer bounds memory, whatever the spool holds
            self._next_poll = now + self.poll_interval
            return
        self._keyed = False
        try:
            rows = self.spool.fetch_due(self.name, now, room, self._excluded())
        except SpoolError as exc:
            if not exc.transient:
                raise
            # the spool cannot be read now (its database restarting): what is in memory goes on, and the
            # spool is read again at the next poll; the worker is not failed, which would cancel the
            # attempts in flight and send them again
            if self._read_failure is None:
                log.warning(
                    "cannot read due deliveries from the spool; reading again every poll",
                    extra={"output": self.name, "error": str(exc)},
                )
            self._read_failure = str(exc)
            self._next_poll = now + self.poll_interval
            return
        if self._read_failure is not None:
            log.info("reading due deliveries from the spool again", extra={"output": self.name})
            self._read_failure = None
        self._next_poll = now + self.poll_interval
        if due:
            self._next_due = None
        for row in rows:
            pending = _Pending.from_row(row)
            self._buffer.append(pending)
            self._claimed[row.did] = pending
        self._spilled = len(rows) >= room

    async def _sleep(self, held: float | None = None) -> None:
        """Until the next poll or due retry (`held`: until the gate may open), or until woken."""
        now = self.spool.clock.now()
        until = self._next_poll if self._next_due is None else min(self._next_poll, self._next_due)
        if not self._wake.is_set():
            # a timer that wakes, not a cancel scope: this wait begins and ends at every delivery when
            # deliveries come one at a time
            timer = asyncio.get_running_loop().call_later(
                max(0.0, until - now) if held is None else held, self._wake.set
            )
            try:
                await self._wake.wait()
            finally:
                timer.cancel()
        self._wake.clear()

    async def _run_batch(self, batch: list[_Pending], admission: Admission, scope: anyio.CancelScope) -> None:
        with scope:
            await self._deliver_batch(batch, admission)

    async def _deliver_batch(self, batch: list[_Pending], admission: Admission) -> None:
        released = False
        answered = False
        try:
            outcomes = await self._attempt(batch)
            self.gate.settled(admission, outcomes)
            answered = True
            for pending in batch:
                pending.shed()
            for outcome in outcomes:
                _drop_traceback(outcome)
            # the slot limits calls to the receiver, not our own commit: free it for the next delivery
            # now; the ids stay claimed until the outcome is durable, so nothing is handed out twice
            self.in_flight -= len(batch)
            self._limiter.release()
            released = True
            self._wake.set()
            await self._record(batch, outcomes)
        finally:
            if not answered:
                self.gate.abandoned(admission)
            for pending in batch:
                self._claimed.pop(pending.did, None)
            self._unrecorded.release()
            if not released:
                self.in_flight -= len(batch)
                self._limiter.release()
            self._wake.set()

    async def _attempt(self, batch: list[_Pending]) -> list[BaseException | None]:
        """Attempt `batch`; one outcome per delivery (None: delivered). Each delivery notes when its attempt
        began, how long it took (a batch's, for an output that delivers several at once) and what the receiver
        answered, for the attempt's record (`_record`)."""
        deliveries: list[Delivery] = []
        tried_at, started = time.time(), time.monotonic()
        try:
            config = self.live.config
            deliveries = [p.to_delivery(config.route_options(p.route)) for p in batch]
            telemetry = self.live.telemetry
            if telemetry is not None:  # a span per attempt; the delivery carries its context to the output
                for pending, delivery in zip(batch, deliveries, strict=True):
                    pending.trace = telemetry.attempt(self.name, delivery)
            with anyio.fail_after(self.config.timeout):
                if len(deliveries) == 1 and self.plugin.max_batch == 1:
                    await self.plugin.deliver(deliveries[0])
                    outcomes: list[BaseException | None] = [None]
                else:
                    outcomes = list(await self.plugin.deliver_batch(deliveries))
        except TimeoutError:
            error = RetryableError(f"output {self.name} did not answer within {self.config.timeout:g}s")
            outcomes = [error] * len(batch)
        except Exception as exc:  # an output's failure is the delivery's outcome, never the worker's end
            outcomes = [exc] * len(batch)
        if len(outcomes) != len(batch):
            error = RetryableError(f"output {self.name} returned {len(outcomes)} outcomes for {len(batch)} deliveries")
            outcomes = [error] * len(batch)
        took = time.monotonic() - started
        for index, (pending, outcome) in enumerate(zip(batch, outcomes, strict=True)):
            pending.tried_at, pending.took = tried_at, took
            said: DeliveryError | Delivery | None = outcome if isinstance(outcome, DeliveryError) else None
            if outcome is None and index < len(deliveries):
                said = deliveries[index]
            pending.status = said.status if said is not None else None
            pending.answer = answer_excerpt(said.answer) if said is not None else None
        return outcomes

    async def _commit(
        self,
        count: int,
        *,
        done: list[int],
        retry: list[tuple[int, int, float, str]],
        dead: list[tuple[int, str, str, int]],
        attempts: Sequence[Attempt] = (),
    ) -> list[int | None]:
        """Commit outcomes (with the attempts they came from), trying again while the spool's failure is
        transient; the new dead letters' ids.

        Giving up would fail the worker, and its successor would read the deliveries back from the spool
        and send them again. Until the commit succeeds the ids stay claimed, so nothing is attempted twice;
        `_unrecorded` bounds how many batches wait like this. A failure that is not transient (`SpoolError
        .transient`) would fail the same way at every try: it fails the worker.
        """
        failures = 0
        while True:
            try:
                dlids = await self.spool.settle(done=done, retry=retry, dead=dead, attempts=attempts, lazy=True)
            except SpoolError as exc:
                if not exc.transient:
                    raise
                failures += 1
                if failures == 1:
                    log.error(
                        "cannot record delivery outcomes; trying the commit again, the deliveries are not resent",
                        extra={"output": self.name, "deliveries": count, "error": str(exc)},
                    )
                self.stats.incr("outcome_commit_failures", output=self.name)
                await anyio.sleep(COMMIT_RETRY.delay(failures))
                continue
            if failures:
                log.info(
                    "delivery outcomes recorded after the spool failed",
                    extra={"output": self.name, "deliveries": count, "tries": failures + 1},
                )
            return dlids

    async def _record(self, batch: list[_Pending], outcomes: list[BaseException | None]) -> None:
        now = self.spool.clock.now()
        # with telemetry on: the attempts' spans end now, when the output answered, not once committed
        answered = time.time_ns() if batch[0].trace is not None else 0
        done: list[int] = []
        retry: list[tuple[int, int, float, str]] = []
        dead: list[tuple[int, str, str, int]] = []
        #: what the log lines say of each delivery, by id
        failed: dict[int, _Pending] = {}
        recovered: list[_Pending] = []
        #: each attempt's record, committed with its outcome
        tried: list[Attempt] = []
        for pending, outcome in zip(batch, outcomes, strict=True):
            attempts = pending.attempts + 1
            if outcome is None:
                done.append(pending.did)
                if pending.attempts:
                    recovered.append(pending)
                tried.append(self._attempt_record(pending, "delivered"))
                continue
            failed[pending.did] = pending
            message = describe_failure(outcome)
            policy = self.live.config.retry_for(self.name, pending.route)
            result: AttemptOutcome = "retry"
            if not is_retryable(outcome):
                result = "permanent"
                dead.append((pending.did, result, message, attempts))
            elif policy.exhausted(attempts, now - pending.first_at):
                result = "retries_exhausted"
                dead.append((pending.did, result, message, attempts))
            else:
                retry_after = outcome.retry_after if isinstance(outcome, DeliveryError) else None
                due = now + policy.delay(attempts, retry_after, age=now - pending.first_at)
                retry.append((pending.did, attempts, due, message))
            tried.append(self._attempt_record(pending, result, message))
        dlids = await self._commit(len(batch), done=done, retry=retry, dead=dead, attempts=tried)
        # a finished delivery with an ordering key made the next of its key due (in the same commit)
        if any(pending.keyed and pending.did not in failed for pending in batch) or any(
            failed[did].keyed for did, _, _, _ in dead
        ):
            self._keyed = True
        # armed only now: a due time passing while the outcome was still being committed (a short jittered
        # backoff, a slow disk) found no row to fetch and was used up, leaving the retry to the next poll
        for _, _, due, _ in retry:
            self._next_due = due if self._next_due is None else min(self._next_due, due)
        if done:
            self.stats.incr("deliveries", len(done), output=self.name, outcome="delivered")
            self.stats.observe_all(
                "delivery_latency_seconds",
                [now - pending.first_at for pending, outcome in zip(batch, outcomes, strict=True) if outcome is None],
                output=self.name,
            )
        # a delivery that failed before and now went through: the end of an outage shows in the log
        for pending in recovered:
            log.info(f"delivered after {pending.attempts + 1} attempts", extra=self._fields(pending))
        for did, attempts, due, message in retry:
            self.stats.incr("deliveries", output=self.name, outcome="retry")
            # the first failure, and every WARN_EVERY-th, is a warning: an outage shows in a warning-level
            # log, once per delivery and then now and again, not at every attempt
            level = logging.WARNING if attempts == 1 or attempts % WARN_EVERY == 0 else logging.INFO
            log.log(
                level,
                "delivery failed, will retry",
                extra={
                    **self._fields(failed[did]),
                    "attempt": attempts,
                    "retry_in": round(due - now, 3),
                    "error": message,
                },
            )
        for (did, reason, message, attempts), dlid in zip(dead, dlids, strict=True):
            self.stats.incr("deliveries", output=self.name, outcome=reason)
            self.stats.incr("dead_letters", reason=reason, output=self.name)
            log.warning(
                "delivery dead-lettered",
                extra={
                    **self._fields(failed[did]),
                    "dead_letter": dlid,
                    "reason": reason,
                    "attempts": attempts,
                    "error": message,
                },
            )
        tapping = self.live.tap.active
        if not (tapping or answered):
            return
        # what became of each attempt, built once for the tap and the attempts' spans alike
        records = list(self._tapped(batch, now, retry, dead, dlids))
        if tapping:
            self.live.tap.deliveries(self.name, records)
        if answered:
            for pending, outcome, record in zip(batch, outcomes, records, strict=True):
                if pending.trace is not None:
                    pending.trace.end(record, outcome, answered)

    @staticmethod
    def _attempt_record(pending: _Pending, outcome: AttemptOutcome, error: str | None = None) -> Attempt:
        return Attempt(
            pending.did,
            pending.attempts + 1,
            pending.tried_at,
            pending.took,
            outcome,
            pending.status,
            error,
            pending.answer,
        )

    def _tapped(
        self,
        batch: list[_Pending],
        now: float,
        retry: list[tuple[int, int, float, str]],
        dead: list[tuple[int, str, str, int]],
        dlids: list[int | None],
    ) -> Iterator[dict[str, Any]]:
        """The tap's record of each attempt in `batch`, as `_record` settled it."""
        retried = {did: (attempts, due, message) for did, attempts, due, message in retry}
        parted = {
            did: (reason, message, attempts, dlid)
            for (did, reason, message, attempts), dlid in zip(dead, dlids, strict=True)
        }
        for pending in batch:
            record: dict[str, Any] = {
                "route": pending.route,
                "event_id": pending.event_id,
                "trigger": pending.trigger,
                "delivery": pending.did,
            }
            if pending.did in retried:
                attempts, due, message = retried[pending.did]
                record.update(outcome="retry", attempt=attempts, error=message, retry_in=round(due - now, 3))
            elif pending.did in parted:
                reason, message, attempts, dlid = parted[pending.did]
                record.update(outcome=reason, attempt=attempts, error=message, dead_letter=dlid)
            else:
                record.update(outcome="delivered", attempt=pending.attempts + 1)
            yield record

    def _fields(self, pending: _Pending) -> dict[str, Any]:
        """What every log line about a delivery carries: enough to find the event, the route and the output
        (and the trace, with telemetry on)."""
        fields = {
            "event_id": pending.event_id,
            "trigger": pending.trigger,
            "route": pending.route,
            "output": self.name,
            "delivery": pending.did,
        }
        if pending.trace is not None:
            fields["trace_id"] = pending.trace.trace_id
        return fields
