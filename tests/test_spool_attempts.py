"""Attempt history (#20), the spool's part on both backends: every delivery attempt `settle` is given recorded
with its outcome, kept with its event (pending, or kept under `[router] retention`) or its dead letter, at most
the first 3 and last 20 per delivery; read back by `Spool.event_history` and `dead_letter_attempts`. Each
output's oldest pending age for `status`. tests/test_trace.py runs real routers and the commands."""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from event_router.core.spool import (
    ATTEMPTS_FIRST,
    ATTEMPTS_LAST,
    Attempt,
    DeadLetter,
    DeadLetterFilter,
    NewDelivery,
    Requeue,
    Spool,
    StoreDeadLetter,
    StoreEvent,
)
from event_router.core.spool.postgresql import PostgreSQLSpool
from event_router.core.spool.sqlite import SCHEMA_VERSION, SQLiteSpool
from event_router.testing import delivery_ids

EVERYTHING = (0.0, math.inf)


def event(n: int, outputs: tuple[str, ...] = ("crm",), received: float | None = None) -> StoreEvent:
    body = orjson.dumps({"id": f"e-{n}", "trigger": "transport.messageReceived", "source": "hooks", "meta": {}})
    return StoreEvent(
        f"e-{n}",
        "transport.messageReceived",
        body,
        [NewDelivery(output, f"to {output}", None) for output in outputs],
        received=received,
    )


def tried(did: int, number: int, outcome: Any = "retry", **said: Any) -> Attempt:
    failed = outcome != "delivered"
    return Attempt(
        did,
        number,
        1_000_000.0 + number,
        0.25,
        outcome,
        said.get("status", 503 if failed else 200),
        said.get("error", f"answered 503 at {number}" if failed else None),
        said.get("answer", '{"error": "down"}' if failed else None),
    )


