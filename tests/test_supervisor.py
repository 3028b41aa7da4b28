"""An input that fails after it started is restarted with the router's one back-off (`Backoff` on
`app.RESTART_POLICY`): the wait grows per failure, with full jitter under the ceiling, and the count starts
again once the input ran long enough to count as recovered."""

from __future__ import annotations

import logging
import sys
from typing import Any

import anyio
import pytest
from anyio.abc import TaskStatus

import event_router.app
from event_router.api import EventSink, Input, RetryPolicy, hookimpl
from event_router.testing import MakeApp, archive_all, router_table, until

pytestmark = pytest.mark.anyio

#: short waits (ceilings 0.01, 0.02, 0.04, 0.08 s for the failures in a row) and a long `healthy_after` (the
#: policy's max_backoff, 1 s): no stall of a busy machine between an input's start and its failure looks healthy
POLICY = RetryPolicy(max_age=0, initial_backoff=0.01, max_backoff=1.0)
#: the run (1-based) that stays up well past `healthy_after` before it fails, and the one that stays up
HEALTHY_RUN, LAST_RUN = 5, 7

runs = 0


class Flaky(Input):
    """Consumes, then fails at once; run HEALTHY_RUN fails only after a healthy while; LAST_RUN stays up."""

    type_name = "test-flaky"
    config_schema = {"type": "object"}

    async def run(self, sink: EventSink, *, task_status: TaskStatus[None]) -> None:
        global runs
        task_status.started()
        runs += 1
        if runs == LAST_RUN:
            await anyio.sleep_forever()
        if runs == HEALTHY_RUN:
            await anyio.sleep(POLICY.max_backoff * 1.5)
        raise RuntimeError(f"run {runs} failed")


@hookimpl
def event_router_input_types() -> list[type[Input]]:
    return [Flaky]


CONFIG = router_table() + '[inputs.flaky]\ntype = "test-flaky"\n' + archive_all()


async def test_a_failing_input_backs_off_and_starts_counting_again_once_it_was_healthy(
    make_app: MakeApp, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    global runs
    runs = 0
    monkeypatch.setattr(event_router.app, "RESTART_POLICY", POLICY)
    caplog.set_level(logging.INFO, logger="event_router.app")
    async with make_app(CONFIG, plugins=[sys.modules[__name__]]):
        await until(lambda: runs == LAST_RUN, what="the input's last run", within=30)
    restarts: list[Any] = [r for r in caplog.records if r.getMessage() == "input failed; restarting it"]
    attempts = [r.attempt for r in restarts]
    # four failures in a row, then one after a healthy while (the count starts again), then one more
    assert attempts == [1, 2, 3, 4, 1, 2], attempts
    for record in restarts:
        assert record.input == "flaky"
        ceiling = min(POLICY.max_backoff, POLICY.initial_backoff * 2 ** (record.attempt - 1))
        assert 0 <= record.retry_in <= ceiling, (record.attempt, record.retry_in)
