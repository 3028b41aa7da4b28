"""The delivery gate's logic without I/O (event_router.core.gate): what the breaker counts as a failure, one
probe at a time after the cool-down, and the pause. Against real routers and receivers:
tests/test_output_control.py."""

from __future__ import annotations

import math

from event_router.api.errors import PermanentError, RetryableError
from event_router.core.gate import BreakerSettings, DeliveryGate
from event_router.core.spool import OutputState
from event_router.core.stats import Stats


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def state(gate: DeliveryGate) -> str:
    """The breaker's state, read afresh (each call a new read: mypy narrows an attribute compared before)."""
    return gate.state


def failing(gate: DeliveryGate, times: int) -> None:
    for _ in range(times):
        admission = gate.admit()
        assert admission is not None
        gate.settled(admission, [RetryableError("answered 503")])


def test_consecutive_failures_open_the_breaker_and_one_probe_goes_out_after_the_cool_down() -> None:
    clock, stats = Clock(), Stats()
    gate = DeliveryGate("crm", BreakerSettings(failures=3, cool_down=30), stats=stats, clock=clock)
    changes: list[str] = []
    gate.on_breaker = lambda g: changes.append(g.state)
    failing(gate, 2)
    ok = gate.admit()
    assert ok is not None
    gate.settled(ok, [None])  # a delivery went through: the count starts again
    failing(gate, 2)
    assert state(gate) == "closed" and gate.wait() == 0.0
    failing(gate, 1)
    assert (state(gate), gate.last_error, changes) == ("open", "answered 503", ["open"])
    assert stats.get("output_breaker_openings", output="crm") == 1
    assert gate.admit() is None and gate.wait() == 30.0
    clock.now += 29.5
    assert gate.admit() is None and gate.wait() == 0.5
    clock.now += 0.5
    probe = gate.admit()
    assert probe is not None and (probe.limit, probe.probe) == (1, True)
    assert state(gate) == "probing" and gate.admit() is None and gate.wait() == math.inf, "one probe at a time"
    gate.settled(probe, [RetryableError("timeout")])
    assert (state(gate), gate.wait(), changes) == ("open", 30.0, ["open", "open"])
    assert stats.get("output_breaker_openings", output="crm") == 1, "a failed probe is no new opening"
    clock.now += 30
    probe = gate.admit()
    assert probe is not None and probe.probe
    gate.settled(probe, [None])
    assert (state(gate), gate.failures, gate.opened_at, changes) == ("closed", 0, None, ["open", "open", "closed"])
    admission = gate.admit()
    assert admission is not None and not admission.probe and admission.limit > 1000


def test_a_refusal_for_good_is_an_answer_and_a_batch_counts_once() -> None:
    gate = DeliveryGate("crm", BreakerSettings(failures=2, cool_down=5), clock=Clock())
    failing(gate, 1)
    refused = gate.admit()
    assert refused is not None
    # the receiver answered 422: it is up, whatever it thinks of this delivery
    gate.settled(refused, [PermanentError("answered 422")])
    failing(gate, 1)
    assert state(gate) == "closed"
    batch = gate.admit()
    assert batch is not None
    # a batch of three that failed: one failed attempt at the receiver, not three
    gate.settled(batch, [RetryableError("answered 503")] * 3)
    assert state(gate) == "open"


def test_failures_of_batches_begun_before_it_opened_add_nothing_and_a_success_closes_it() -> None:
    gate = DeliveryGate("crm", BreakerSettings(failures=1, cool_down=5), clock=Clock())
    early, late = gate.admit(), gate.admit()
    assert early is not None and late is not None
    gate.settled(early, [RetryableError("x")])
    assert state(gate) == "open"
    gate.settled(late, [RetryableError("y")])
    assert (state(gate), gate.last_error) == ("open", "x")
    woken: list[bool] = []
    gate.watch(lambda: woken.append(True))
    gate.settled(late, [None])
    assert state(gate) == "closed" and woken == [True]


def test_an_abandoned_probe_frees_its_place_and_a_breaker_turned_off_closes() -> None:
    clock = Clock()
    gate = DeliveryGate("crm", BreakerSettings(failures=1, cool_down=5), clock=clock)
    failing(gate, 1)
    clock.now += 5
    probe = gate.admit()
    assert probe is not None and gate.admit() is None
    gate.abandoned(probe)  # its worker was cancelled before an answer
    assert gate.wait() == 0.0
    gate.configure(None)
    assert state(gate) == "closed" and gate.wait() == 0.0
    admission = gate.admit()
    assert admission is not None
    gate.settled(admission, [RetryableError("x")] * 10)
    assert state(gate) == "closed", "no breaker: nothing is counted"


def test_a_pause_holds_everything_until_it_is_resumed() -> None:
    gate = DeliveryGate("crm")
    woken: list[bool] = []
    gate.watch(lambda: woken.append(True))
    gate.apply(OutputState("crm", paused=True, pause_changed_at=1.0, pause_changed_by="ops"))
    assert gate.admit() is None and gate.wait() == math.inf and woken == []
    assert gate.describe()["paused_by"] == "ops"
    gate.apply(OutputState("crm", paused=True))
    assert woken == []
    gate.apply(None)  # no record: not paused
    assert gate.wait() == 0.0 and woken == [True]
