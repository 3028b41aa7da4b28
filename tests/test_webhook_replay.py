"""Standard Webhooks replay protection in a real router process: a `webhook-id` is stored once, across a
restart and among copies sent at the same moment."""

from __future__ import annotations

import base64
import sqlite3
import threading
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

from event_router.testing import RouterProcess, example, free_port, post, read_jsonl, wait_for
from event_router.web.signing import WebhookSigner

pytestmark = pytest.mark.slow

SECRET = "whsec_" + base64.b64encode(b"r" * 32).decode()


def write_config(tmp: Path, port: int) -> Path:
    path = tmp / "router.toml"
    path.write_text(f"""
[router]
data_dir = "./var"
shutdown_timeout = "5s"
[inputs.connector]
type = "webhook"
listen = "127.0.0.1:{port}"
signing_secrets = ["{SECRET}"]
signature_tolerance = 300
[outputs.archive]
type = "file"
path = "./out.jsonl"
[[routes]]
name = "all"
to = ["archive"]
""")
    return path


def signed(msg_id: str, subject: str) -> tuple[bytes, dict[str, str]]:
    event = example("transport.messageReceived")
    event["data"]["content"]["subject"] = subject
    body = orjson.dumps(event)
    return body, WebhookSigner(SECRET).headers(msg_id, body)


def stored_ids(tmp: Path) -> list[str]:
    """The webhook-id of every event stored: delivered to the file, or still pending in the spool."""
    out = tmp / "out.jsonl"
    ids = [line["meta"]["headers"]["webhook-id"] for line in read_jsonl(out)] if out.exists() else []
    conn = sqlite3.connect(tmp / "var" / "spool.db")
    try:
        rows = conn.execute("SELECT json_extract(body, '$.meta.headers.webhook-id') FROM events").fetchall()
    finally:
        conn.close()
    return sorted(ids + [row[0] for row in rows])


def settle(router: RouterProcess, tmp: Path, port: int) -> None:
    """Send a last, new message and wait until it is delivered: whatever was stored before it is too, or
    still in the spool, once the router has stopped."""
    body, headers = signed("marker", "marker")
    status, answer, _ = post(f"http://127.0.0.1:{port}/events", body, headers)
    assert status == 202, answer
    wait_for(
        lambda: (
            (tmp / "out.jsonl").exists()
            and any(line["meta"]["headers"]["webhook-id"] == "marker" for line in read_jsonl(tmp / "out.jsonl"))
        ),
        what="the marker delivered",
    )
    assert router.terminate() == 0


def test_a_replay_after_a_restart_is_not_stored_again(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port)
    url = f"http://127.0.0.1:{port}/events"
    body, headers = signed("msg-restart", "once")
    with RouterProcess(config) as router:
        status, answer, _ = post(url, body, headers)
        assert status == 202, answer
        assert router.terminate() == 0
    # the same request, byte for byte, to a new router process on the same spool, well within the tolerance
    with RouterProcess(config) as router:
        status, answer, _ = post(url, body, headers)
        assert (status, answer) == (200, {"status": "duplicate", "webhook_id": "msg-restart"})
        settle(router, tmp_path, port)
    assert stored_ids(tmp_path) == ["marker", "msg-restart"]
    records = [r for r in router.log_records() if r.get("msg") == "repeated message not stored again"]
    assert [(r["input"], r["message_id"]) for r in records] == [("connector", "msg-restart")]


def test_simultaneous_copies_are_stored_once(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port)
    url = f"http://127.0.0.1:{port}/events"
    body, headers = signed("msg-copies", "copies")
    copies = 20
    start = threading.Barrier(copies)
    answers: list[tuple[int, dict[str, Any]]] = []
    lock = threading.Lock()

    def send() -> None:
        start.wait()
        status, answer, _ = post(url, body, headers)
        with lock:
            answers.append((status, answer))

    with RouterProcess(config) as router:
        threads = [threading.Thread(target=send) for _ in range(copies)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(answers) == copies
        accepted = [a for s, a in answers if s == 202]
        assert len(accepted) == 1, answers
        assert [a for s, a in answers if s != 202] == [{"status": "duplicate", "webhook_id": "msg-copies"}] * (
            copies - 1
        )
        settle(router, tmp_path, port)
    assert stored_ids(tmp_path) == ["marker", "msg-copies"]


def test_a_repeat_is_a_duplicate_while_the_spool_is_full_and_counts_no_unknown_trigger(tmp_path: Path) -> None:
    """A repeat adds nothing to the spool: at `max_pending_events` it is answered "duplicate", not 503, and
    an unknown trigger's repeat is not counted again in `unknown_triggers_total`."""
    port, admin, closed = free_port(), free_port(), free_port()
    path = tmp_path / "router.toml"
    path.write_text(f"""
[router]
data_dir = "./var"
max_pending_events = 1
[router.admin]
listen = "127.0.0.1:{admin}"
[inputs.connector]
type = "webhook"
listen = "127.0.0.1:{port}"
signing_secrets = ["{SECRET}"]
[outputs.held]
type = "http"
url = "http://127.0.0.1:{closed}/down"
retry = {{ initial_backoff = "1h", max_backoff = "1h", max_attempts = 100, max_age = "7d" }}
[[routes]]
name = "all"
to = ["held"]
""")
    event = example("transport.messageReceived")
    event["trigger"] = "transport.messageRecieved"  # no schema knows it
    body = orjson.dumps(event)
    headers = WebhookSigner(SECRET).headers("msg-full", body)
    url = f"http://127.0.0.1:{port}/events"
    with RouterProcess(path) as router:
        status, answer, _ = post(url, body, headers)
        assert status == 202, answer
        status, answer, _ = post(url, body, headers)
        assert (status, answer) == (200, {"status": "duplicate", "webhook_id": "msg-full"})
        other = orjson.dumps({**event, "id": "another"})
        status, _, _ = post(url, other, WebhookSigner(SECRET).headers("msg-new", other))
        assert status == 503, "a new message is refused while the spool is full"
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        assert 'event_router_unknown_triggers_total{input="connector"} 1' in metrics.replace(".0\n", "\n")
        assert router.terminate() == 0
