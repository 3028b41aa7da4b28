"""Wall-clock jumps (an NTP step, a VM resumed from a snapshot): retries keep their schedule in elapsed time.

The spool clock's logic with stepped clocks, the spool's rebase on a real SQLite file, then the router
as a subprocess under libfaketime with only its wall clock moved (`DONT_FAKE_MONOTONIC=1`), through a
timestamp file the test rewrites while the router runs.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from event_router.core.clock import Anchor, SpoolClock
from event_router.core.spool import NewDelivery, StoreEvent
from event_router.core.spool.sqlite import SQLiteSpool
from event_router.testing import (
    IN_CI,
    Receiver,
    RouterProcess,
    example,
    free_port,
    http_receiver,
    post,
    run_cli,
    wait_for,
)

#: where Debian/Ubuntu's `libfaketime` package (any architecture) and `make install` put the library
FAKETIME_LIBRARIES = ("/usr/lib/*/faketime/libfaketime.so.1", "/usr/local/lib/faketime/libfaketime.so.1")
HOUR = 3600
DAY = 86400
#: beyond a retry's backoff: the worker looks for due retries at least once a second; a loaded machine
SLACK = 5.0


class Stepped:
    """A wall clock and a monotonic clock the test moves by hand."""

    def __init__(self, wall: float = 1_800_000_000.0, elapsed: float = 5_000.0):
        self.wall_at = wall
        self.elapsed_at = elapsed

    def wall(self) -> float:
        return self.wall_at

    def elapsed(self) -> float:
        return self.elapsed_at

    def advance(self, seconds: float) -> None:
        self.wall_at += seconds
        self.elapsed_at += seconds

    def clock(self, boot: str = "boot-1") -> SpoolClock:
        return SpoolClock(wall=self.wall, elapsed=self.elapsed, boot=boot)


def test_spool_clock_follows_elapsed_time_and_reports_jumps() -> None:
    t = Stepped()
    clock = t.clock()
    assert clock.now() == t.wall_at
    t.advance(30)
    assert clock.now() == t.wall_at and clock.jump() == 0.0
    t.wall_at -= HOUR
    assert clock.now() == t.wall_at + HOUR, "a step of the wall clock does not move the spool clock"
    assert clock.jump() == -HOUR
    clock.shift(clock.jump())
    assert clock.now() == t.wall_at and clock.jump() == 0.0
    t.wall_at += 0.5  # a leap second, two clock reads a moment apart: not a jump
    assert clock.jump() == 0.0


def test_spool_clock_continues_an_anchor_of_the_same_boot_only() -> None:
    t = Stepped()
    recorded = Anchor("boot-1", t.wall_at - t.elapsed_at - DAY)
    same = t.clock("boot-1")
    same.adopt(recorded)
    assert same.jump() == DAY, "a restart in the same boot sees the step made while it was stopped"
    for other in (Anchor("boot-0", recorded.offset), Anchor(None, recorded.offset), None):
        fresh = t.clock("boot-1")
        fresh.adopt(other)
        assert fresh.now() == t.wall_at and fresh.jump() == 0.0, "after a reboot only the wall clock is known"


def store_event(i: int) -> StoreEvent:
    body = b'{"id":"e%d","trigger":"t","source":"s","received_at":"x","data":{},"meta":{}}' % i
    return StoreEvent(f"e{i}", "t", body, [NewDelivery("out", "r", None)])


@pytest.mark.anyio
async def test_rebase_moves_every_pending_time_with_the_clock(tmp_path: Path) -> None:
    t = Stepped()
    spool = SQLiteSpool(tmp_path / "spool.db", clock=t.clock())
    spool.open("exclusive")
    try:
        spool.claim_clock()
        ((retrying,), (fresh,)) = await spool.store([store_event(1), store_event(2)])
        await spool.settle(retry=[(retrying, 1, spool.clock.now() + 60, "503")])
        t.advance(10)
        t.wall_at -= HOUR
        jump = spool.clock.jump()
        spool.clock.shift(jump)
        await spool.rebase(jump)
        now = spool.clock.now()
        assert now == t.wall_at
        assert [row.did for row in spool.fetch_due("out", now, 10, ())] == [fresh]
        assert [row.did for row in spool.fetch_due("out", now + 50, 10, ())] == [fresh, retrying], "due 50 s on"
        assert {row.first_at for row in spool.fetch_due("out", now + 50, 10, ())} == {now - 10}
        assert spool.oldest_pending_age() == 10
        # the rebased anchor is recorded: a process that opens the spool next adopts it, whatever its wall clock
        other = SQLiteSpool(tmp_path / "spool.db", clock=SpoolClock(wall=lambda: 0.0, elapsed=t.elapsed, boot="boot-1"))
        other.open("readonly")
        try:
            assert other.clock.anchor == spool.clock.anchor
        finally:
            other.close()
    finally:
        spool.close()


@pytest.mark.anyio
@pytest.mark.parametrize(("boot", "moved"), [("boot-1", True), ("boot-2", False)])
async def test_restart_in_the_same_boot_rebases_a_jump_made_while_stopped(
    tmp_path: Path, boot: str, moved: bool
) -> None:
    t = Stepped()
    spool = SQLiteSpool(tmp_path / "spool.db", clock=t.clock())
    spool.open("exclusive")
    spool.claim_clock()
    ((did,),) = await spool.store([store_event(1)])
    await spool.settle(retry=[(did, 1, spool.clock.now() + 60, "503")])
    spool.close()
    t.advance(20)
    t.wall_at += DAY
    again = SQLiteSpool(tmp_path / "spool.db", clock=t.clock(boot))
    again.open("exclusive")
    try:
        assert again.claim_clock() == (DAY if moved else 0.0)
        now = again.clock.now()
        assert now == t.wall_at
        due = again.fetch_due("out", now + 40, 10, ())
        if moved:  # 20 s of the 60 s backoff have passed
            assert again.fetch_due("out", now, 10, ()) == []
            assert [row.did for row in due] == [did] and due[0].first_at == now - 20
        else:  # after a reboot the wall clock is all there is: the retry came due during the "day"
            assert [row.did for row in again.fetch_due("out", now, 10, ())] == [did]
    finally:
        again.close()


@pytest.mark.anyio
async def test_other_processes_write_in_the_routers_time_base(tmp_path: Path) -> None:
    """`dlq replay` and `status` run beside the router: they use the base it recorded, not their own wall clock."""
    behind = SpoolClock(wall=lambda: time.time() - HOUR)
    spool = SQLiteSpool(tmp_path / "spool.db", clock=behind)
    spool.open("exclusive")
    other = SQLiteSpool(tmp_path / "spool.db")
    try:
        spool.claim_clock()
        ((did,),) = await spool.store([store_event(1)])
        await spool.settle(retry=[(did, 1, behind.now() + 60, "503")])
        other.open("readonly")
        assert abs(other.clock.now() - behind.now()) < 1.0
        retry_in = other.status().backlogs["out"].next_retry_in
        assert retry_in is not None and 50 < retry_in <= 60, "due in a minute, not in an hour and a minute"
    finally:
        other.close()
        spool.close()


def require_libfaketime() -> Path:
    """The library's path. Skips on a machine without it; fails in CI, where scripts/services installs it."""
    for pattern in FAKETIME_LIBRARIES:
        found = sorted(Path("/").glob(pattern.lstrip("/")))
        if found:
            return found[0]
    message = "libfaketime is not installed (apt-get install libfaketime); see README 'Running the tests'"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


