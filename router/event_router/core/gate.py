"""Whether an output's worker may start a delivery: the one gate it consults before each batch.

Two things close it. An operator pauses the output (`event-router output pause`, the admin endpoint): no
delivery of it starts, the ones in flight finish, its backlog stays in the spool and nothing is counted as an
attempt. The pause is kept in the spool (`Spool.output_states`), so it outlives restarts and every router on
a shared spool follows it: `OutputControl` reads the states again every `POLL` seconds.

And the output's breaker (`breaker = { failures, cool_down }`), when configured: after `failures`
consecutive failed attempts the output is held open for `cool_down`: pending deliveries wait without being
attempted, so an outage burns no attempts of theirs (`max_attempts`) and sends the receiver nothing. Then
one delivery is the probe: delivered, the breaker closes and the backlog flows; failed, it stays open for
another cool-down. A batch counts as one attempt: failed when none of its deliveries went through and one
failed in a way worth retrying; a permanent failure (the receiver answered, and refused that delivery) is no
sign of an outage and counts as an answer. The breaker is each router's own, in memory; `OutputControl`
records when it opens and closes (and renews an open record) in the same table, for `status`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import anyio

from event_router.api.errors import DeliveryError, RouterError, SpoolError, did_you_mean
from event_router.api.plugin import is_retryable
from event_router.core.spool import OutputState, Spool
from event_router.core.stats import Stats

log = logging.getLogger("event_router.core.gate")

#: seconds between two reads of the spool's output states: a pause made by another process (the CLI, the
#: admin endpoint of another router) stops new deliveries within about this long
POLL = 1.0
#: an open breaker's record in the spool lapses this many seconds after it was last written; a router renews
#: it every RENEW seconds while the breaker stays open, so one that died leaves no open breaker behind
LAPSE = 60.0
RENEW = 20.0

#: the breaker's states: closed (deliveries flow), open (held for the cool-down), probing (the cool-down is
#: over: the next delivery is the probe, or the probe is in flight)
BreakerState = Literal["closed", "open", "probing"]


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """An output's `breaker = { failures, cool_down }`."""

    #: consecutive failed attempts that open it
    failures: int = 5
    #: seconds it stays open before its probe
    cool_down: float = 30.0


@dataclass(frozen=True, slots=True)
class Admission:
    """Leave to start one batch of at most `limit` deliveries; `probe`: the breaker's one delivery after its
    cool-down, whose outcome decides whether it closes."""

    limit: int
    probe: bool = False


_ANY = Admission(limit=1 << 30)


class UnknownOutput(RouterError):
    """`output pause|resume|retry` or the admin endpoint named an output router.toml does not configure."""

    def __init__(self, name: str, configured: Sequence[str]):
        known = ", ".join(sorted(configured)) or "none configured"
        super().__init__(f"no output named {name!r} (outputs: {known}){did_you_mean(name, configured)}")


