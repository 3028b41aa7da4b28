"""Gap recovery against the fake Connector over HTTP, with a real router process: what arrived live is not
stored again; what the Connector raised while the router was down is rebuilt exactly once each, with the
trigger the Connector used, and passes strict validation."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from event_router.testing import (
    RouterProcess,
    archive_all,
    dead_letters,
    free_port,
    read_jsonl,
    router_table,
    until,
    webhook_input,
)

pytestmark = pytest.mark.anyio


def _load_fake() -> Any:
    """tests/fake_connector.py under the one module name the other tests load it as."""
    if "fake_connector" not in sys.modules:
        spec = importlib.util.spec_from_file_location("fake_connector", Path(__file__).with_name("fake_connector.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["fake_connector"] = module
        spec.loader.exec_module(module)
    return sys.modules["fake_connector"]


FakeConnector = _load_fake().FakeConnector

KEY = "hook-key"


def _config(tmp: Path, hook: int, connector: str) -> str:
    return (
        router_table()
        + webhook_input(hook, api_key=f'"{KEY}"', extra='validation = "strict"')
        + f'[inputs.recovery]\ntype = "connector"\nbase_url = "{connector}"\napi_key = "connector-key"\n'
        + 'interval = "1s"\nslack = "5s"\nvalidation = "strict"\n'
        + archive_all()
    )


async def _changes(fake: Any, relationship: str | None = None) -> None:
    """One of each change recovery rebuilds, raised by the fake Connector."""
    await fake.receive_message()
    await fake.receive_message()
    await fake.receive_message(own=True)
    await fake.receive_request()
    await fake.complete_outgoing_request()
    if relationship is None:
        await fake.change_relationship()
    else:
        await fake.change_relationship(relationship, "Active")


async def test_live_events_are_not_recovered_and_missed_ones_are_once(tmp_path: Path) -> None:
    hook = free_port()
    async with FakeConnector() as fake:
        fake.webhooks = [f"http://127.0.0.1:{hook}/events"]
        fake.webhook_headers = {"x-api-key": KEY}
        (tmp_path / "router.toml").write_text(_config(tmp_path, hook, fake.url))
        archive = tmp_path / "var" / "events.jsonl"
        router = RouterProcess(tmp_path / "router.toml").start()
        try:
            await _changes(fake)
            assert not fake.lost, fake.lost
            live = len(fake.emitted)
            await until(lambda: archive.exists() and len(read_jsonl(archive)) >= live, "live events stored")
            # the next looks start after every live event was stored and reach back over all of them (slack 5 s)
            done = len([r for r in router.log_records() if str(r.get("msg", "")).startswith("recovery look")])
            after = await _look(router, done + 2)
            assert after["duplicates"] == live and after["recovered"] == 0, after
            assert len(read_jsonl(archive)) == live, "a live event was recovered again"
        finally:
            router.terminate()
        relationship = fake.state["getRelationships"][0]["id"]
        # the router is down: every event the Connector raises now is lost at the source
        await _changes(fake, relationship)
        missed = fake.lost[:]
        assert len(missed) == 6, missed
        router = RouterProcess(tmp_path / "router.toml").start()
        try:
            await until(lambda: len(read_jsonl(archive)) >= live + len(missed), "missed events recovered")
            await _look(router, 3)
        finally:
            router.terminate()
    events = read_jsonl(archive)
    recovered = [e for e in events if e["meta"].get("recovered") is True]
    assert len(events) == live + len(missed), "each missed event once, nothing more"
    assert sorted((e["trigger"], _ident(e["data"])) for e in recovered) == sorted(
        (trigger, _ident(data)) for trigger, data in missed
    )
    assert Counter(e["source"] for e in recovered) == {"recovery": len(missed)}
    assert all(e["source"] == "connector" for e in events if e not in recovered)
    assert dead_letters(tmp_path / "var") == [], "strict validation passed every rebuilt event"
    for event, (_, data) in zip(
        sorted(recovered, key=lambda e: _ident(e["data"])), sorted(missed, key=lambda m: _ident(m[1])), strict=True
    ):
        assert event["data"] == data, "rebuilt exactly: the data the Connector sent"


async def _look(router: RouterProcess, count: int) -> dict[str, Any]:
    """The `count`-th recovery look's log record (awaited: the fake Connector answers on this event loop)."""

    def found() -> dict[str, Any] | None:
        looks = [r for r in router.log_records() if str(r.get("msg", "")).startswith("recovery look")]
        return looks[count - 1] if len(looks) >= count else None

    record: dict[str, Any] = await until(found, f"recovery look x{count}")
    return record


def _ident(data: dict[str, object]) -> str:
    inner = data.get("request")
    return str(inner["id"] if isinstance(inner, dict) else data["id"])