class FakeWallClock:
    """The router's wall clock, `offset` seconds away from the real one; monotonic time is left alone."""

    def __init__(self, directory: Path):
        self.library = require_libfaketime()
        self.file = directory / "faketime"
        self.set(0)

    def set(self, offset: int) -> None:
        # libfaketime re-reads the file on every clock call (FAKETIME_NO_CACHE): replace it whole, never
        # let it see a half-written one
        scratch = self.file.with_suffix(".new")
        scratch.write_text(f"{offset:+d}\n")
        os.replace(scratch, self.file)

    @property
    def env(self) -> dict[str, str]:
        return {
            "LD_PRELOAD": str(self.library),
            "FAKETIME_TIMESTAMP_FILE": str(self.file),
            "FAKETIME_NO_CACHE": "1",
            "DONT_FAKE_MONOTONIC": "1",
        }


def write_config(tmp: Path, port: int, outputs: dict[str, tuple[Receiver, str]]) -> Path:
    """A webhook input routing everything to one http output per receiver, each with its `retry` table."""
    tables = "".join(
        f"""
[outputs.{name}]
type = "http"
url = "{rx.url}/hooks"
retry = {{ {retry} }}
"""
        for name, (rx, retry) in outputs.items()
    )
    path = tmp / "router.toml"
    path.write_text(f"""
[router]
data_dir = "./var"
shutdown_timeout = "5s"
[inputs.connector]
type = "webhook"
listen = "127.0.0.1:{port}"
{tables}
[[routes]]
name = "everything"
to = {json.dumps(list(outputs))}
""")
    return path


