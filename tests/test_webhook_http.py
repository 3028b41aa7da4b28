"""The webhook's HTTP server (granian, embedded in the router) over raw sockets: pipelining, half-closes,
chunked bodies, HTTP/1.0, requests that cannot be read, failures, stopping under load, arbitrary bytes.

These came with the front processes (tests/test_webhook_fronts.py, removed with them) and hold for any
server the webhook runs on; adapted where granian's documented behaviour differs (docs/operating.md).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from event_router.testing import (
    MakeApp,
    RouterProcess,
    archive_all,
    example,
    free_port,
    post,
    read_jsonl,
    router_table,
    wait_for,
    webhook_input,
)

KEY = "http-key"


def config(port: int, tmp: Path, extra: str = "") -> str:
    webhook = webhook_input(port, api_key=f'"{KEY}"', extra=f"max_body_bytes = 65536\n{extra}")
    return router_table(data_dir=f"{tmp}/var") + webhook + archive_all(f"{tmp}/out.jsonl")


def exchange(port: int, data: bytes, *, answers: int, timeout: float = 10) -> list[tuple[int, bytes, bytes]]:
    """Send raw bytes on one connection; read `answers` HTTP responses (status, head, body) or until EOF,
    then (0, b"EOF" or b"OPEN", rest)."""
    got: list[tuple[int, bytes, bytes]] = []
    buffer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        while len(got) < answers:
            while b"\r\n\r\n" not in buffer:
                chunk = sock.recv(65536)
                if not chunk:
                    return got
                buffer += chunk
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            length = int(
                next(ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length"))
            )
            while len(buffer) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    raise AssertionError(f"connection closed inside a body: {head!r}")
                buffer += chunk
            body, buffer = buffer[:length], buffer[length:]
            got.append((int(head.split(b" ")[1]), head, body))
        sock.settimeout(2)
        try:
            rest = sock.recv(100)  # b"" once the server closed its side
        except (TimeoutError, ConnectionResetError):
            rest = None
    got.append((0, b"EOF" if rest == b"" else b"OPEN", rest or b""))
    return got


def request(body: bytes, *, key: str = KEY, extra: str = "", version: str = "1.1") -> bytes:
    head = f"POST /events HTTP/{version}\r\nHost: x\r\nx-api-key: {key}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


@pytest.mark.anyio
async def test_pipelined_requests_are_answered_in_order(make_app: MakeApp, tmp_path: Path) -> None:
    """The middle request is refused at once (wrong key), the others wait for their commit: still in order;
    the last one asks to close, which happens once all three are answered."""
    port = free_port()
    mail = orjson.dumps(example("transport.messageReceived"))
    data = request(mail) + request(mail, key="wrong") + request(mail, extra="Connection: close\r\n")
    async with make_app(config(port, tmp_path)):
        got = await anyio.to_thread.run_sync(lambda: exchange(port, data, answers=3))
    statuses = [status for status, _, _ in got[:3]]
    assert statuses == [202, 401, 202], got
    assert got[3][1] == b"EOF"
    assert orjson.loads(got[0][2])["id"] != orjson.loads(got[2][2])["id"]


@pytest.mark.anyio
async def test_a_client_that_half_closes_after_its_request_gets_no_answer(make_app: MakeApp, tmp_path: Path) -> None:
    """hyper closes a connection whose client shut down its sending side (granian does not offer hyper's
    `half_close`): no answer, as docs/operating.md says. The event may be stored all the same."""
    port = free_port()
    mail = orjson.dumps(example("transport.messageReceived"))
    async with make_app(config(port, tmp_path)):

        def half_close() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(request(mail))
                sock.shutdown(socket.SHUT_WR)
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
                return answer

        answer = await anyio.to_thread.run_sync(half_close)
    assert answer == b"", answer


@pytest.mark.anyio
async def test_chunked_bodies_and_http_1_0(make_app: MakeApp, tmp_path: Path) -> None:
    port = free_port()
    mail = orjson.dumps(example("transport.messageReceived"))
    half = len(mail) // 2
    chunked = (
        b"POST /events HTTP/1.1\r\nHost: x\r\nx-api-key: "
        + KEY.encode()
        + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{half:x}\r\n".encode()
        + mail[:half]
        + b"\r\n"
        + f"{len(mail) - half:x}\r\n".encode()
        + mail[half:]
        + b"\r\n0\r\n\r\n"
    )
    async with make_app(config(port, tmp_path)):
        (status, _, body), (_, open_, _) = await anyio.to_thread.run_sync(lambda: exchange(port, chunked, answers=1))
        assert (status, open_) == (202, b"OPEN"), body
        # HTTP/1.0 without keep-alive: answered, then closed, as the client expects
        (status10, _, _), (_, end, _) = await anyio.to_thread.run_sync(
            lambda: exchange(port, request(mail, version="1.0"), answers=1)
        )
        assert (status10, end) == (202, b"EOF")
        lines = await anyio.to_thread.run_sync(
            lambda: wait_for(lambda: (rows := read_jsonl(tmp_path / "out.jsonl")) and len(rows) >= 2 and rows)
        )
    assert [line["trigger"] for line in lines] == ["transport.messageReceived"] * 2
    assert lines[0]["data"] == example("transport.messageReceived")["data"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        (request(b"x" * 70_000), 413, b"body larger than 65536 bytes"),
        (
            b"POST /events HTTP/1.1\r\nHost: x\r\nx-api-key: "
            + KEY.encode()
            + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"8000\r\n" + b"x" * 0x8000 + b"\r\n" for _ in range(3)),
            413,
            b"body larger than 65536 bytes",
        ),
        # hyper's own answers (no body of ours): a head over its buffer, and bytes that are not HTTP
        (
            b"POST /events HTTP/1.1\r\n" + b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 1000) for i in range(600)) + b"\r\n",
            431,
            b"",
        ),
        (b"HELLO THERE\r\n\r\n", 400, b""),
    ],
    ids=["content-length-too-large", "chunked-too-large", "headers-too-large", "garbage"],
)
async def test_requests_that_cannot_be_read_get_an_answer_and_a_close(
    make_app: MakeApp, tmp_path: Path, data: bytes, status: int, message: bytes
) -> None:
    port = free_port()
    async with make_app(config(port, tmp_path)):
        got = await anyio.to_thread.run_sync(lambda: exchange(port, data, answers=1))
        assert got[0][0] == status, got
        assert message in got[0][2]
        assert got[1][1] == b"EOF"
        # and the server serves the next client as before
        mail = orjson.dumps(example("transport.messageReceived"))
        (after, _, _), _ = await anyio.to_thread.run_sync(lambda: exchange(port, request(mail), answers=1))
        assert after == 202


@pytest.mark.anyio
async def test_an_idle_kept_alive_connection_is_closed_after_header_timeout(make_app: MakeApp, tmp_path: Path) -> None:
    """granian's header deadline is also its keep-alive idle timeout (docs/operating.md)."""
    port = free_port()
    mail = orjson.dumps(example("transport.messageReceived"))
    async with make_app(config(port, tmp_path, "header_timeout = 1")):

        def idle() -> tuple[int, float]:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(request(mail))
                answer = sock.recv(65536)
                started = time.monotonic()
                while sock.recv(65536):
                    pass
                return int(answer.split(b" ")[1]), time.monotonic() - started

        status, waited = await anyio.to_thread.run_sync(idle)
    assert status == 202
    assert waited < 5, f"an idle connection stayed open {waited:.1f} s"


