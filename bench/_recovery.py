"""Scenario `recovery`: one hour of a busy Connector's traffic missed, rebuilt by the gap-recovery input.

The fake Connector of the tests (tests/fake_connector.py, which enforces the endpoint table) runs in this
process on loopback, on an event loop of its own thread, holding 36,000 changes dated over the hour before
the run: messages received and sent, incoming requests, completed outgoing requests, relationships. None
of them was announced (its webhooks are off). The router has a recovery input whose watermark says it last
looked an hour ago (as after an hour down), `slack` 1 minute, `settle` 1 s, `interval` 2 s, and one route
to a `file` output. Measured: from starting the router process to the look that stored all of them, and
the CPU of the router per look once there is nothing left to find (each such look still lists every
relationship: that list has no date filter).
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _common import ROOT, cpu_seconds, router

#: changes in the hour: two thirds messages, the rest requests and relationships
MIX = {"received": 16_000, "sent": 8_000, "incoming": 4_000, "outgoing": 4_000, "relationships": 4_000}
TARGET_SECONDS = 60.0
TARGET_IDLE_LOOK_CPU = 1.0


def _fake_connector_class() -> Any:
    """tests/fake_connector.py, loaded by path under the name the tests load it as."""
    if "fake_connector" not in sys.modules:
        spec = importlib.util.spec_from_file_location("fake_connector", ROOT / "tests" / "fake_connector.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["fake_connector"] = module
        spec.loader.exec_module(module)
    return sys.modules["fake_connector"].FakeConnector


@contextmanager
def _connector() -> Iterator[tuple[Any, asyncio.AbstractEventLoop]]:
    """A started fake Connector serving from a thread's event loop; stopped on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    fake = _fake_connector_class()()
    asyncio.run_coroutine_threadsafe(fake.start(), loop).result(30)
    try:
        yield fake, loop
    finally:
        asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


async def _fill(fake: Any, end: datetime) -> int:
    """The changes, made by the fake's own methods (so the DTOs are the ones the tests check), with their
    webhooks off and their dates spread over the hour before `end`."""
    from event_router.inputs.recovery import connector_date

    async def silent(trigger: str, data: Any) -> None:
        return None

    fake.emit = silent
    made: list[tuple[str, dict[str, Any]]] = []
    for _ in range(MIX["received"]):
        made.append(("message", await fake.receive_message()))
    for _ in range(MIX["sent"]):
        made.append(("message", await fake.receive_message(own=True)))
    for _ in range(MIX["incoming"]):
        made.append(("request", await fake.receive_request()))
    for _ in range(MIX["outgoing"]):
        made.append(("outgoing", await fake.complete_outgoing_request()))
    for _ in range(MIX["relationships"]):
        made.append(("relationship", await fake.change_relationship()))
    step = 3600 / len(made)
    start = end - timedelta(hours=1)
    for i, (kind, dto) in enumerate(made):
        when = connector_date(start + timedelta(seconds=i * step))
        if kind == "relationship":
            dto["auditLog"][-1]["createdAt"] = when
        else:
            dto["createdAt"] = when
        if kind == "outgoing":
            dto["response"]["createdAt"] = when
    return len(made)


def _looks(rp: Any) -> list[dict[str, Any]]:
    return [r for r in rp.log_records() if str(r.get("msg", "")).startswith("recovery look")]


def _wait(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")


def recovery(quick: bool) -> dict[str, Any]:
    idle_looks = 3 if quick else 10
    from event_router.inputs.recovery import connector_date

    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as tmp, _connector() as (fake, loop):
        work = Path(tmp)
        # the hour ends two minutes ago: what the looks after the first reach (a minute of slack) is empty
        end = datetime.now(UTC) - timedelta(minutes=2)
        total = asyncio.run_coroutine_threadsafe(_fill(fake, end), loop).result(300)
        (work / "var").mkdir()
        watermark = connector_date(end - timedelta(hours=1) + timedelta(minutes=1))
        (work / "var" / "recovery-recovery.json").write_text(f'{{"watermark": "{watermark}"}}')
        config = work / "router.toml"
        config.write_text(
            '[router]\ndata_dir = "var"\nlog_level = "info"\n'
            f'[inputs.recovery]\ntype = "connector"\nbase_url = "{fake.url}"\napi_key = "connector-key"\n'
            'interval = "2s"\nslack = "1m"\nsettle = "1s"\n'
            '[outputs.archive]\ntype = "file"\npath = "events.jsonl"\n'
            '[[routes]]\nname = "all"\nto = "archive"\n'
        )
        started_wall = time.time()
        started = time.monotonic()
        with router(config) as rp:
            assert rp.proc is not None
            ready_s = time.monotonic() - started
            stored = _wait(
                "the look that stores everything",
                lambda: next((r for r in _looks(rp) if r.get("recovered", 0) > 0), None),
                300,
            )
            stored_at = datetime.fromisoformat(stored["ts"].replace("Z", "+00:00")).timestamp()
            archive = work / "events.jsonl"
            _wait("every event in the file", lambda: archive.exists() and _lines(archive) >= total, 300)
            delivered_s = time.monotonic() - started
            # looks that find nothing: from the end of one to the end of the `idle_looks`-th after it
            first = len(_looks(rp))
            _wait("a look after delivery", lambda: len(_looks(rp)) > first, 30)
            cpu0, mark = cpu_seconds(rp.proc.pid), len(_looks(rp))
            _wait("the idle looks", lambda: len(_looks(rp)) >= mark + idle_looks, 30 + 5 * idle_looks)
            cpu1 = cpu_seconds(rp.proc.pid)
            idle = _looks(rp)[mark : mark + idle_looks]
    seconds = round(stored_at - started_wall, 2)
    cpu_per_look = round((cpu1 - cpu0) / idle_looks, 3)
    return {
        "events": total,
        "mix": MIX,
        "router": {
            "stored_seconds": seconds,
            "ready_seconds": round(ready_s, 2),
            "look_seconds": stored["took"],
            "recovered": stored["recovered"],
            "events_per_s": round(stored["recovered"] / stored["took"]) if stored["took"] else None,
            "delivered_to_file_seconds": round(delivered_s, 2),
            "idle_look_cpu_seconds": cpu_per_look,
            "idle_look_seconds": [r["took"] for r in idle],
            "idle_look_found": [r["found"] for r in idle],
        },
        "target": (
            f"all {total:,} stored < {TARGET_SECONDS:g} s; a look that finds nothing < {TARGET_IDLE_LOOK_CPU:g} s CPU"
        ),
        "met": seconds < TARGET_SECONDS
        and stored["recovered"] == total
        and cpu_per_look < TARGET_IDLE_LOOK_CPU
        and all(r["found"] == 0 for r in idle),
    }


def _lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
