"""The webhook input over a real socket: every answer the Connector (or a person with curl) can get."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from event_router.testing import DeadLetterFilter, MakeApp, dead_letters, example, free_port, post, read_jsonl, wait_for

pytestmark = pytest.mark.anyio


KEY = "test-key-123"


def config(port: int, tmp: Path, extra: str = "", path: str = "/events") -> str:
    return f"""
[router]
data_dir = "{tmp}/var"
unmatched = "dead-letter"
[inputs.connector]
type = "webhook"
listen = "127.0.0.1:{port}"
path = "{path}"
api_key = "{KEY}"
max_body_bytes = 65536
{extra}
[outputs.archive]
type = "file"
path = "{tmp}/out/events.jsonl"
[[routes]]
name = "all"
match = {{ trigger = ["transport.**", "consumption.**", "runtime.**"] }}
to = ["archive"]
"""


async def call(
    url: str, body: bytes | dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    return await anyio.to_thread.run_sync(lambda: post(url, body, headers))


async def test_accepts_connector_webhook_and_writes_file(make_app: MakeApp, tmp_path: Path) -> None:
    port = free_port()
    async with make_app(config(port, tmp_path)):
        mail = example("transport.messageReceived")
        status, body, _ = await call(
            f"http://127.0.0.1:{port}/events", mail, {"x-api-key": KEY, "x-correlation-id": "c-1"}
        )
        assert status == 202, body
        assert body["status"] == "accepted"
        lines = await anyio.to_thread.run_sync(lambda: wait_for(lambda: read_jsonl(tmp_path / "out/events.jsonl")))
    (line,) = lines
    assert (tmp_path / "out/events.jsonl").stat().st_mode & 0o777 == 0o600, "event data is private by default"
    assert line["id"] == body["id"]
    assert line["trigger"] == "transport.messageReceived"
    assert line["source"] == "connector"
    assert line["data"] == mail["data"]
    assert line["meta"]["headers"]["x-correlation-id"] == "c-1"
    assert "x-api-key" not in line["meta"]["headers"], "credentials must never be stored"
    assert line["received_at"].endswith("Z")


async def test_api_key_header_name_is_case_insensitive(make_app: MakeApp, tmp_path: Path) -> None:
    port = free_port()
    text = config(port, tmp_path).replace('api_key = "', 'api_key_header = "X-Router-Key"\napi_key = "')
    async with make_app(text):
        url = f"http://127.0.0.1:{port}/events"
        mail = example("transport.messageReceived")
        status, body, _ = await call(url, mail, {"x-ROUTER-key": KEY})
        assert status == 202, body
        status, body, _ = await call(url, mail, {"x-api-key": KEY})
        assert (status, body["error"]) == (401, "missing API key header X-Router-Key")


async def test_wrong_path_wrong_method_and_expect_continue(make_app: MakeApp, tmp_path: Path) -> None:
    """404 and 405 (with Allow) answered in JSON like every other refusal, 100 Continue."""
    import socket
    import urllib.error
    import urllib.request

    port = free_port()
    async with make_app(config(port, tmp_path)):
        status, body, headers = await call(f"http://127.0.0.1:{port}/other", {"trigger": "x"}, {"x-api-key": KEY})
        assert (status, body) == (404, {"error": "no webhook at /other"})
        assert headers["Content-Type"].startswith("application/json")

        def request(method: str, path: str) -> tuple[int, str, str, bytes]:
            try:
                urllib.request.urlopen(
                    urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method), timeout=10
                )
            except urllib.error.HTTPError as exc:
                return exc.code, exc.headers.get("Allow", ""), exc.headers.get("Content-Type", ""), exc.read()
            return 200, "", "", b""

        for method in ("GET", "PUT", "DELETE"):
            code, allow, content_type, raw = await anyio.to_thread.run_sync(request, method, "/events")
            assert (code, allow) == (405, "POST"), method
            assert content_type.startswith("application/json")
            assert orjson.loads(raw) == {"error": "only POST is accepted here"}
        code, _, content_type, raw = await anyio.to_thread.run_sync(request, "GET", "/")
        assert code == 404 and content_type.startswith("application/json")
        assert orjson.loads(raw) == {"error": "no webhook at /"}

        def expect_continue() -> bytes:
            body = orjson.dumps(example("transport.messageReceived"))
            head = (
                f"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nx-api-key: {KEY}\r\n"
                f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
            )
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(head.encode())
                interim = sock.recv(100)  # a client that asked waits for this before sending the body
                sock.sendall(body)
                return interim + sock.recv(4096)

        answer = await anyio.to_thread.run_sync(expect_continue)
        assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), answer
        assert b"HTTP/1.1 202" in answer, answer


async def test_event_without_data_key(make_app: MakeApp, tmp_path: Path) -> None:
    port = free_port()
    async with make_app(config(port, tmp_path)):
        status, body, _ = await call(
            f"http://127.0.0.1:{port}/events", {"trigger": "runtime.modulesStarted"}, {"x-api-key": KEY}
        )
        assert status == 202, body
        lines = await anyio.to_thread.run_sync(lambda: wait_for(lambda: read_jsonl(tmp_path / "out/events.jsonl")))
    assert lines[0]["data"] is None


@pytest.mark.parametrize(
    ("headers", "payload", "status", "message"),
    [
        ({}, {"trigger": "transport.messageReceived"}, 401, "missing API key header x-api-key"),
        ({"x-api-key": "wrong"}, {"trigger": "transport.messageReceived"}, 401, "wrong API key in header x-api-key"),
        ({"x-api-key": KEY}, b"{not json", 400, "body is not valid JSON"),
        ({"x-api-key": KEY}, b"", 400, 'empty body: expected JSON {"trigger"'),
        # whitespace holds no JSON either: the same answer, not "not valid JSON: input data is empty"
        ({"x-api-key": KEY}, b" " * 65000, 400, 'empty body: expected JSON {"trigger"'),
        ({"x-api-key": KEY}, b"\r\n\t \n", 400, 'empty body: expected JSON {"trigger"'),
        ({"x-api-key": KEY}, b"[1, 2]", 400, "body is a JSON list, expected an object"),
        ({"x-api-key": KEY}, {"data": {}}, 400, 'body has no "trigger"'),
        ({"x-api-key": KEY}, {"trigger": 5}, 400, 'body has no "trigger"'),
        ({"x-api-key": KEY}, b"x" * 70000, 413, "body larger than 65536 bytes"),
    ],
)
async def test_rejections(
    make_app: MakeApp,
    tmp_path: Path,
    headers: dict[str, str],
    payload: bytes | dict[str, Any],
    status: int,
    message: str,
) -> None:
    port = free_port()
    async with make_app(config(port, tmp_path)) as app:
        got, body, _ = await call(f"http://127.0.0.1:{port}/events", payload, headers)
        assert got == status, body
        assert message in body["error"]
        assert "Traceback" not in str(body)
        if status == 400:
            # the bytes were kept: nothing the sender believed it delivered is lost
            (dl,) = dead_letters(app.config.data_dir, DeadLetterFilter(ids=[body["dead_letter"]]))
            assert dl.reason == "undecodable" and message in (dl.error or "")


async def test_invalid_event_is_dead_lettered_with_errors(make_app: MakeApp, tmp_path: Path) -> None:
    port = free_port()
    broken = example("transport.messageReceived")
    del broken["data"]["createdBy"]
    async with make_app(config(port, tmp_path)) as app:
        status, body, _ = await call(f"http://127.0.0.1:{port}/events", broken, {"x-api-key": KEY})
        assert status == 422
        assert body["status"] == "dead_lettered"
        assert any("createdBy" in e for e in body["errors"])
        assert app.stats.get("validation_failures") == 1
    assert read_jsonl(tmp_path / "out/events.jsonl") == []


async def test_warn_mode_routes_invalid_events(make_app: MakeApp, tmp_path: Path) -> None:
    port = free_port()
    broken = example("transport.messageReceived")
    del broken["data"]["createdBy"]
    async with make_app(config(port, tmp_path, 'validation = "warn"')):
        status, body, _ = await call(f"http://127.0.0.1:{port}/events", broken, {"x-api-key": KEY})
        assert status == 202 and body["errors"]
        await anyio.to_thread.run_sync(lambda: wait_for(lambda: read_jsonl(tmp_path / "out/events.jsonl")))


async def test_unknown_trigger_policy(make_app: MakeApp, tmp_path: Path) -> None:
    port = free_port()
    event = {"trigger": "transport.somethingNew", "data": {"x": 1}}
    async with make_app(config(port, tmp_path)):
        status, body, _ = await call(f"http://127.0.0.1:{port}/events", event, {"x-api-key": KEY})
        assert (status, body["status"]) == (202, "accepted")
    port = free_port()
    async with make_app(config(port, tmp_path, 'unknown_triggers = "dead-letter"')):
        status, body, _ = await call(f"http://127.0.0.1:{port}/events", event, {"x-api-key": KEY})
        assert status == 422 and body["status"] == "dead_lettered"


async def test_unmatched_event_is_dead_lettered_when_configured(make_app: MakeApp, tmp_path: Path) -> None:
    port = free_port()
    async with make_app(config(port, tmp_path)):
        status, body, _ = await call(
            f"http://127.0.0.1:{port}/events", {"trigger": "custom.thing", "data": {}}, {"x-api-key": KEY}
        )
        assert status == 422 and body["status"] == "dead_lettered"


async def test_trigger_in_path(make_app: MakeApp, tmp_path: Path) -> None:
    port = free_port()
    async with make_app(config(port, tmp_path, path="/hooks/{{trigger}}")):
        url = f"http://127.0.0.1:{port}/hooks/transport.messageReceived"
        status, body, _ = await call(url, example("transport.messageReceived"), {"x-api-key": KEY})
        assert status == 202, body


async def test_full_spool_answers_503_and_keeps_what_it_has(make_app: MakeApp, tmp_path: Path) -> None:
    port, dead_port = free_port(), free_port()
    text = f"""
