"""`event-router tap`: a running router's events and delivery attempts, live, from its admin endpoint.

Real router processes, the real `event-router tap` CLI as a subprocess, real HTTP receivers; the bounded
queue and the masking also at the unit level (`event_router.core.tap`, `event_router.core.masking`).
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from event_router.api.event import Event
from event_router.console.events import shown_event
from event_router.core.masking import MASKED, fixed_values, mask
from event_router.core.tap import Tap, TapFilter
from event_router.core.validation import SchemaRegistry, builtin_schema_dir
from event_router.testing import (
    RouterProcess,
    example,
    free_port,
    http_receiver,
    post,
    router_table,
    run_cli,
    webhook_input,
)

KEY = "tap-key"


def _config(tmp: Path, hook: int, admin: int, crm: int, *, unmask: bool = False) -> str:
    table = router_table(admin)
    if unmask:
        table = table.replace("[router.admin]\n", "[router.admin]\nunmask = true\n")
        assert "unmask = true" in table, table
    return (
        table
        + webhook_input(hook, api_key=f'"{KEY}"')
        + f'[outputs.archive]\ntype = "file"\npath = "{tmp}/events.jsonl"\n'
        + f'[outputs.crm]\ntype = "http"\nurl = "http://127.0.0.1:{crm}/hook"\n'
        + 'retry = { initial_backoff = "0.2s" }\n'
        + '[[routes]]\nname = "messages"\nmatch.trigger = "transport.messageReceived"\nto = ["archive", "crm"]\n'
        + '[[routes]]\nname = "the rest"\nmatch.trigger = "**"\nto = ["archive"]\n'
    )


class Tapper:
    """`event-router tap --json ...` as a subprocess, its lines read by a thread."""

    def __init__(self, config: Path, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "event_router", "tap", "-c", str(config), "--json", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.records: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        assert self.proc.stderr is not None
        #: what the command warned about before it began to tap
        self.warnings: list[str] = []
        first = self.proc.stderr.readline()
        while first.startswith("warning: "):
            self.warnings.append(first.rstrip("\n"))
            first = self.proc.stderr.readline()
        assert first.startswith("tapping "), first + self.proc.stderr.read()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for text in self.proc.stdout:
            self.records.append(json.loads(text))

    def wait(self, check: Any, what: str, timeout: float = 20) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [r for r in list(self.records) if check(r)]
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no tap record: {what}; got {self.records}")

    def stop(self) -> str:
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=10)
        return err


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Path, int, int, Any]]:
    hook, admin = free_port(), free_port()
    with http_receiver() as crm:
        crm.respond(503, 200)  # the first attempt fails, the retry goes through
        (tmp_path / "router.toml").write_text(_config(tmp_path, hook, admin, crm.port))
        router = RouterProcess(tmp_path / "router.toml").start()
        try:
            yield tmp_path / "router.toml", hook, admin, crm
        finally:
            router.terminate()


def test_tap_shows_each_event_and_each_attempt_with_data_masked(running: tuple[Path, int, int, Any]) -> None:
    config, hook, _, _ = running
    tap = Tapper(config)
    try:
        sent = example("transport.messageReceived")
        status, answer, _ = post(f"http://127.0.0.1:{hook}/events", sent, {"x-api-key": KEY})
        assert status == 202, answer
        [event] = tap.wait(lambda r: r["type"] == "event", "the event")
        assert event["trigger"] == "transport.messageReceived" and event["outcome"] == "accepted"
        assert event["routes"] == ["messages", "the rest"] and event["outputs"] == ["archive", "crm"]
        assert event["input"] == "connector" and event["masked"] is True
        # ids and types stay, what people wrote or are (addresses, content) does not
        assert event["data"]["id"] == sent["data"]["id"]
        assert MASKED in json.dumps(event["data"])
        assert sent["data"]["createdBy"] not in json.dumps(event["data"])
        # what the schema fixes shows (a Mail's bodyFormat is PlainText or Markdown), what a person wrote not
        content = event["data"]["content"]
        assert content["bodyFormat"] == sent["data"]["content"]["bodyFormat"] == "PlainText"
        assert content["subject"] == content["body"] == MASKED
        event_id = event["event_id"]
        tap.wait(lambda r: r["type"] == "delivery" and r["output"] == "archive", "archive delivered")
        retry = tap.wait(lambda r: r.get("output") == "crm" and r["outcome"] == "retry", "crm's failed attempt")[0]
        assert retry["attempt"] == 1 and "503" in retry["error"] and retry["retry_in"] > 0
        done = tap.wait(lambda r: r.get("output") == "crm" and r["outcome"] == "delivered", "crm's retry")[0]
        assert done["attempt"] == 2 and done["event_id"] == event_id and done["route"] == "messages"
        # a body that is no event becomes a dead letter: the tap says so, and which
        status, answer, _ = post(f"http://127.0.0.1:{hook}/events", b"{not json", {"x-api-key": KEY})
        assert status == 400, answer
        [bad] = tap.wait(lambda r: r["outcome"] == "dead_lettered", "the undecodable body")
        assert bad["dead_letter"] == answer["dead_letter"] and bad["event_id"] is None and bad["errors"]
    finally:
        tap.stop()


def test_tap_filters_by_output_and_outcome(running: tuple[Path, int, int, Any]) -> None:
    config, hook, _, _ = running
    tap = Tapper(config, "--output", "crm", "--outcome", "retry")
    try:
        for trigger in ("transport.messageReceived", "transport.relationshipChanged"):
            assert post(f"http://127.0.0.1:{hook}/events", example(trigger), {"x-api-key": KEY})[0] == 202
        tap.wait(lambda r: r["outcome"] == "retry", "crm's failed attempt")
        time.sleep(1.0)  # the retry's success and archive's deliveries come meanwhile: none may show
        assert {(r["type"], r.get("output"), r["outcome"]) for r in tap.records} == {("delivery", "crm", "retry")}
    finally:
        tap.stop()


def test_a_trigger_no_schema_knows_is_warned_about_and_tapped(running: tuple[Path, int, int, Any]) -> None:
    """A pattern that matches no trigger the router's schemas know is a typo, usually, but events of a trigger
    without a schema exist: the command says so with a guess on stderr, and taps with it all the same."""
    config, hook, _, _ = running
    tap = Tapper(
        config, "--trigger", "transport.messageRecieved", "--trigger", "transprot.**", "--trigger", "transport.**"
    )
    try:
        assert tap.warnings == [
            "warning: --trigger transport.messageRecieved: no schema knows the trigger 'transport.messageRecieved'; "
            "did you mean 'transport.messageReceived'? (tapping it all the same: events of a trigger without a "
            "schema may come)",
            "warning: --trigger transprot.**: 'transprot.**' matches no trigger a schema knows (tapping it all the "
            "same: events of a trigger without a schema may come)",
        ]
        typo = example("transport.messageReceived")
        typo["trigger"] = "transport.messageRecieved"
        post(f"http://127.0.0.1:{hook}/events", typo, {"x-api-key": KEY})
        [event] = tap.wait(lambda r: r["type"] == "event", "the event of the trigger no schema knows")
        assert event["trigger"] == "transport.messageRecieved", event
    finally:
        tap.stop()


def test_unmasked_data_needs_the_routers_consent(tmp_path: Path) -> None:
    hook, admin = free_port(), free_port()
    with http_receiver() as crm:
        config = tmp_path / "router.toml"
        config.write_text(_config(tmp_path, hook, admin, crm.port))
        router = RouterProcess(config).start()
        try:
            done = subprocess.run(
                [sys.executable, "-m", "event_router", "tap", "-c", str(config), "--unmask"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert done.returncode == 1
            assert "refused the tap (403)" in done.stderr and "[router.admin] unmask = true" in done.stderr
            bad = subprocess.run(
                [sys.executable, "-m", "event_router", "tap", "-c", str(config), "--output", "nope"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert bad.returncode == 1 and "no output named 'nope' (outputs: archive, crm)" in bad.stderr
            typo = subprocess.run(
                [sys.executable, "-m", "event_router", "tap", "-c", str(config), "--output", "crmm"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert typo.returncode == 1, typo.stderr
            assert "no output named 'crmm' (outputs: archive, crm); did you mean 'crm'?" in typo.stderr, typo.stderr
            empty = subprocess.run(
                [sys.executable, "-m", "event_router", "tap", "-c", str(config), "--trigger", ""],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert empty.returncode == 1 and "an empty pattern matches no trigger" in empty.stderr, empty.stderr
        finally:
            router.terminate()
        config.write_text(_config(tmp_path, hook, admin, crm.port, unmask=True))
        router = RouterProcess(config).start()
        try:
            tap = Tapper(config, "--unmask")
            try:
                sent = example("transport.messageReceived")
                assert post(f"http://127.0.0.1:{hook}/events", sent, {"x-api-key": KEY})[0] == 202
                [event] = tap.wait(lambda r: r["type"] == "event", "the event")
                assert event["data"] == sent["data"] and "masked" not in event
            finally:
                tap.stop()
        finally:
            router.terminate()


def _tap_once(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "event_router", "tap", "-c", str(config)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_tap_taps_only_the_router_of_its_file(running: tuple[Path, int, int, Any]) -> None:
    """Another router.toml whose [router.admin] listen is the running router's: the tap refuses, naming
    both files; the running router's own file under another name (a symbolic link) is tapped."""
    config, _, admin, crm = running
    other = config.parent / "other" / "router.toml"
    other.parent.mkdir()
    other.write_text(_config(other.parent, free_port(), admin, crm.port))
    refused = _tap_once(other)
    assert refused.returncode == 1, refused.stderr
    assert f"the router on 127.0.0.1:{admin} runs {config.resolve()}, not {other.resolve()}" in refused.stderr
    assert "tapping" not in refused.stderr
    # a refusal of the query says the same first: it comes from the other router
    bad = subprocess.run(
        [sys.executable, "-m", "event_router", "tap", "-c", str(other), "--output", "nope"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert bad.returncode == 1 and f"runs {config.resolve()}, not {other.resolve()}" in bad.stderr, bad.stderr
    link = config.parent / "link.toml"
    link.symlink_to(config)
    Tapper(link).stop()  # "tapping ..." read in its constructor


def test_reload_reloads_only_the_router_of_its_file(running: tuple[Path, int, int, Any]) -> None:
    """`event-router reload -c OTHER` where OTHER's [router.admin] listen is the running router's: the router
    refuses before reloading (409, naming both files) and goes on as it was; its own file reloads it."""
    config, _, admin, crm = running
    other = config.parent / "other" / "router.toml"
    other.parent.mkdir()
    other.write_text(_config(other.parent, free_port(), admin, crm.port))
    refused = run_cli("reload", "-c", str(other))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"refused the reload: this router runs {config.resolve()}, not {other.resolve()}" in refused.stderr
    request = urllib.request.Request(f"http://127.0.0.1:{admin}/reload", method="POST", data=b"")
    request.add_header("Event-Router-Config", urllib.parse.quote(str(other.resolve()), safe="/"))
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(request, timeout=30)
    assert answer.value.code == 409
    assert answer.value.headers["Event-Router-Config"] == urllib.parse.quote(str(config.resolve()), safe="/")
    mine = run_cli("reload", "-c", str(config))
    assert mine.returncode == 0 and mine.stdout.strip() == "reloaded", mine.stdout + mine.stderr


def test_the_tap_refuses_an_endpoint_that_does_not_say_which_router_it_is(tmp_path: Path) -> None:
    """Whatever answers GET /tap without naming its router.toml (an older router, another program) is not
    tapped: its records would be taken for this file's router's."""

    class Anonymous(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            self.wfile.write(b": tap open\n\n")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Anonymous)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = tmp_path / "router.toml"
        config.write_text(_config(tmp_path, free_port(), server.server_address[1], free_port()))
        refused = _tap_once(config)
        assert refused.returncode == 1 and refused.stdout == ""
        assert "does not say which router.toml it runs (an event-router older than this command" in refused.stderr
    finally:
        server.shutdown()
        server.server_close()


def test_a_tap_that_does_not_read_never_holds_up_the_router(running: tuple[Path, int, int, Any]) -> None:
    _, hook, admin, _ = running
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", admin))
    stalled.sendall(b"GET /tap HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # the loopback: see console.security
    try:
        assert b"200 OK" in stalled.recv(256)  # subscribed; from now on nothing is read for a while
        body = example("transport.messageReceived")
        for _ in range(800):  # each makes 4 records: the event, archive twice, crm
            assert post(f"http://127.0.0.1:{hook}/events", body, {"x-api-key": KEY})[0] == 202
        # the same router still answers its admin endpoint while the tap's socket is full
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=5) as response:
            assert response.status == 200
        # and the tap, read at last, is told what it missed
        stalled.settimeout(5)
        seen = b""
        while b'"type":"dropped"' not in seen:
            chunk = stalled.recv(65536)
            assert chunk, "the tap closed before saying what it dropped"
            seen = seen[-200:] + chunk
        dropped = seen[seen.index(b'{"type":"dropped"') :].split(b"\n", 1)[0]
        assert json.loads(dropped)["count"] > 0
    finally:
        stalled.close()


def test_a_full_queue_drops_and_says_how_many() -> None:
    tap = Tap(queue=10)
    subscription = tap.subscribe(TapFilter())
    event = Event(trigger="transport.messageReceived", data={"id": "MSG1", "content": "hello"}, source="hooks")
    for _ in range(25):
        tap.event("hooks", event, "accepted", ["r"], ["o"])
    assert subscription.dropped == 15

    async def take() -> list[dict[str, Any]]:
        return [await subscription.next() for _ in range(11)]

    records = asyncio.run(take())
    assert records[0] == {"type": "dropped", "count": 15, "why": "this tap read slower than records came"}
    assert [r["type"] for r in records[1:]] == ["event"] * 10
    subscription.close()
    assert not tap.active


def test_no_subscriber_no_work_and_the_subscriber_limit() -> None:
    tap = Tap(max_subscribers=2)
    assert not tap.active
    first = tap.subscribe(TapFilter(triggers=("consumption.**",)))
    tap.subscribe(TapFilter())
    with pytest.raises(Exception, match="2 taps are open already"):
        tap.subscribe(TapFilter())
    tap.event("hooks", Event(trigger="transport.messageReceived", data={}, source="hooks"), "accepted", [], [])
    assert first._queue.qsize() == 0  # filtered out by the routes' own trigger glob


def test_mask_keeps_bookkeeping_and_hides_the_rest() -> None:
    data = {
        "id": "MSGabc",
        "@type": "Message",
        "createdBy": "did:e:example:dids:abc",
        "createdAt": "2026-12-07T08:00:00.000Z",
        "isOwn": False,
        "content": {"body": "personal", "age": 42, "items": ["a", {"relationshipId": "REL1"}]},
        "recipients": [{"address": "did:e:x", "relationshipId": "REL2"}],
        "status": "Open",
        "nothing": None,
    }
    assert mask(data) == {
        "id": "MSGabc",
        "@type": "Message",
        "createdBy": MASKED,
        "createdAt": "2026-12-07T08:00:00.000Z",
        "isOwn": False,
        "content": {"body": MASKED, "age": MASKED, "items": [MASKED, {"relationshipId": "REL1"}]},
        "recipients": [{"address": MASKED, "relationshipId": "REL2"}],
        "status": "Open",
        "nothing": None,
    }


def test_the_human_line_says_what_happened() -> None:
    from event_router.ops.tap import line

    event = {
        "type": "event",
        "time": 0.5,
        "input": "connector",
        "event_id": "E1",
        "trigger": "transport.messageReceived",
        "outcome": "accepted",
        "routes": ["messages"],
        "outputs": ["archive", "crm"],
        "data": {"id": "MSG1"},
    }
    assert line(event).endswith(
        "event    accepted      transport.messageReceived E1 from connector -> archive, crm (routes: messages)"
    )
    assert line(event, data=True).endswith(' data={"id":"MSG1"}')
    retry = {
        "type": "delivery",
        "time": 0.5,
        "output": "crm",
        "route": "messages",
        "event_id": "E1",
        "trigger": "transport.messageReceived",
        "delivery": 7,
        "outcome": "retry",
        "attempt": 1,
        "error": "HTTP 503",
        "retry_in": 1.5,
    }
    assert line(retry).endswith(
        "delivery retry         crm E1 (delivery 7, attempt 1, route messages) retry in 1.5s: HTTP 503"
    )
    assert line({"type": "dropped", "count": 3, "why": "slow"}).endswith("-- 3 records dropped: slow")


@pytest.fixture(scope="module")
def schemas() -> SchemaRegistry:
    return SchemaRegistry.load([builtin_schema_dir()])


def test_the_schema_says_which_values_show_in_masked_data(schemas: SchemaRegistry) -> None:
    """The Connector's example events, masked as the tap and the console mask them: a value the event's
    schema fixes (`enum`/`const`, reached through `$ref`, `allOf`, `if`/`then`, `items`) shows, what people
    wrote or are does not."""
    mail = example("transport.messageReceived")
    masked = mask(mail["data"], schemas.fixed_values(mail["trigger"]))
    assert masked["content"]["bodyFormat"] == "PlainText"  # Mail.bodyFormat: enum PlainText, Markdown
    assert masked["content"]["subject"] == masked["content"]["body"] == MASKED
    assert masked["content"]["to"] == [MASKED] and masked["createdBy"] == MASKED

    relationship = example("transport.relationshipChanged")
    data = relationship["data"]
    data["peerDeletionInfo"] = {"deletionStatus": "ToBeDeleted", "deletionDate": "2026-09-01T00:00:00.000Z"}
    masked = mask(data, schemas.fixed_values(relationship["trigger"]))
    assert masked["peerDeletionInfo"] == {"deletionStatus": "ToBeDeleted", "deletionDate": MASKED}  # an enum
    # the attribute a peer shared: its confidentiality would show (enum), its value (a given name) does not
    item = masked["creationContent"]["response"]["items"][0]
    assert item["attribute"]["value"] == {"@type": "GivenName", "value": MASKED}
    assert masked["peerIdentity"] == {"address": MASKED, "publicKey": MASKED}
    # the audit log's reason is an open string in the schema (new reasons came with minor releases): masked
    assert masked["auditLog"][0]["reason"] == MASKED and masked["auditLog"][0]["newStatus"] == "Pending"

    request = example("consumption.outgoingRequestStatusChanged")
    masked = mask(request["data"], schemas.fixed_values(request["trigger"]))
    address = masked["request"]["response"]["content"]["items"][0]["attribute"]["value"]
    assert address["@type"] == "StreetAddress" and set(address.values()) == {"StreetAddress", MASKED}
    assert masked["request"]["content"]["items"][0]["query"]["valueType"] == MASKED  # a pattern, not an enum


def test_a_value_shows_only_if_the_schema_lists_it_there(schemas: SchemaRegistry) -> None:
    """An event that does not validate (validation = "warn" or "off") shows no more than a valid one; a
    field the schema does not know, and an event without a schema, show nothing."""
    mail = example("transport.messageReceived")
    fixed = schemas.fixed_values(mail["trigger"])
    content = {**mail["data"]["content"], "bodyFormat": "Dear Jana", "extra": "Markdown"}
    masked = mask({**mail["data"], "content": content}, fixed)
    assert masked["content"]["bodyFormat"] == MASKED and masked["content"]["extra"] == MASKED
    assert schemas.fixed_values("transport.somethingNew") is None
    assert mask({"content": {"bodyFormat": "PlainText"}}, None) == {"content": {"bodyFormat": MASKED}}
    assert schemas.fixed_values("runtime.modulesStarted") is None  # fixes nothing: the plain rules only
    # the three-segment trigger takes its glob's schema
    relationship = schemas.fixed_values("consumption.relationshipEvent.REL1YBBHLUEC51CGTOYD")
    assert relationship is not None and "Active" in relationship.keys["status"].values


def test_fixed_values_follow_the_schema_keywords() -> None:
    """What fixes a place: `enum`/`const` through `$ref` (with siblings), `allOf`, `anyOf`/`oneOf` when every
    alternative fixes it (per kind: strings and numbers), a conditional's branches, `items`, and schemas
    that refer to themselves. What does not: an `if` (it only tests), an alternative that takes any string."""
    base = "https://example.invalid/schemas/"
    defs: dict[str, Any] = {
        "$id": base + "defs.json",
        "$defs": {
            "Level": {"enum": ["low", "high", 3]},
            "Free": {"type": "string", "minLength": 1},
            "Node": {
                "type": "object",
                "properties": {"kind": {"const": "node"}, "children": {"items": {"$ref": "#/$defs/Node"}}},
            },
        },
    }
    event: dict[str, Any] = {
        "$id": base + "event.json",
        "type": "object",
        "properties": {
            # a $ref beside its own keywords: both hold, so the enum fixes what Free leaves open
            "level": {"$ref": "defs.json#/$defs/Free", "enum": ["low", "high"]},
            "either": {"anyOf": [{"$ref": "defs.json#/$defs/Level"}, {"const": "none"}]},
            "mixed": {"oneOf": [{"enum": ["named"]}, {"type": "integer", "minimum": 0}]},
            "open": {"anyOf": [{"enum": ["a"]}, {"$ref": "defs.json#/$defs/Free"}]},
            "tested": {"type": "string"},
            "tree": {"$ref": "defs.json#/$defs/Node"},
            "list": {"type": "array", "items": {"allOf": [{"properties": {"unit": {"enum": ["kg", "g"]}}}]}},
        },
        "if": {"properties": {"tested": {"const": "yes"}}},
        "then": {"properties": {"flavour": {"enum": ["sweet"]}}},
        "else": {"properties": {"flavour": {"enum": ["sour"]}}},
    }
    fixed = fixed_values({base + "defs.json": defs, base + "event.json": event}, {"x.event": base + "event.json"})[
        "x.event"
    ]
    assert fixed is not None
    data = {
        "level": "high",
        "either": 3,
        "mixed": "named",
        "open": "a",
        "tested": "yes",
        "flavour": "sour",
        "tree": {"kind": "node", "children": [{"kind": "node", "children": [{"kind": "node", "name": "x"}]}]},
        "list": [{"unit": "kg", "amount": 2}],
    }
    assert mask(data, fixed) == {
        "level": "high",
        "either": 3,
        "mixed": "named",
        "open": MASKED,  # the other alternative takes any string: "a" may be one of those
        "tested": MASKED,  # only an `if` lists "yes"
        "flavour": "sour",
        "tree": {"kind": "node", "children": [{"kind": "node", "children": [{"kind": "node", "name": MASKED}]}]},
        "list": [{"unit": "kg", "amount": MASKED}],
    }
    assert mask({**data, "mixed": 7}, fixed)["mixed"] == MASKED  # the numbers it takes are not listed


def test_the_console_masks_a_stored_event_as_the_tap_does(schemas: SchemaRegistry) -> None:
    sent = example("transport.messageReceived")
    body = Event(trigger=sent["trigger"], data=sent["data"], source="connector").to_json()
    shown = shown_event(body, schemas, unmask=False)
    assert shown["data"] == mask(sent["data"], schemas.fixed_values(sent["trigger"]))
    assert shown["data"]["content"]["bodyFormat"] == "PlainText" and shown["data"]["content"]["subject"] == MASKED
    assert shown_event(body, schemas, unmask=True)["data"] == sent["data"]