def _describe(exc: BaseException) -> str:
    """A failure in one line (the delivery's own log line says more: `describe_failure`)."""
    text = str(exc)
    if isinstance(exc, DeliveryError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class DeliveryGate:
    """One output's gate: its pause (as the spool records it) and its breaker (this router's)."""

    def __init__(
        self,
        output: str,
        breaker: BreakerSettings | None = None,
        *,
        stats: Stats | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.output = output
        self.breaker = breaker
        self.stats = stats
        self.clock = clock
        self.paused = False
        #: the spool's record of the last pause or resume (Unix time; who)
        self.pause_changed_at: float | None = None
        self.pause_changed_by: str | None = None
        self.state: BreakerState = "closed"
        #: consecutive failed attempts while closed
        self.failures = 0
        #: the failure that opened the breaker, or the last probe's
        self.last_error: str | None = None
        #: Unix time the breaker opened (kept while it stays open through failed probes)
        self.opened_at: float | None = None
        self._reopens_at = 0.0
        self._probe_out = False
        #: called with no argument when the gate opens again (a resume, a probe's outcome): the workers wake
        self._watchers: list[Callable[[], None]] = []
        #: called when the breaker opens or closes (`OutputControl` records it in the spool)
        self.on_breaker: Callable[[DeliveryGate], None] | None = None

    # --- what the worker asks ------------------------------------------------------------------------

    def wait(self) -> float:
        """0.0 when a batch may start now; else the seconds until that may change by itself (inf: until
        something wakes the worker: a resume, the probe's outcome)."""
        if self.paused:
            return math.inf
        if self.state == "open":
            left = self._reopens_at - self.clock()
            if left > 0:
                return left
            self.state = "probing"
        if self.state == "probing" and self._probe_out:
            return math.inf
        return 0.0

    def admit(self) -> Admission | None:
        """Leave for the next batch, or None while the gate is closed (`wait` says for how long)."""
        if self.wait():
            return None
        if self.state == "probing":
            self._probe_out = True
            return Admission(limit=1, probe=True)
        return _ANY

    def settled(self, admission: Admission, outcomes: Sequence[BaseException | None]) -> None:
        """The receiver's answers to a batch `admit` let start (before their commit)."""
        if admission.probe:
            self._probe_out = False
        if self.breaker is None:
            return
        failure = _failure(outcomes)
        if failure is None:
            self.failures = 0
            if self.state != "closed":  # the probe went through, or a batch begun before the breaker opened
                self._close("probe delivered" if admission.probe else "a delivery went through")
            return
        if admission.probe and self.state == "probing":
            self._reopen(failure)
        elif self.state == "closed":
            self.failures += 1
            if self.failures >= self.breaker.failures:
                self._open(failure)
        # else: a batch begun before the breaker opened failed too; it adds nothing

    def abandoned(self, admission: Admission) -> None:
        """A batch ended without outcomes (its worker was cancelled): a probe's place is free again."""
        if admission.probe and self._probe_out:
            self._probe_out = False
            self._wake()

    # --- watchers ------------------------------------------------------------------------------------

    def watch(self, wake: Callable[[], None]) -> None:
        self._watchers.append(wake)

    def unwatch(self, wake: Callable[[], None]) -> None:
        if wake in self._watchers:
            self._watchers.remove(wake)

    def _wake(self) -> None:
        for wake in list(self._watchers):
            wake()

    # --- the pause -----------------------------------------------------------------------------------

    def apply(self, state: OutputState | None) -> None:
        """Follow the spool's record of the output (None: it has none, so it is not paused)."""
        paused = state is not None and state.paused
        if state is not None:
            self.pause_changed_at, self.pause_changed_by = state.pause_changed_at, state.pause_changed_by
        if paused == self.paused:
            return
        self.paused = paused
        by = state.pause_changed_by if state is not None else None
        if paused:
            log.warning(
                "output paused: no delivery starts until it is resumed; its backlog stays in the spool",
                extra={"output": self.output, "by": by, "resume": f"event-router output resume {self.output}"},
            )
        else:
            log.info("output resumed: deliveries start again", extra={"output": self.output, "by": by})
            self._wake()

    # --- the breaker ---------------------------------------------------------------------------------

    def configure(self, breaker: BreakerSettings | None) -> None:
        """A reload's settings; a breaker turned off while open closes."""
        self.breaker = breaker
        if breaker is None and self.state != "closed":
            self._close("breaker turned off")
        self.failures = 0

    def _open(self, error: str) -> None:
        assert self.breaker is not None
        self.state = "open"
        self.last_error = error
        self.opened_at = time.time()
        self._reopens_at = self.clock() + self.breaker.cool_down
        if self.stats is not None:
            self.stats.incr("output_breaker_openings", output=self.output)
        log.warning(
            "output breaker opened: pending deliveries wait for the cool-down, then one is sent as a probe",
            extra={
                "output": self.output,
                "failures": self.failures,
                "cool_down": self.breaker.cool_down,
                "error": error,
            },
        )
        self._changed()

    def _reopen(self, error: str) -> None:
        assert self.breaker is not None
        self.state = "open"
        self.last_error = error
        self._reopens_at = self.clock() + self.breaker.cool_down
        log.info(
            "output breaker probe failed: open for another cool-down",
            extra={"output": self.output, "cool_down": self.breaker.cool_down, "error": error},
        )
        self._changed()
        self._wake()  # every worker of the output waits for the new cool-down's end, not for the probe

    def _close(self, why: str) -> None:
        opened = self.opened_at
        self.state = "closed"
        self.failures = 0
        self.opened_at = None
        self.last_error = None
        log.info(
            "output breaker closed: deliveries flow again",
            extra={
                "output": self.output,
                "reason": why,
                "open_seconds": None if opened is None else round(time.time() - opened, 3),
            },
        )
        self._changed()
        self._wake()

    def _changed(self) -> None:
        if self.on_breaker is not None:
            self.on_breaker(self)

    # --- what operators see --------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """The admin endpoint's view of the output (`GET /outputs`)."""
        return {
            "paused": self.paused,
            "paused_at": _iso(self.pause_changed_at) if self.paused else None,
            "paused_by": self.pause_changed_by if self.paused else None,
            "breaker": "off" if self.breaker is None else self.state,
            "breaker_opened_at": _iso(self.opened_at),
            "consecutive_failures": self.failures,
            "breaker_error": self.last_error,
        }


def _failure(outcomes: Sequence[BaseException | None]) -> str | None:
    """What failed a batch as the breaker counts it: a retryable failure when no delivery of it went through
    and none was refused for good (either is an answer from a receiver that is up); else None."""
    failure: BaseException | None = None
    for outcome in outcomes:
        if outcome is None or not is_retryable(outcome):
            return None
        failure = failure or outcome
    return None if failure is None else _describe(failure)


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


class OutputControl:
    """The gates of one router's outputs, kept in step with the spool: the pauses it records are applied
    (read at start, then every POLL seconds), and the breakers' changes are written to it."""

    def __init__(self, spool: Spool, stats: Stats, *, router: str):
        self.spool = spool
        self.stats = stats
        #: this router's name on the breakers it records
        self.router = router
        self.gates: dict[str, DeliveryGate] = {}
        #: outputs whose breaker changed and is not recorded yet
        self._dirty: set[str] = set()
        self._flush = anyio.Event()
        self._next_renewal = 0.0
        self._read_failed = False
        #: the states were read once (`load`): a gate made later (a reload's new output) reads its own at once
        self._loaded = False

    def gate(self, name: str, breaker: BreakerSettings | None) -> DeliveryGate:
        """The gate of output `name` (made at its first start; a reload's worker gets the same one)."""
        gate = self.gates.get(name)
        if gate is None:
            gate = self.gates[name] = DeliveryGate(name, breaker, stats=self.stats)
            gate.on_breaker = self._breaker_changed
            if self._loaded:  # before its worker starts: an output paused before delivers nothing meanwhile
                self.load()
        elif gate.breaker != breaker:
            gate.configure(breaker)
        return gate

    def forget(self, name: str) -> None:
        """Output `name` is no longer configured (a reload removed it)."""
        gate = self.gates.pop(name, None)
        if gate is not None and gate.state != "closed":
            self._dirty.add(name)  # its open record is cleared at the next flush
            self._flush.set()

    def load(self) -> None:
        """Read the spool's states now (at start, before any output delivers)."""
        try:
            states = self.spool.output_states()
        except SpoolError as exc:
            if not self._read_failed:
                log.warning(
                    "cannot read the outputs' states (paused or not) from the spool; trying again",
                    extra={"error": str(exc)},
                )
            self._read_failed = True
            return
        if self._read_failed:
            log.info("the outputs' states are read from the spool again")
            self._read_failed = False
        self._loaded = True
        self._apply(states)

    def _apply(self, states: Mapping[str, OutputState]) -> None:
        for name, gate in self.gates.items():
            gate.apply(states.get(name))

    async def set_paused(self, name: str, paused: bool, by: str) -> tuple[OutputState, bool]:
        """Pause or resume output `name` from this router (the admin endpoint): recorded in the spool, then
        applied here at once; other routers follow within POLL seconds. A RouterError for an unknown name."""
        if name not in self.gates:
            raise UnknownOutput(name, list(self.gates))
        state, changed = await anyio.to_thread.run_sync(self.spool.set_paused, name, paused, by)
        gate = self.gates.get(name)
        if gate is not None:
            gate.apply(state)
        return state, changed

    def _breaker_changed(self, gate: DeliveryGate) -> None:
        self._dirty.add(gate.output)
        self._flush.set()

    async def run(self) -> None:
        """Read the states every POLL seconds, and record each breaker's change (and renew open ones)."""
        while True:
            with anyio.move_on_after(POLL):
                await self._flush.wait()
            self._flush = anyio.Event()
            await self._record()
            self.load()

    async def _record(self) -> None:
        now = time.monotonic()
        if now >= self._next_renewal:
            self._next_renewal = now + RENEW
            self._dirty.update(name for name, gate in self.gates.items() if gate.state != "closed")
        dirty, self._dirty = self._dirty, set()
        for name in sorted(dirty):
            gate = self.gates.get(name)
            is_open = gate is not None and gate.state != "closed"
            try:
                await self.spool.record_breaker(
                    name,
                    router=self.router,
                    open_since=gate.opened_at if gate is not None and is_open else None,
                    error=gate.last_error if gate is not None else None,
                    lapse=LAPSE,
                )
            except SpoolError as exc:
                # shown to operators only: the breaker itself is in memory and works on
                log.warning(
                    "cannot record the output's breaker in the spool", extra={"output": name, "error": str(exc)}
                )

    async def close(self) -> None:
        """At shutdown: this router's open breakers are no longer held; their records are cleared."""
        for name, gate in self.gates.items():
            if gate.state != "closed":
                self._dirty.add(name)
                gate.state = "closed"
        with anyio.CancelScope(shield=True):
            await self._record()