[router]
data_dir = "{tmp_path}/var"
max_pending_events = 3
[inputs.connector]
type = "webhook"
listen = "127.0.0.1:{port}"
[outputs.down]
type = "http"
url = "http://127.0.0.1:{dead_port}/never"
retry = {{ initial_backoff = "60s" }}
[[routes]]
name = "all"
to = "down"
"""
    async with make_app(text) as app:
        url = f"http://127.0.0.1:{port}/events"
        answers = [await call(url, example("transport.messageReceived")) for _ in range(5)]
        statuses = [a[0] for a in answers]
        assert statuses == [202, 202, 202, 503, 503]
        assert answers[3][2]["Retry-After"] == "1"
        assert "spool is full (3 of 3 events pending)" in answers[3][1]["error"]
        assert app.spool.depth == 3
        assert app.stats.get("spool_full_rejections") == 2


def test_processes_is_refused_with_what_to_do(tmp_path: Path) -> None:
    import tomllib

    from event_router.config import ConfigErrors, build_config
    from event_router.plugin_loader import load_plugins

    text = config(1, tmp_path, "processes = 1")
    with pytest.raises(ConfigErrors, match=r"inputs.connector.processes: front processes were removed") as caught:
        build_config(tomllib.loads(text), path=tmp_path / "router.toml", registry=load_plugins())
    assert "delete this line" in str(caught.value)


async def test_port_zero_listens_on_a_port_of_its_own(make_app, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A control (aiohttp did it too): port 0 gets a free port, known once the input listens, and served."""
    async with make_app(config(0, tmp_path)) as app:
        webhook = app.config.inputs["connector"].plugin
        assert webhook.bound_port, webhook.bound_port
        url = f"http://127.0.0.1:{webhook.bound_port}/events"
        status, body, _ = await call(url, example("transport.messageReceived"), {"x-api-key": KEY})
        assert status == 202, body