@pytest.mark.anyio
async def test_a_request_the_router_fails_on_costs_only_itself(
    make_app: MakeApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug on one request answers 500 to it alone; the server and the next requests are unaffected."""
    from event_router.api import Event, Rejected
    from event_router.inputs.webhook import Answer, Received, WebhookInput

    original = WebhookInput.prepare

    def prepare(self: WebhookInput, received: Received, raw: bytes) -> Answer | Event | Rejected:
        if b"boom" in raw:
            raise RuntimeError("boom")
        return original(self, received, raw)

    monkeypatch.setattr(WebhookInput, "prepare", prepare)
    port = free_port()
    url = f"http://127.0.0.1:{port}/events"
    async with make_app(config(port, tmp_path)):
        status, body, _ = await anyio.to_thread.run_sync(lambda: post(url, {"trigger": "boom"}, {"x-api-key": KEY}))
        assert status == 500 and "not stored" in body["error"]
        status, _, _ = await anyio.to_thread.run_sync(
            lambda: post(url, example("transport.messageReceived"), {"x-api-key": KEY})
        )
        assert status == 202


@pytest.mark.anyio
async def test_stopping_answers_only_what_is_stored(make_app: MakeApp, tmp_path: Path) -> None:
    """Stop while 32 senders keep posting: every 2xx a sender got is an event on disk (delivered or pending)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/events"
    mail = example("transport.messageReceived")
    accepted: list[str] = []
    refused = 0
    stop_sending = False

    def sender() -> None:
        nonlocal refused
        while not stop_sending:
            try:
                status, body, _ = post(url, mail, {"x-api-key": KEY}, timeout=10)
            except OSError:
                refused += 1
                time.sleep(0.01)
                continue
            if status == 202:
                accepted.append(body["id"])
            else:
                refused += 1

    pool = concurrent.futures.ThreadPoolExecutor(32)
    try:
        async with make_app(config(port, tmp_path)):
            futures = [pool.submit(sender) for _ in range(32)]
            await anyio.to_thread.run_sync(lambda: wait_for(lambda: len(accepted) >= 300, timeout=30))
        # the app has stopped: the server answered what it had begun, the spool is closed
        stop_sending = True
        await anyio.to_thread.run_sync(lambda: [f.result() for f in futures])
    finally:
        stop_sending = True
        pool.shutdown(wait=True)
    from event_router.core.spool.sqlite import SQLiteSpool

    spool = SQLiteSpool(tmp_path / "var/spool.db")
    spool.open("readonly")
    try:
        # what was stored and not yet written to the file: its deliveries, due at any time
        pending = {row.event_id for row in spool.fetch_due("archive", float("inf"), 1_000_000, ())}
    finally:
        spool.close()
    delivered = {line["id"] for line in read_jsonl(tmp_path / "out.jsonl")}
    assert len(accepted) >= 300
    assert set(accepted) <= delivered | pending, "a sender got 202 for an event that is not on disk"
    assert refused, "senders kept posting while the router stopped: some must have been refused"


# --- arbitrary bytes against a real router ------------------------------------------------------------


_LINES = [
    b"POST /events HTTP/1.1",
    b"POST /events/transport.messageReceived HTTP/1.1",
    b"POST /events HTTP/1.0",
    b"GET /events HTTP/1.1",
    b"POST /other HTTP/1.1",
    b"POST http://x/events?a=1 HTTP/1.1",
    b"POST /ev%65nts HTTP/1.1",
]
_HEADERS = [
    b"Host: x",
    b"x-api-key: " + KEY.encode(),
    b"X-API-KEY: wrong",
    b"Expect: 100-continue",
    b"Connection: close",
    b"Connection: keep-alive",
    b"Connection: upgrade\r\nUpgrade: h2c",
    b"Content-Type: application/json",
    b"Content-Length: 99999999",
    b"Content-Length: -1",
    b"x-long: " + b"v" * 5000,
    b"x-huge: " + b"v" * 40000,
]
_BODIES = [
    orjson.dumps(example("transport.messageReceived")),
    orjson.dumps(example("transport.messageReceived")),
    b'{"trigger":"transport.messageReceived","data":{}}',
    b'{"trigger":"custom.thing","data":[1,2]}',
    b"{}",
    b"[1]",
    b"",
    b"{not json",
]


@st.composite
def http_streams(draw: st.DrawFn) -> bytes:
    """One to three requests, mostly well-formed, their framing sometimes wrong, sometimes junk between."""
    stream = b""
    for _ in range(draw(st.integers(1, 3))):
        headers = draw(st.lists(st.sampled_from(_HEADERS), max_size=4, unique=True))
        if draw(st.integers(0, 4)):  # mostly with the right key, so that most requests reach the router
            headers.insert(0, b"x-api-key: " + KEY.encode())
        body = draw(st.sampled_from(_BODIES) | st.binary(max_size=40))
        framing = draw(st.sampled_from(["length", "length", "chunked", "short-length", "none"]))
        if framing == "length":
            headers.append(b"Content-Length: %d" % len(body))
        elif framing == "short-length":
            headers.append(b"Content-Length: %d" % max(0, len(body) - 3))
        elif framing == "chunked":
            headers.append(b"Transfer-Encoding: chunked")
            body = (b"%x\r\n" % len(body) + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
        stream += draw(st.sampled_from(_LINES)) + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body
        if draw(st.integers(0, 5)) == 0:
            stream += draw(st.binary(max_size=20))
    return stream


_STATUSES = {b"202", b"400", b"401", b"404", b"405", b"413", b"414", b"422", b"431", b"501"}


@pytest.fixture
def http_router(tmp_path: Path) -> Iterator[tuple[int, RouterProcess]]:
    """One router for all of the property's examples (hypothesis runs them in one test call)."""
    port = free_port()
    path = tmp_path / "router.toml"
    path.write_text(config(port, tmp_path))
    with RouterProcess(path) as router:
        assert router.proc is not None
        yield port, router


@given(stream=http_streams(), cuts=st.lists(st.integers(0, 600), max_size=4))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_arbitrary_bytes_get_whole_answers_or_a_close_and_never_break_the_server(
    http_router: tuple[int, RouterProcess], stream: bytes, cuts: list[int]
) -> None:
    """Whatever a client sends (cut anywhere, then half-closed): only whole HTTP answers with statuses
    the webhook uses come back (bodies in JSON, or empty from hyper's own 400 and 431), the connection
    ends, and the router still runs."""
    port, router = http_router
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            for start, end in itertools.pairwise(points):
                sock.sendall(stream[start:end])
            sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(65536):
                received += chunk
        except OSError:  # reset, broken pipe, not connected: the server closed while bytes were unread,
            pass  # which is allowed: the answers before it still count
    rest = received
    while rest:
        assert rest.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), received  # hyper answers 1.0 in 1.0
        head, sep, rest = rest.partition(b"\r\n\r\n")
        assert sep, f"a cut-off answer head: {received!r}"
        status = head[9:12]
        if status == b"100":
            continue
        assert status in _STATUSES, received
        length = int(next(ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")))
        assert len(rest) >= length, f"a cut-off answer body: {received!r}"
        if length:
            orjson.loads(rest[:length])  # every answer of the router's is JSON
        rest = rest[length:]
    assert router.proc is not None and router.proc.poll() is None, "the router died"
