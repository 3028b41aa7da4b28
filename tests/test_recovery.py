"""Gap recovery against the fake Connector over HTTP, with a real router process: what arrived live is not
stored again; what the Connector raised while the router was down is rebuilt exactly once each, with the
trigger the Connector used, and passes strict validation."""

from __future__ import annotations

import json
import re
import time
import tomllib
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from event_router.config import ConfigErrors, build_config
from event_router.core.model import RouterConfig
from event_router.plugin_loader import load_plugins
from event_router.testing import (
    RouterProcess,
    dead_letters,
    free_port,
    read_jsonl,
    readyz,
    router_table,
    run_cli,
    until,
    webhook_input,
)
from fake_connector import FakeConnector

pytestmark = pytest.mark.anyio


KEY = "hook-key"


def _config(
    tmp: Path,
    hook: int,
    connector: str,
    *,
    interval: str = "1s",
    settle: str = "1s",
    slack: str = "10s",
    admin: int | None = None,
) -> str:
    return (
        router_table(admin)
        + webhook_input(hook, api_key=f'"{KEY}"', extra='validation = "strict"')
        + f'[inputs.recovery]\ntype = "connector"\nbase_url = "{connector}"\napi_key = "connector-key"\n'
        + f'interval = "{interval}"\nslack = "{slack}"\nsettle = "{settle}"\nvalidation = "strict"\n'
        + 'covers = "connector"\n'
        + '[outputs.archive]\ntype = "file"\npath = "./var/events.jsonl"\n'
        # only the webhook's events: the rebuilt ones take this route because recovery covers it
        + '[[routes]]\nname = "from the Connector"\nmatch.source = ["connector"]\nto = "archive"\n'
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
            # a look that lists every live change: all of them announced before, none held back to settle
            after = await _look(router, lambda r: r["found"] == live and r["deferred"] == 0)
            assert after["announced"] == live and after["duplicates"] == 0, after
            assert sum(r["recovered"] for r in _looks(router)) == 0, "a live event was recovered"
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
            # and a look after that finds them all stored
            done = len(_looks(router))
            await _look(router, lambda r: _looks(router).index(r) >= done and r["deferred"] == 0)
        finally:
            router.terminate()
    events = read_jsonl(archive)
    recovered = [e for e in events if e["meta"].get("recovered") is True]
    assert len(events) == live + len(missed), "each missed event once, nothing more"
    assert sorted((e["trigger"], _ident(e["data"])) for e in recovered) == sorted(
        (trigger, _ident(data)) for trigger, data in missed
    )
    # routed as if from the webhook they stand in for, and said to be rebuilt, and by which input
    assert Counter((e["source"], e["meta"]["recovered_by"]) for e in recovered) == {
        ("connector", "recovery"): len(missed)
    }
    assert all(e["source"] == "connector" and "recovered_by" not in e["meta"] for e in events if e not in recovered)
    assert dead_letters(tmp_path / "var") == [], "strict validation passed every rebuilt event"
    for event, (_, data) in zip(
        sorted(recovered, key=lambda e: _ident(e["data"])), sorted(missed, key=lambda m: _ident(m[1])), strict=True
    ):
        assert event["data"] == data, "rebuilt exactly: the data the Connector sent"


async def test_a_look_while_the_live_event_is_on_its_way_leaves_it_to_settle(tmp_path: Path) -> None:
    """The race: the Connector changed its state, its webhook is still on the way, and a look lists the
    change. Rebuilt at once, it would be stored, and then the live event too. The fake Connector holds the
    POST back 3 s; looks run every 0.5 s meanwhile; settle = 5 s leaves the change to a later look."""
    hook = free_port()
    async with FakeConnector() as fake:
        fake.webhooks = [f"http://127.0.0.1:{hook}/events"]
        fake.webhook_headers = {"x-api-key": KEY}
        (tmp_path / "router.toml").write_text(_config(tmp_path, hook, fake.url, interval="500ms", settle="5s"))
        archive = tmp_path / "var" / "events.jsonl"
        router = RouterProcess(tmp_path / "router.toml").start()
        try:
            await _look(router, lambda r: True)
            fake.webhook_delay = 3.0
            async with anyio.create_task_group() as group:
                group.start_soon(fake.receive_message)
                # provoked: a look listed the change while its live event was not stored yet
                await _look(router, lambda r: r["found"] == 1)
                live = [e for e in (read_jsonl(archive) if archive.exists() else []) if "recovered" not in e["meta"]]
                assert live == [], "the live event came before the look"
            assert not fake.lost
            settled = await _look(router, lambda r: r["found"] == 1 and r["deferred"] == 0)
            # the live event came while the change waited to settle: announced, it is not submitted at all
            assert settled["announced"] == 1 and settled["recovered"] == 0, settled
            assert sum(r["recovered"] for r in _looks(router)) == 0
            assert [e["meta"].get("recovered") for e in read_jsonl(archive)] == [None], "stored once, the live one"
        finally:
            router.terminate()


async def test_steady_live_traffic_does_not_make_looks_come_every_settle(tmp_path: Path) -> None:
    """Three messages are lost before the router starts; then one arrives live every 0.1 s for 8 s, with
    interval = 1h and settle = 1s. Each look lists the newest live messages for the first time: held back
    to settle, they would bring a look every second for as long as the traffic goes on. Asked of the core,
    they are announced already and skipped; only the lost ones wait, and are rebuilt once each."""
    hook = free_port()
    async with FakeConnector() as fake:
        fake.webhooks = [f"http://127.0.0.1:{hook}/events"]
        fake.webhook_headers = {"x-api-key": KEY}
        for _ in range(3):
            await fake.receive_message()
        missed = fake.lost[:]
        assert len(missed) == 3
        (tmp_path / "router.toml").write_text(_config(tmp_path, hook, fake.url, interval="1h", settle="1s"))
        archive = tmp_path / "var" / "events.jsonl"
        router = RouterProcess(tmp_path / "router.toml").start()
        try:
            ends = time.monotonic() + 8
            while time.monotonic() < ends:
                await fake.receive_message()
                await anyio.sleep(0.1)
            assert fake.lost == missed, "a live message was refused"
            live = len(fake.emitted) - len(missed)
            await until(lambda: len(read_jsonl(archive)) >= live + len(missed), "live and missed events stored")
            looks = _looks(router)
        finally:
            router.terminate()
    # the start look and the one `settle` later that rebuilt the lost ones; one more at most for a live
    # message listed while its POST was on its way (it is not announced yet, so it waits); not one per second
    assert 2 <= len(looks) <= 4, looks
    assert sum(r["recovered"] for r in looks) == len(missed), looks
    assert any(r["announced"] > 0 for r in looks), "the live messages in reach were skipped as announced"
    events = read_jsonl(archive)
    recovered = [e for e in events if e["meta"].get("recovered") is True]
    assert sorted(e["data"]["id"] for e in recovered) == sorted(data["id"] for _, data in missed)
    assert len(events) == live + len(missed), "each event once"


def _looks(router: RouterProcess) -> list[dict[str, Any]]:
    return [r for r in router.log_records() if str(r.get("msg", "")).startswith("recovery look")]


async def _look(router: RouterProcess, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The first recovery look's log record that is `wanted` (awaited: the fake Connector answers on this
    event loop)."""

    def found() -> dict[str, Any] | None:
        return next((r for r in _looks(router) if wanted(r)), None)

    try:
        record: dict[str, Any] = await until(found, "a recovery look as wanted")
    except AssertionError as exc:
        other = [r for r in router.log_records() if r.get("level") != "info"]
        raise AssertionError(f"{exc}; the looks: {_looks(router)}; {other}") from None
    return record


def _ident(data: dict[str, object]) -> str:
    inner = data.get("request")
    return str(inner["id"] if isinstance(inner, dict) else data["id"])


COVERS = """
[router]
data_dir = "./var"
[inputs.hooks]
type = "webhook"
listen = "127.0.0.1:0"
[inputs.recovery]
type = "connector"
base_url = "http://127.0.0.1:8080"
api_key = "k"
interval = "5m"
%s
[outputs.crm]
type = "http"
url = "http://127.0.0.1:9000/hooks"
[[routes]]
name = "mail to CRM"
match = { source = ["hooks"], trigger = ["transport.messageReceived"] }
to = ["crm"]
"""


def _build(text: str, tmp_path: Path) -> RouterConfig:
    return build_config(tomllib.loads(text), path=tmp_path / "router.toml", registry=load_plugins(entry_points=False))


@pytest.mark.parametrize(
    ("covers", "error"),
    [
        ('covers = "hook"', "inputs.recovery.covers: no input named 'hook' (inputs: hooks, recovery)"),
        ('covers = "recovery"', "inputs.recovery.covers: an input cannot cover itself"),
        (
            'covers = "hooks"\n[inputs.again]\ntype = "connector"\nbase_url = "http://127.0.0.1:8080"\n'
            'api_key = "k"\ncovers = "hooks"',
            "inputs.again.covers: input 'hooks' is covered by 'recovery' already",
        ),
        (
            'covers = "hooks"\n[inputs.again]\ntype = "connector"\nbase_url = "http://127.0.0.1:8080"\n'
            'api_key = "k"\ncovers = "recovery"',
            "inputs.again.covers: 'recovery' rebuilds missed events itself: name a live input",
        ),
    ],
)
def test_covers_names_one_live_input(covers: str, error: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigErrors) as info:
        _build(COVERS % covers, tmp_path)
    assert [str(e) for e in info.value.errors if error in str(e)], [str(e) for e in info.value.errors]


def test_a_route_by_source_that_recovery_does_not_reach_is_warned_about(tmp_path: Path) -> None:
    config = _build(COVERS % "", tmp_path)
    assert [w for w in config.warnings if "plain text" not in w] == [
        "router.toml: routes[0].match.source: does not admit input 'recovery', so the events it rebuilds never "
        "take this route: set inputs.recovery.covers to the input whose missed events it rebuilds, and they are "
        "routed as from it",
    ]
    covered = _build(COVERS % 'covers = "hooks"', tmp_path)
    assert [w for w in covered.warnings if "plain text" not in w] == []


def test_check_folds_recovery_into_the_lines_of_the_input_it_covers(tmp_path: Path) -> None:
    config = tmp_path / "router.toml"
    config.write_text(COVERS % 'covers = "hooks"')
    checked = run_cli("check", "-c", str(config))
    assert checked.returncode == 0, checked.stderr
    # line 1 says where the spool is
    assert checked.stdout.splitlines()[2:] == [
        'route "mail to CRM": webhook "hooks" (lost while the router is unreachable or refuses, as during a '
        "restart without the systemd socket unit or when the spool cannot write: the Connector does not retry; "
        'recovered from the Connector every 5m) -> http "crm" (at least once: retried until a 2xx; repeats carry '
        "the same Idempotency-Key)"
    ]
    rows = json.loads(run_cli("check", "-c", str(config), "--json").stdout)["guarantees"]
    assert [(r["input"], r["recovered_by"]) for r in rows] == [("hooks", "recovery")]
    # not covering: the recovery input has its own lines where a route admits it
    config.write_text((COVERS % "").replace('source = ["hooks"], ', ""))
    lines = run_cli("check", "-c", str(config)).stdout.splitlines()[2:]
    assert [line.split(" (")[0] for line in lines] == [
        'route "mail to CRM": webhook "hooks"',
        'route "mail to CRM": connector "recovery"',
    ]
    assert 'connector "recovery" (recovered from the Connector every 5m) -> ' in lines[1]


async def test_request_status_changes_and_peer_deletion_are_rebuilt_as_their_latest_state(tmp_path: Path) -> None:
    """Lost while the router is down: a request received and decided in two steps, relationships whose
    peers are being deleted or were. Rebuilt: the request as it is now and its last status change, each
    relationship's last change and the peer's deletion. Then, live, a peer deletion is not rebuilt again
    (its key is dated by the deletion, not by the audit log, which a deletion does not extend)."""
    hook = free_port()
    async with FakeConnector() as fake:
        fake.webhooks = [f"http://127.0.0.1:{hook}/events"]
        fake.webhook_headers = {"x-api-key": KEY}
        request = await fake.receive_request()
        await fake.decide_incoming_request(request["id"], "Decided")
        await fake.decide_incoming_request(request["id"], "Completed")
        leaving = await fake.change_relationship()
        await fake.delete_peer(leaving["id"], "ToBeDeleted")
        gone = await fake.change_relationship()
        await fake.delete_peer(gone["id"], "Deleted")
        missed = fake.lost[:]
        assert len(missed) == 7
        (tmp_path / "router.toml").write_text(_config(tmp_path, hook, fake.url))
        archive = tmp_path / "var" / "events.jsonl"
        router = RouterProcess(tmp_path / "router.toml").start()
        try:
            await until(lambda: archive.exists() and len(read_jsonl(archive)) >= 6, "missed events recovered")
            done = len(_looks(router))
            await _look(router, lambda r: _looks(router).index(r) >= done and r["deferred"] == 0)
            assert len(read_jsonl(archive)) == 6
            # live: a peer starts deleting, its event arrives; the looks after it rebuild nothing
            await fake.delete_peer(gone["id"], "ToBeDeleted")
            fake_live = fake.emitted[-1]
            await until(lambda: len(read_jsonl(archive)) >= 7, "live event stored")
            done = len(_looks(router))
            await _look(router, lambda r: _looks(router).index(r) >= done + 2 and r["deferred"] == 0)
        finally:
            router.terminate()
    events = read_jsonl(archive)
    assert len(events) == 7, "\n".join(f"{e['trigger']} {e['meta']} {_ident(e['data'])}" for e in events)
    recovered = [(e["trigger"], _ident(e["data"])) for e in events if e["meta"].get("recovered")]
    assert sorted(recovered) == sorted(
        [
            ("consumption.incomingRequestReceived", request["id"]),
            ("consumption.incomingRequestStatusChanged", request["id"]),
            ("transport.relationshipChanged", leaving["id"]),
            ("transport.peerToBeDeleted", leaving["id"]),
            ("transport.relationshipChanged", gone["id"]),
            ("transport.peerDeleted", gone["id"]),
        ]
    )
    by_trigger = {(e["trigger"], _ident(e["data"])): e["data"] for e in events if e["meta"].get("recovered")}
    # exactly what the Connector sent last for each: the last status change, the peer's deletion
    for trigger, data in (missed[2], missed[4], missed[6]):
        assert by_trigger[(trigger, _ident(data))] == data, trigger
    assert events[-1]["trigger"] == fake_live[0] and "recovered" not in events[-1]["meta"]
    assert dead_letters(tmp_path / "var") == [], "strict validation passed every rebuilt event"


async def test_every_relationship_state_missed_is_rebuilt_in_order(tmp_path: Path) -> None:
    """Live: a relationship is requested (Pending) and stored. While the router is down it is accepted, then
    terminated: two relationshipChanged events lost. Rebuilt: both, in order, each exactly as the Connector
    sent it (the status that step set, the audit log up to it); the live one is not rebuilt again."""
    hook = free_port()
    async with FakeConnector() as fake:
        fake.webhooks = [f"http://127.0.0.1:{hook}/events"]
        fake.webhook_headers = {"x-api-key": KEY}
        (tmp_path / "router.toml").write_text(_config(tmp_path, hook, fake.url, slack="1m"))
        archive = tmp_path / "var" / "events.jsonl"
        router = RouterProcess(tmp_path / "router.toml").start()
        try:
            relationship = await fake.change_relationship()
            await until(lambda: archive.exists() and len(read_jsonl(archive)) == 1, "live event stored")
        finally:
            router.terminate()
        await fake.change_relationship(relationship["id"], "Active")
        await fake.change_relationship(relationship["id"], "Terminated")
        missed = fake.lost[:]
        assert [data["status"] for _, data in missed] == ["Active", "Terminated"]
        router = RouterProcess(tmp_path / "router.toml").start()
        try:
            await until(lambda: len(read_jsonl(archive)) >= 3, "missed states recovered")
            done = len(_looks(router))
            await _look(router, lambda r: _looks(router).index(r) >= done and r["deferred"] == 0)
        finally:
            router.terminate()
    events = read_jsonl(archive)
    assert [(e["data"]["status"], e["meta"].get("recovered")) for e in events] == [
        ("Pending", None),
        ("Active", True),
        ("Terminated", True),
    ]
    assert [e["data"] for e in events[1:]] == [data for _, data in missed], "each step as the Connector sent it"
    assert dead_letters(tmp_path / "var") == [], "strict validation passed every rebuilt event"


async def test_attributes_created_and_succeeded_are_rebuilt_a_deleted_one_is_not(tmp_path: Path) -> None:
    """Live: an attribute is created and stored, and looks pass beyond it. Lost while the router is down: its
    succession (the predecessor now before every look's reach, found by `succeededBy`), a new attribute, and
    one created and deleted. Rebuilt: the succession as the Connector sent it and the new attribute; the
    deleted one's two events are not (the Connector removed it before it raised attributeDeleted)."""
    hook = free_port()
    async with FakeConnector() as fake:
        fake.webhooks = [f"http://127.0.0.1:{hook}/events"]
        fake.webhook_headers = {"x-api-key": KEY}
        (tmp_path / "router.toml").write_text(_config(tmp_path, hook, fake.url, interval="300ms", slack="1s"))
        archive = tmp_path / "var" / "events.jsonl"
        router = RouterProcess(tmp_path / "router.toml").start()
        try:
            old = await fake.create_attribute("Alice")
            await until(lambda: archive.exists() and len(read_jsonl(archive)) == 1, "live attribute stored")
            await _look(router, lambda r: r["since"] > old["createdAt"])
        finally:
            router.terminate()
        successor = await fake.succeed_attribute(old["id"], "Alicia")
        new = await fake.create_attribute("Bob")
        gone = await fake.create_attribute("Carol")
        await fake.delete_attribute(gone["id"])
        missed = fake.lost[:]
        assert [t for t, _ in missed] == [
            "consumption.attributeSucceeded",
            "consumption.attributeCreated",
            "consumption.attributeCreated",
            "consumption.attributeDeleted",
        ]
        router = RouterProcess(tmp_path / "router.toml").start()
        try:
            await until(lambda: len(read_jsonl(archive)) >= 3, "missed attributes recovered")
            done = len(_looks(router))
            await _look(router, lambda r: _looks(router).index(r) >= done and r["deferred"] == 0)
        finally:
            router.terminate()
        asked = [s.query for s in fake.calls("getAttributes") if "succeededBy" in s.query]
        assert asked and all(q == f"succeededBy={successor['id']}" for q in asked), asked
    events = read_jsonl(archive)
    recovered = [(e["trigger"], e["data"]) for e in events if e["meta"].get("recovered")]
    assert recovered == [missed[0], missed[1]], "the succession and the new attribute, exactly as sent"
    assert recovered[0][1]["predecessor"]["succeededBy"] == successor["id"]
    assert new["id"] == recovered[1][1]["id"]
    assert dead_letters(tmp_path / "var") == [], "strict validation passed every rebuilt event"


async def test_a_gap_in_the_covered_webhook_makes_recovery_look_at_once(tmp_path: Path) -> None:
    """interval = 1h: only a detected gap brings a look before it. The Connector posts with a wrong key (401,
    lost): the refusal makes recovery look, and the message is rebuilt `settle` later. Then the webhook is at
    max_connections (one request whose body never comes) and ready again: recovery looks again."""
    hook = free_port()
    async with FakeConnector() as fake:
        fake.webhooks = [f"http://127.0.0.1:{hook}/events"]
        fake.webhook_headers = {"x-api-key": "not-the-key"}
        admin = free_port()
        config = _config(tmp_path, hook, fake.url, interval="1h", admin=admin).replace(
            'validation = "strict"\n', 'validation = "strict"\nmax_connections = 1\n', 1
        )
        (tmp_path / "router.toml").write_text(config)
        archive = tmp_path / "var" / "events.jsonl"
        router = RouterProcess(tmp_path / "router.toml").start()
        try:
            await _look(router, lambda r: r["why"] == "start")
            lost = await fake.receive_message()
            assert [m for _, m in fake.lost] == [lost]
            await _look(router, lambda r: r["why"] == "gap: connector refused requests" and r["found"] == 1)
            await _look(router, lambda r: r["why"] == "settle" and r["recovered"] == 1)
            assert [e["data"]["id"] for e in read_jsonl(archive)] == [lost["id"]]
            looks = len(_looks(router))
            # the webhook's one connection busy with a request whose body does not come: not ready
            stream = await anyio.connect_tcp("127.0.0.1", hook)
            await stream.send(
                f"POST /events HTTP/1.1\r\nHost: x\r\nx-api-key: {KEY}\r\nContent-Type: application/json\r\n"
                "Content-Length: 100\r\n\r\n{".encode()
            )
            await until(lambda: readyz(admin)[0] == 503, "the webhook at max_connections")
            await anyio.sleep(1.0)
            await stream.aclose()
            await _look(router, lambda r: r["why"] == "gap: connector was not ready")
            assert all(r["why"] != "interval" for r in _looks(router)[looks:])
            # a look that fails: the Connector answers 500; another refusal brings the look
            fake.fail("getMessages", 500)
            await fake.receive_message()
            await until(lambda: _metrics(admin).get(("recovery_looks_total", "failed")), "a failed look counted")
            metrics = _metrics(admin)
        finally:
            router.terminate()
    # the rebuilt message by its schema, each look by its outcome, and when the last good one was
    assert metrics[("recovered_events_total", "transport.messageReceived")] == 1
    assert metrics[("recovery_looks_total", "recovered")] == 1
    assert metrics[("recovery_looks_total", "nothing")] >= 2
    assert metrics[("recovery_looks_total", "failed")] == 1
    assert time.time() - 60 < metrics[("recovery_last_look_timestamp_seconds", "")] <= time.time()


def _metrics(admin: int) -> dict[tuple[str, str], float]:
    """The recovery input's series from a real scrape: (metric, its trigger or outcome label) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as response:
        text = response.read().decode()
    found: dict[tuple[str, str], float] = {}
    for name, labels, value in re.findall(r'^event_router_(\w+)\{([^}]*input="recovery"[^}]*)\} (\S+)$', text, re.M):
        other: dict[str, str] = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        found[(name, other.get("trigger", other.get("outcome", "")))] = float(value)
    return found