def attempt_rows(spool: Spool, table: str = "attempts") -> int:
    """Rows in the spool's attempts table (or `replays`): what is kept on disk."""
    if isinstance(spool, PostgreSQLSpool):
        with psycopg.connect(spool.dsn) as conn:
            row = conn.execute(f"SELECT count(*) FROM event_router.{table}").fetchone()
            assert row is not None
            return int(row[0])
    assert isinstance(spool, SQLiteSpool)
    lite = sqlite3.connect(spool.path)
    try:
        return int(lite.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    finally:
        lite.close()


# --- the spool, on both backends ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_attempts_are_kept_while_the_event_is_pending_and_go_with_it(spool_at: Callable[[], Spool]) -> None:
    spool = spool_at()
    spool.open("exclusive")
    try:
        ((crm, archive),) = delivery_ids(await spool.store([event(1, ("crm", "archive"))]))
        first = tried(crm, 1, status=503, answer='{"error": "down for maintenance"}')
        await spool.settle(retry=[(crm, 1, spool.clock.now() + 60, "answered 503")], attempts=[first])
        await spool.settle(done=[archive], attempts=[tried(archive, 1, "delivered", answer="ok")])
        history = spool.event_history("e-1")
        assert history is not None
        assert (history.trigger, history.pending, history.stored, history.received) == (
            "transport.messageReceived",
            True,
            True,
            None,
        )
        assert orjson.loads(history.body or b"")["source"] == "hooks"
        by_output = {d.output: d for d in history.deliveries}
        pending, delivered = by_output["crm"], by_output["archive"]
        assert (pending.delivery, pending.state, pending.attempts, pending.route) == (crm, "pending", 1, "to crm")
        assert pending.next_attempt_in is not None and 55 < pending.next_attempt_in <= 60
        assert pending.last_error == "answered 503"
        assert list(pending.history) == [first], "time, duration, outcome, status, error, answer as given"
        assert (delivered.state, delivered.attempts, delivered.next_attempt_in) == ("delivered", 1, None)
        assert [(a.outcome, a.status, a.answer) for a in delivered.history] == [("delivered", 200, "ok")]
        assert history.dead_letters == []

        await spool.settle(done=[crm], attempts=[tried(crm, 2, "delivered")])
        assert spool.event_history("e-1") is None, "delivered and not kept: forgotten, its attempts with it"
        assert attempt_rows(spool) == 0
        assert spool.event_history("no-such-event") is None
    finally:
        spool.close()


@pytest.mark.anyio
async def test_an_event_delivered_at_once_and_not_kept_leaves_no_attempt_row(spool_at: Callable[[], Spool]) -> None:
    """The common case without retention costs no row: the event's last attempt is not written when the same
    settle forgets the event."""
    spool = spool_at()
    spool.open("exclusive")
    try:
        dids = [ids[0] for ids in delivery_ids(await spool.store([event(n) for n in range(5)]))]
        await spool.settle(done=dids, attempts=[tried(did, 1, "delivered") for did in dids])
        assert attempt_rows(spool) == 0
        assert spool.depth == 0
    finally:
        spool.close()


@pytest.mark.anyio
async def test_under_retention_the_attempts_are_kept_with_the_event_until_it_is_pruned(
    spool_at: Callable[[], Spool],
) -> None:
    spool = spool_at()
    spool.open("exclusive")
    try:
        ((did,),) = delivery_ids(await spool.store([event(1, received=1000.0)]))
        await spool.settle(retry=[(did, 1, spool.clock.now(), "answered 503")], attempts=[tried(did, 1)])
        await spool.settle(done=[did], attempts=[tried(did, 2, "delivered")])
        history = spool.event_history("e-1")
        assert history is not None
        assert (history.pending, history.stored, history.received) == (False, True, 1000.0)
        ((delivery,),) = [history.deliveries]
        assert (delivery.state, delivery.attempts) == ("delivered", 2)
        assert [(a.number, a.outcome) for a in delivery.history] == [(1, "retry"), (2, "delivered")]
        assert attempt_rows(spool) == 2
        assert await spool.prune_kept(math.inf, 100) == 1
        assert spool.event_history("e-1") is None
        assert attempt_rows(spool) == 0, "pruned with the event"
    finally:
        spool.close()


@pytest.mark.anyio
async def test_a_dead_letters_attempts_stay_with_it_until_it_is_purged(spool_at: Callable[[], Spool]) -> None:
    spool = spool_at()
    spool.open("exclusive")
    try:
        (ids,) = delivery_ids(await spool.store([event(1)]))
        did = ids[0]
        await spool.settle(retry=[(did, 1, spool.clock.now(), "answered 503")], attempts=[tried(did, 1)])
        (dlid,) = await spool.settle(
            dead=[(did, "retries_exhausted", "answered 503 at 2", 2)], attempts=[tried(did, 2, "retries_exhausted")]
        )
        assert dlid is not None
        assert spool.depth == 0
        kept = spool.dead_letter_attempts([dlid, 999])
        assert list(kept) == [dlid]
        assert [(a.delivery, a.number, a.outcome, a.status) for a in kept[dlid]] == [
            (did, 1, "retry", 503),
            (did, 2, "retries_exhausted", 503),
        ]
        history = spool.event_history("e-1")
        assert history is not None, "its dead letter still names it"
        assert (history.stored, history.pending) == (False, False)
        ((delivery,),) = [history.deliveries]
        assert (delivery.state, delivery.dead_letter, delivery.attempts) == ("dead_letter", dlid, 2)
        assert delivery.last_error == "answered 503 at 2"
        assert [dl.dlid for dl in history.dead_letters] == [dlid]

        assert spool.purge_dead_letters(DeadLetterFilter(ids=(dlid,))) == 1
        assert spool.dead_letter_attempts([dlid]) == {}
        assert spool.event_history("e-1") is None
        assert attempt_rows(spool) == 0
    finally:
        spool.close()


def requeue(dead: DeadLetter) -> Requeue:
    """What `dlq replay` makes of a delivery's dead letter (core/deadletters.py): its event again, as the dead
    letter holds it, with one delivery to its output."""
    assert dead.event_id is not None and dead.trigger is not None and dead.output is not None
    delivery = NewDelivery(dead.output, dead.route or "(replay)", dead.payload)
    return Requeue(dead.dlid, StoreEvent(dead.event_id, dead.trigger, dead.body, [delivery]))


def handed(spool: Spool, output: str = "crm") -> list[int]:
    return [row.did for row in spool.fetch_due(output, spool.clock.now() + 1, 100, ())]


@pytest.mark.anyio
@pytest.mark.parametrize("by", ["dlq replay", "the router"])
async def test_a_replayed_dead_letter_of_a_kept_event_is_delivered_as_that_event(
    spool_at: Callable[[], Spool], by: str
) -> None:
    """Retention on: a replay of the dead letter of a delivery of a kept event (by `dlq replay`, another process,
    or by the router itself: the console) gives the kept event the new delivery, so its attempts are recorded
    with it and `trace` shows them, and no second copy of the event is stored: once delivered it is kept once,
    and pruned with its attempts. The router's own counts follow its own replay."""
    router = spool_at()
    router.open("exclusive")
    try:
        ((crm, archive),) = delivery_ids(await router.store([event(1, ("crm", "archive"), received=1000.0)]))
        await router.settle(done=[archive], attempts=[tried(archive, 1, "delivered")])
        (dlid,) = await router.settle(
            dead=[(crm, "permanent", "answered 422", 1)], attempts=[tried(crm, 1, "permanent", status=422)]
        )
        assert dlid is not None
        (dead,) = router.dead_letters(DeadLetterFilter(ids=(dlid,)))
        if by == "the router":
            router.replay_dead_letters([requeue(dead)])
            assert (router.depth, router.pending_outputs()) == (1, {"crm": 1}), "counted as it stores them"
        else:
            ops = spool_at()
            ops.open("shared")
            try:
                ops.replay_dead_letters([requeue(dead)])
            finally:
                ops.close()
        (stored,) = router.stored_events("e-1")
        assert stored.received == 1000.0, "the kept event itself, not a copy stored without its time"
        assert [d.output for d in stored.deliveries] == ["crm"]
        assert router.count_kept(*EVERYTHING) == 1
        assert router.status().pending_events == 1
        (again,) = handed(router)
        await router.settle(retry=[(again, 1, router.clock.now(), "answered 503")], attempts=[tried(again, 1)])
        await router.settle(done=[again], attempts=[tried(again, 2, "delivered")])

        history = router.event_history("e-1")
        assert history is not None
        assert (history.stored, history.pending, history.received) == (True, False, 1000.0)
        assert history.dead_letters == [], "replayed: the dead letter is gone"
        by_id = {d.delivery: d for d in history.deliveries}
        assert set(by_id) == {crm, archive, again}, "the dead letter's delivery stays, replayed, before the new one"
        assert (by_id[crm].state, by_id[crm].dead_letter, [a.outcome for a in by_id[crm].history]) == (
            "replayed",
            dlid,
            ["permanent"],
        )
        replayed = by_id[again]
        assert (replayed.output, replayed.state, replayed.attempts) == ("crm", "delivered", 2)
        assert [(a.number, a.outcome) for a in replayed.history] == [(1, "retry"), (2, "delivered")]
        assert (router.status().pending_events, router.depth, router.pending_outputs()) == (0, 0, {})
        assert [k.event_id for k in router.kept_events(*EVERYTHING)] == ["e-1"], "kept once"
        assert attempt_rows(router) == 4
        assert await router.prune_kept(math.inf, 100) == 1
        assert router.event_history("e-1") is None
        assert attempt_rows(router) == 0, "pruned with the event"
    finally:
        router.close()


@pytest.mark.anyio
async def test_dead_letters_of_one_kept_event_replayed_together_make_it_pending_once(
    spool_at: Callable[[], Spool],
) -> None:
    spool = spool_at()
    spool.open("exclusive")
    try:
        ((crm, archive),) = delivery_ids(await spool.store([event(1, ("crm", "archive"), received=1000.0)]))
        dlids = await spool.settle(dead=[(crm, "permanent", "422", 1), (archive, "permanent", "422", 1)])
        letters = spool.dead_letters(DeadLetterFilter(ids=tuple(d for d in dlids if d is not None)))
        spool.replay_dead_letters([requeue(dead) for dead in letters])
        assert spool.depth == 1
        (stored,) = spool.stored_events("e-1")
        assert sorted(d.output for d in stored.deliveries) == ["archive", "crm"]
        again = handed(spool, "crm") + handed(spool, "archive")
        await spool.settle(done=again, attempts=[tried(did, 1, "delivered") for did in again])
        assert (spool.depth, spool.status().pending_events, spool.count_kept(*EVERYTHING)) == (0, 0, 1)
        history = spool.event_history("e-1")
        assert history is not None
        assert sorted((d.delivery, d.state) for d in history.deliveries) == [
            (did, "delivered") for did in sorted(again)
        ]
    finally:
        spool.close()


@pytest.mark.anyio
async def test_a_replayed_dead_letter_of_an_event_not_kept_is_stored_again(spool_at: Callable[[], Spool]) -> None:
    """Without a kept event of it (retention off, or pruned), `dlq replay` stores the event again, not kept."""
    spool = spool_at()
    spool.open("exclusive")
    try:
        ((did,),) = delivery_ids(await spool.store([event(1)]))
        (dlid,) = await spool.settle(
            dead=[(did, "permanent", "answered 422", 1)], attempts=[tried(did, 1, "permanent")]
        )
        assert dlid is not None
        # the same event id kept from another receipt with another body: not this dead letter's event
        other = event(1, received=1000.0)
        ((kept,),) = delivery_ids(await spool.store([replace(other, body=other.body + b" ")]))
        await spool.settle(done=[kept])
        (dead,) = spool.dead_letters(DeadLetterFilter(ids=(dlid,)))
        spool.replay_dead_letters([requeue(dead)])
        stored = spool.stored_events("e-1")
        assert [(s.received, len(s.deliveries)) for s in stored] == [(1000.0, 0), (None, 1)]
        (again,) = handed(spool)
        await spool.settle(done=[again], attempts=[tried(again, 1, "delivered")])
        assert [s.received for s in spool.stored_events("e-1")] == [1000.0]
        assert spool.depth == 0
    finally:
        spool.close()


@pytest.mark.anyio
async def test_a_kept_event_replayed_after_its_delivery_was_dead_lettered(spool_at: Callable[[], Spool]) -> None:
    """`event-router replay` of a kept event one of whose deliveries is a dead letter: the new delivery's attempts
    are recorded with the event, the dead letter keeps its own; pruning the event leaves the dead letter's."""
    router = spool_at()
    router.open("exclusive")
    try:
        ((crm,),) = delivery_ids(await router.store([event(1, received=1000.0)]))
        (dlid,) = await router.settle(
            dead=[(crm, "permanent", "answered 422", 1)], attempts=[tried(crm, 1, "permanent", status=422)]
        )
        assert dlid is not None
        (kept,) = router.kept_events(*EVERYTHING)
        ops = spool_at()
        ops.open("shared")
        try:
            assert ops.requeue_kept([(kept.seq, [NewDelivery("crm", "to crm", None)])]) == {kept.seq}
        finally:
            ops.close()
        (again,) = handed(router)
        await router.settle(done=[again], attempts=[tried(again, 1, "delivered")])
        history = router.event_history("e-1")
        assert history is not None
        assert (history.stored, history.pending, history.received) == (True, False, 1000.0)
        by_id = {d.delivery: d for d in history.deliveries}
        assert (by_id[crm].state, by_id[crm].dead_letter, [a.outcome for a in by_id[crm].history]) == (
            "dead_letter",
            dlid,
            ["permanent"],
        )
        assert (by_id[again].state, [a.outcome for a in by_id[again].history]) == ("delivered", ["delivered"])
        assert (router.status().pending_events, router.depth, router.count_kept(*EVERYTHING)) == (0, 0, 1)
        assert await router.prune_kept(math.inf, 100) == 1
        assert list(router.dead_letter_attempts([dlid])) == [dlid], "the dead letter's attempts outlive the event"
        assert attempt_rows(router) == 1
    finally:
        router.close()


# --- replayed dead letters: their attempts stay in the event's history ---------------------------------------


async def fail_for_good(spool: Spool, did: int, made: int) -> int:
    """`made` failed attempts of `did`, the last one exhausting its retries: its dead letter's id."""
    for number in range(1, made):
        await spool.settle(retry=[(did, number, spool.clock.now(), "down")], attempts=[tried(did, number)])
    (dlid,) = await spool.settle(
        dead=[(did, "retries_exhausted", f"answered 503 at {made}", made)],
        attempts=[tried(did, made, "retries_exhausted")],
    )
    assert dlid is not None
    return dlid


def replay_as(spool: Spool, dlid: int, by: str | None = "alice@ops (event-router dlq replay)") -> int:
    """Replay dead letter `dlid` as `dlq replay` does; the id of the delivery it is replayed as."""
    (dead,) = spool.dead_letters(DeadLetterFilter(ids=(dlid,)))
    spool.replay_dead_letters([requeue(dead)], by)
    (again,) = handed(spool)
    return again


@pytest.mark.anyio
async def test_a_replayed_dead_letters_attempts_stay_in_the_events_history(spool_at: Callable[[], Spool]) -> None:
    """Without retention: the delivery that was dead-lettered stays in the history, replayed (when, by whom, as
    which delivery), its attempts kept as they were (first 3, last 20), before the replayed delivery's own, which
    number from 1. Once the replayed delivery is delivered the event, not kept, is forgotten with both."""
    spool = spool_at()
    spool.open("exclusive")
    try:
        ((first,),) = delivery_ids(await spool.store([event(1)]))
        made = ATTEMPTS_FIRST + ATTEMPTS_LAST + 2
        dlid = await fail_for_good(spool, first, made)
        before = time.time()
        again = replay_as(spool, dlid)
        assert spool.dead_letters(DeadLetterFilter()) == [] and spool.dead_letter_count() == 0
        await spool.settle(retry=[(again, 1, spool.clock.now() + 60, "answered 503")], attempts=[tried(again, 1)])

        history = spool.event_history("e-1")
        assert history is not None
        assert history.dead_letters == []
        (replay,) = history.replays
        assert (replay.dead_letter, replay.output, replay.route, replay.reason) == (
            dlid,
            "crm",
            "to crm",
            "retries_exhausted",
        )
        assert (replay.attempts, replay.error, replay.replayed_as) == (made, f"answered 503 at {made}", again)
        assert replay.replayed_by == "alice@ops (event-router dlq replay)"
        assert before <= replay.replayed_at <= time.time() and replay.created_at <= replay.replayed_at
        earlier, replayed = history.deliveries
        assert (earlier.delivery, earlier.state, earlier.dead_letter, earlier.replay) == (
            first,
            "replayed",
            dlid,
            replay,
        )
        assert (earlier.attempts, earlier.last_error) == (made, f"answered 503 at {made}")
        assert [a.number for a in earlier.history] == [1, 2, 3, *range(made - ATTEMPTS_LAST + 1, made + 1)]
        assert earlier.history[-1].outcome == "retries_exhausted"
        assert (replayed.delivery, replayed.state, replayed.attempts) == (again, "pending", 1)
        assert [a.number for a in replayed.history] == [1], "its own attempts, numbered from 1"
        assert attempt_rows(spool) == ATTEMPTS_FIRST + ATTEMPTS_LAST + 1

        await spool.settle(done=[again], attempts=[tried(again, 2, "delivered")])
        assert spool.event_history("e-1") is None, "delivered and not kept: forgotten, the earlier delivery too"
        assert (attempt_rows(spool), attempt_rows(spool, "replays")) == (0, 0)
    finally:
        spool.close()


@pytest.mark.anyio
async def test_a_delivery_replayed_twice_keeps_every_earlier_delivery_until_the_event_is_pruned(
    spool_at: Callable[[], Spool],
) -> None:
    """Retention on: dead-lettered, replayed (by the console), dead-lettered again: the second dead letter holds
    the first delivery's records too (`dlq show` lists its own delivery's attempts only); replayed again (by
    `dlq replay` beside the router) and delivered, the kept event shows all three deliveries, and pruning it
    forgets them all."""
    router = spool_at()
    router.open("exclusive")
    try:
        ((first,),) = delivery_ids(await router.store([event(1, received=1000.0)]))
        one = await fail_for_good(router, first, 2)
        second = replay_as(router, one, "console (127.0.0.1)")
        two = await fail_for_good(router, second, 3)
        assert [a.delivery for a in router.dead_letter_attempts([two])[two]] == [second] * 3
        ops = spool_at()
        ops.open("shared")
        try:
            (dead,) = ops.dead_letters(DeadLetterFilter(ids=(two,)))
            ops.replay_dead_letters([requeue(dead)])
        finally:
            ops.close()
        (third,) = handed(router)
        await router.settle(done=[third], attempts=[tried(third, 1, "delivered")])

        history = router.event_history("e-1")
        assert history is not None
        assert (history.stored, history.pending, history.dead_letters) == (True, False, [])
        assert [(r.dead_letter, r.replayed_as, r.replayed_by) for r in history.replays] == [
            (one, second, "console (127.0.0.1)"),
            (two, third, None),
        ]
        assert [(d.delivery, d.state, d.dead_letter, d.attempts) for d in history.deliveries] == [
            (first, "replayed", one, 2),
            (second, "replayed", two, 3),
            (third, "delivered", None, 1),
        ]
        assert [[a.number for a in d.history] for d in history.deliveries] == [[1, 2], [1, 2, 3], [1]]
        assert [k.event_id for k in router.kept_events(*EVERYTHING)] == ["e-1"], "kept once"
        assert (attempt_rows(router), attempt_rows(router, "replays")) == (6, 2)
        assert await router.prune_kept(math.inf, 100) == 1
        assert router.event_history("e-1") is None
        assert (attempt_rows(router), attempt_rows(router, "replays")) == (0, 0), "pruned with the event"
    finally:
        router.close()


@pytest.mark.anyio
async def test_a_replayed_delivery_dead_lettered_again_keeps_the_earlier_one_until_purged(
    spool_at: Callable[[], Spool],
) -> None:
    """Without retention the event goes once its replayed delivery is a dead letter again: that dead letter holds
    the earlier delivery's attempts and replay, and `trace` still shows both; purged, they all go."""
    spool = spool_at()
    spool.open("exclusive")
    try:
        ((first,),) = delivery_ids(await spool.store([event(1)]))
        one = await fail_for_good(spool, first, 2)
        second = replay_as(spool, one)
        two = await fail_for_good(spool, second, 1)
        assert spool.stored_events("e-1") == [], "not kept: gone with its last delivery"
        history = spool.event_history("e-1")
        assert history is not None
        assert [(d.delivery, d.state, d.dead_letter, len(d.history)) for d in history.deliveries] == [
            (first, "replayed", one, 2),
            (second, "dead_letter", two, 1),
        ]
        assert [r.dead_letter for r in history.replays] == [one]
        assert [dl.dlid for dl in history.dead_letters] == [two]

        assert spool.purge_dead_letters(DeadLetterFilter(ids=(two,))) == 1
        assert spool.event_history("e-1") is None
        assert (attempt_rows(spool), attempt_rows(spool, "replays")) == (0, 0)
    finally:
        spool.close()


@pytest.mark.anyio
async def test_a_dead_letter_of_no_delivery_replayed_is_recorded_and_one_routed_nowhere_keeps_nothing(
    spool_at: Callable[[], Spool],
) -> None:
    """An invalid event's dead letter, replayed (valid now) into a delivery: its replay is in the history, with no
    delivery of its own (it had none). A delivery's dead letter whose replay stores nothing (its routes take
    nothing now) leaves nothing: no event to keep it with."""
    spool = spool_at()
    spool.open("exclusive")
    try:
        body = event(1).body
        (invalid,) = await spool.store(
            [StoreDeadLetter("validation", "data.id: missing", body, "e-1", "transport.messageReceived", "hooks")]
        )
        assert isinstance(invalid, int)
        spool.replay_dead_letters([Requeue(invalid, event(1, received=1000.0))], "bob@ops")
        (did,) = handed(spool)
        history = spool.event_history("e-1")
        assert history is not None
        ((replay,), (delivery,)) = (history.replays, history.deliveries)
        assert (replay.dead_letter, replay.reason, replay.output, replay.replayed_as) == (
            invalid,
            "validation",
            None,
            did,
        )
        assert (replay.attempts, replay.replayed_by) == (0, "bob@ops")
        assert (delivery.delivery, delivery.state) == (did, "pending")

        ((other,),) = delivery_ids(await spool.store([event(2)]))
        dlid = await fail_for_good(spool, other, 2)
        spool.replay_dead_letters([Requeue(dlid, replace(event(2), deliveries=[]))])
        assert spool.event_history("e-2") is None
        assert (attempt_rows(spool), attempt_rows(spool, "replays")) == (0, 1), "only e-1's replay"
    finally:
        spool.close()


@pytest.mark.anyio
async def test_a_delivery_keeps_its_first_and_last_attempts_only(spool_at: Callable[[], Spool]) -> None:
    spool = spool_at()
    spool.open("exclusive")
    try:
        ((did,),) = delivery_ids(await spool.store([event(1)]))
        made = ATTEMPTS_FIRST + ATTEMPTS_LAST + 7
        for number in range(1, made + 1):
            await spool.settle(retry=[(did, number, spool.clock.now(), "down")], attempts=[tried(did, number)])
        history = spool.event_history("e-1")
        assert history is not None
        ((delivery,),) = [history.deliveries]
        assert delivery.attempts == made
        numbers = [a.number for a in delivery.history]
        assert numbers == [1, 2, 3, *range(made - ATTEMPTS_LAST + 1, made + 1)]
        assert attempt_rows(spool) == ATTEMPTS_FIRST + ATTEMPTS_LAST
    finally:
        spool.close()


@pytest.mark.anyio
async def test_status_says_each_outputs_oldest_pending_age(spool_at: Callable[[], Spool]) -> None:
    spool = spool_at()
    spool.open("exclusive")
    try:
        await spool.store([event(1, ("crm",))])
        time.sleep(1.1)
        await spool.store([event(2, ("crm", "archive"))])
        backlogs = spool.status().backlogs
        crm, archive = backlogs["crm"], backlogs["archive"]
        assert crm.oldest_pending_age is not None and archive.oldest_pending_age is not None
        assert crm.oldest_pending_age >= 1.0 > archive.oldest_pending_age >= 0.0
    finally:
        spool.close()


def assert_upgraded(path: Path, objects: set[str]) -> None:
    """The SQLite spool at `path` records this router's schema version and holds `objects` (tables, indexes,
    triggers)."""
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert objects <= names
    finally:
        conn.close()


@pytest.mark.anyio
async def test_a_schema_5_spool_is_upgraded_and_read_beside_an_older_router(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = SQLiteSpool(path)
    spool.open("exclusive")
    ((did,),) = delivery_ids(await spool.store([event(1)]))
    spool.close()
    conn = sqlite3.connect(path)
    conn.executescript(
        "DROP TRIGGER events_forget_attempts; DROP TABLE attempts; DROP INDEX events_id; "
        "DROP INDEX dead_letters_event; UPDATE meta SET value = '5' WHERE key = 'schema_version';"
    )
    conn.close()
    # `trace` of a newer router beside an older one still running: the event, no attempt
    old = SQLiteSpool(path)
    old.open("readonly")
    try:
        history = old.event_history("e-1")
        assert history is not None and [d.history for d in history.deliveries] == [()]
    finally:
        old.close()
    upgraded = SQLiteSpool(path)
    upgraded.open("exclusive")
    try:
        await upgraded.settle(retry=[(did, 1, upgraded.clock.now(), "down")], attempts=[tried(did, 1)])
        history = upgraded.event_history("e-1")
        assert history is not None and [len(d.history) for d in history.deliveries] == [1]
    finally:
        upgraded.close()
    assert_upgraded(path, {"attempts", "events_forget_attempts", "events_id", "dead_letters_event"})


@pytest.mark.anyio
async def test_a_schema_7_spool_keeps_its_attempts_read_beside_an_older_router_then_upgraded(tmp_path: Path) -> None:
    """7 to 8 adds `replays` and `attempts.replayed`: a dead letter's attempts recorded before are read (by a
    newer `trace` beside the older router, then upgraded) and, replayed, stay in the event's history."""
    path = tmp_path / "spool.db"
    spool = SQLiteSpool(path)
    spool.open("exclusive")
    ((did,),) = delivery_ids(await spool.store([event(1)]))
    dlid = await fail_for_good(spool, did, 2)
    spool.close()
    conn = sqlite3.connect(path)
    conn.executescript(
        "DROP TRIGGER events_forget_replays; DROP TABLE replays; DROP INDEX attempts_replayed; "
        "ALTER TABLE attempts DROP COLUMN replayed; UPDATE meta SET value = '7' WHERE key = 'schema_version';"
    )
    conn.close()
    old = SQLiteSpool(path)
    old.open("readonly")
    try:
        history = old.event_history("e-1")
        assert history is not None and [(d.state, len(d.history)) for d in history.deliveries] == [("dead_letter", 2)]
        assert [a.number for a in old.dead_letter_attempts([dlid])[dlid]] == [1, 2]
    finally:
        old.close()
    with pytest.raises(Exception, match="older than this router's"):
        SQLiteSpool(path).open("shared")
    upgraded = SQLiteSpool(path)
    upgraded.open("exclusive")
    try:
        again = replay_as(upgraded, dlid)
        history = upgraded.event_history("e-1")
        assert history is not None
        assert [(d.delivery, d.state, len(d.history)) for d in history.deliveries] == [
            (did, "replayed", 2),
            (again, "pending", 0),
        ]
    finally:
        upgraded.close()
    assert_upgraded(path, {"replays", "events_forget_replays", "attempts_replayed", "replays_head"})


@pytest.mark.anyio
async def test_postgresql_a_step_6_spool_gets_replay_history_in_place(pg_dsn: str) -> None:
    from event_router.core.spool.postgresql import SCHEMA_VERSION as PG_SCHEMA_VERSION

    spool = PostgreSQLSpool(pg_dsn)
    spool.open("exclusive")
    try:
        ((did,),) = delivery_ids(await spool.store([event(1)]))
        dlid = await fail_for_good(spool, did, 2)
    finally:
        spool.close()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "DROP TABLE event_router.replays; DROP INDEX event_router.attempts_replayed; "
            "ALTER TABLE event_router.attempts DROP COLUMN replayed; "
            "UPDATE event_router.meta SET value = '6' WHERE key = 'schema_version'"
        )
    with pytest.raises(Exception, match="older than this router's"):
        PostgreSQLSpool(pg_dsn).open("shared")
    upgraded = PostgreSQLSpool(pg_dsn)
    upgraded.open("exclusive")
    try:
        assert [a.number for a in upgraded.dead_letter_attempts([dlid])[dlid]] == [1, 2], "kept through the step"
        again = replay_as(upgraded, dlid)
        history = upgraded.event_history("e-1")
        assert history is not None
        assert [(d.delivery, d.state, len(d.history)) for d in history.deliveries] == [
            (did, "replayed", 2),
            (again, "pending", 0),
        ]
    finally:
        upgraded.close()
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute("SELECT value FROM event_router.meta WHERE key = 'schema_version'").fetchone()
    assert row == (str(PG_SCHEMA_VERSION),) and PG_SCHEMA_VERSION == 7