def send(port: int, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        status, body, _ = post(f"http://127.0.0.1:{port}/events", example("transport.messageReceived"))
        assert status == 202, body
        ids.append(body["id"])
    return ids


def attempts(rx: Receiver, since: float = 0.0) -> dict[str, list[float]]:
    """Per event id, when the receiver got each attempt (time.monotonic()), counting from `since`."""
    with rx.lock:
        requests = list(rx.requests)
    out: dict[str, list[float]] = defaultdict(list)
    for request in requests:
        if request.at >= since:
            out[request.json()["id"]].append(request.at)
    return out


def status(config: Path, clock: FakeWallClock) -> dict[str, Any]:
    """`event-router status`, run under the router's own wall clock as an operator on that host would."""
    result = run_cli("status", "-c", str(config), "--json", env=clock.env)
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def jump_warnings(router: RouterProcess) -> list[dict[str, Any]]:
    return [r for r in router.log_records() if r["level"] == "warning" and "jump_seconds" in r]


def recover_and_check(rx: Receiver, ids: list[str], config: Path, clock: FakeWallClock, backoff: float) -> None:
    """Let the receiver accept: every event must reach it within its `backoff` ceiling (plus SLACK), not a
    jump later, and leave the spool."""
    within = backoff + SLACK
    rx.respond(200)
    recovered = time.monotonic()
    wait_for(lambda: set(attempts(rx, recovered)) >= set(ids), timeout=within + 10, what="every event delivered")
    took = max(min(times) for times in attempts(rx, recovered).values()) - recovered
    assert took <= within, f"the last event arrived {took:.1f}s after the receiver recovered (backoff allows {within}s)"
    wait_for(lambda: status(config, clock)["pending_events"] == 0, interval=0.2, what="an empty spool")


@pytest.mark.slow
def test_wall_clock_back_an_hour_while_running_delays_no_retry(tmp_path: Path) -> None:
    clock = FakeWallClock(tmp_path)
    port = free_port()
    with http_receiver() as rx:
        rx.respond(503)
        config = write_config(tmp_path, port, {"crm": (rx, 'initial_backoff = "2s", max_backoff = "2s"')})
        with RouterProcess(config, env=clock.env) as router:
            ids = send(port, 5)
            wait_for(lambda: set(attempts(rx)) >= set(ids), what="a failed first attempt of every event")
            clock.set(-HOUR)
            recover_and_check(rx, ids, config, clock, backoff=2)
            assert status(config, clock)["dead_letters"]["total"] == 0
            warnings = wait_for(lambda: jump_warnings(router), what="a warning about the jump")
            assert router.terminate() == 0
    assert abs(warnings[0]["jump_seconds"] + HOUR) < 60, warnings


@pytest.mark.slow
def test_wall_clock_forward_a_day_while_running_spends_no_retry_budget(tmp_path: Path) -> None:
    """max_age counts elapsed time: a day's jump neither dead-letters the pending events nor spares them."""
    clock = FakeWallClock(tmp_path)
    port = free_port()
    max_age = 12.0
    retry = f'initial_backoff = "1s", max_backoff = "1s", max_attempts = 1000, max_age = "{max_age:g}s"'
    with http_receiver() as rx, http_receiver() as gone:
        rx.respond(503)
        gone.respond(503)
        config = write_config(tmp_path, port, {"crm": (rx, retry), "gone": (gone, retry)})
        with RouterProcess(config, env=clock.env) as router:
            sent = time.monotonic()
            ids = send(port, 5)
            wait_for(lambda: set(attempts(rx)) >= set(ids), what="a failed first attempt of every event")
            jumped = time.monotonic()
            clock.set(DAY)
            wait_for(
                lambda: (
                    all(len(times) >= 2 for times in attempts(rx, jumped).values()) and len(attempts(rx, jumped)) == 5
                ),
                what="two more attempts of every event after the jump",
            )
            before = status(config, clock)
            assert before["dead_letters"]["total"] == 0, before
            # the spool's times moved with the clock: the oldest event is seconds old, not a day
            assert before["oldest_pending_age_seconds"] < max_age, before
            recover_and_check(rx, ids, config, clock, backoff=1)
            # the output that never recovers: its events are dead-lettered once max_age has really elapsed
            wait_for(
                lambda: status(config, clock)["dead_letters"]["total"] == 5,
                timeout=max_age + 20,
                interval=0.2,
                what="the never-recovering output's events dead-lettered",
            )
            after = status(config, clock)
            assert router.terminate() == 0
    assert after["dead_letters"]["counts"] == [{"output": "gone", "reason": "retries_exhausted", "count": 5}], after
    for event_id, times in attempts(gone).items():
        # stored after `sent`, and dead-lettered after the attempt that found it max_age old
        assert max(times) - sent >= max_age - 0.5, f"{event_id} was dead-lettered {max(times) - sent:.1f}s in"
    jumps = [round(w["jump_seconds"] / DAY) for w in jump_warnings(router)]
    # libfaketime re-reads its file on every call from several threads and, rarely, hands one call the
    # real time (CI saw [1, -1, 1]): the router then sees the day go and come back, and says so. What
    # counts is that the jump was seen first and the net move is one day.
    assert jumps[0] == 1 and sum(jumps) == 1, jumps


@pytest.mark.slow
@pytest.mark.parametrize("jump", [-HOUR, DAY], ids=["back-an-hour", "forward-a-day"])
def test_wall_clock_jump_while_stopped_keeps_the_schedule(tmp_path: Path, jump: int) -> None:
    """Stopped with retries pending, the clock steps, the router starts again (same boot): same schedule."""
    clock = FakeWallClock(tmp_path)
    port = free_port()
    retry = 'initial_backoff = "2s", max_backoff = "2s", max_age = "1h"'
    with http_receiver() as rx:
        rx.respond(503)
        config = write_config(tmp_path, port, {"crm": (rx, retry)})
        with RouterProcess(config, env=clock.env) as router:
            ids = send(port, 5)
            wait_for(lambda: set(attempts(rx)) >= set(ids), what="a failed first attempt of every event")
            assert router.terminate() == 0
        clock.set(jump)
        with RouterProcess(config, env=clock.env) as again:
            recover_and_check(rx, ids, config, clock, backoff=2)
            assert status(config, clock)["dead_letters"]["total"] == 0
            assert again.terminate() == 0
    warnings = jump_warnings(again)
    assert len(warnings) == 1 and abs(warnings[0]["jump_seconds"] - jump) < 60, warnings
