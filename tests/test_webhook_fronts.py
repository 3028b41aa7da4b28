"""Webhook front processes (`processes = N`): real child processes, real sockets, SIGKILL.

Every webhook test in test_webhook.py and test_webhook_security.py also runs through a front process (the
`webhook_modes` fixture); these tests cover what only fronts have: processes, their supervision, stopping
with requests in flight, and the router dying under them.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import signal
import time
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from event_router.inputs.frames import MAX_PAYLOAD, FrameError, FrameReader, encode
from event_router.testing import MakeApp, RouterProcess, example, free_port, port_accepts, post, read_jsonl, wait_for

KEY = "front-key"
FRONT_MODULE = b"event_router.inputs.webhook_front"


def config(port: int, tmp: Path, processes: int = 1) -> str:
    return f"""
[router]
data_dir = "{tmp}/var"
[inputs.connector]
type = "webhook"
listen = "127.0.0.1:{port}"
api_key = "{KEY}"
processes = {processes}
max_body_bytes = 65536
[outputs.archive]
type = "file"
path = "{tmp}/out.jsonl"
[[routes]]
name = "all"
to = ["archive"]
"""


def fronts_of(parent: int) -> list[int]:
    """Pids of the webhook front processes whose parent is `parent`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == parent and FRONT_MODULE in cmdline and stat.rpartition(")")[2].split()[0] != "Z":
            found.append(int(entry.name))
    return sorted(found)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


# --- the frame codec ---------------------------------------------------------------------------------------


@given(
    frames=st.lists(
        st.tuples(st.sampled_from([b"Q", b"A", b"R"]), st.integers(0, 2**32 - 1), st.binary()), max_size=20
    ),
    cuts=st.lists(st.integers(0, 10_000), max_size=30),
)
def test_frames_come_back_whole_however_the_stream_is_cut(
    frames: list[tuple[bytes, int, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(encode(kind, rid, payload) for kind, rid, payload in frames)
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    reader = FrameReader()
    got = []
    for start, end in itertools.pairwise(points):
        got.extend(reader.feed(stream[start:end]))
    assert got == [(kind[0], rid, payload) for kind, rid, payload in frames]


def test_a_frame_larger_than_any_request_is_an_error() -> None:
    header = (MAX_PAYLOAD + 1).to_bytes(4, "big") + b"Q" + (1).to_bytes(4, "big")
    with pytest.raises(FrameError, match="larger than"):
        FrameReader().feed(header)


# --- the front's own HTTP/1.1 server (llhttp through httptools, not aiohttp) -----------------------------


def exchange(port: int, data: bytes, *, answers: int, timeout: float = 10) -> list[tuple[int, bytes, bytes]]:
    """Send raw bytes on one connection; read `answers` HTTP responses (status, head, body) or until EOF."""
    import socket

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
        except TimeoutError:
            rest = None
    got.append((0, b"EOF" if rest == b"" else b"OPEN", rest or b""))
    return got


def request(body: bytes, *, key: str = KEY, extra: str = "", version: str = "1.1") -> bytes:
    head = f"POST /events HTTP/{version}\r\nHost: x\r\nx-api-key: {key}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


@pytest.mark.anyio
async def test_pipelined_requests_are_answered_in_order(make_app: MakeApp, tmp_path: Path) -> None:
    """The middle request is refused at once (wrong key), the others wait for their commit: still in order;
    the last one asks to close, which happens once all three are answered, not when its own answer is ready."""
    port = free_port()
    mail = orjson.dumps(example("transport.messageReceived"))
    data = request(mail) + request(mail, key="wrong") + request(mail, extra="Connection: close\r\n")
    async with make_app(config(port, tmp_path)):
        got = await anyio.to_thread.run_sync(lambda: exchange(port, data, answers=3))
    statuses = [status for status, _, _ in got[:3]]
    assert statuses == [202, 401, 202], got
    assert got[3][1] == b"EOF"
    assert b"Connection: close" in got[2][1] and b"Connection: close" not in got[0][1]
    assert orjson.loads(got[0][2])["id"] != orjson.loads(got[2][2])["id"]


@pytest.mark.anyio
async def test_a_client_that_half_closes_after_its_request_gets_the_answer(make_app: MakeApp, tmp_path: Path) -> None:
    import socket

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
    assert answer.startswith(b"HTTP/1.1 202 Accepted\r\n"), answer


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
        (status10, head10, _), (_, end, _) = await anyio.to_thread.run_sync(
            lambda: exchange(port, request(mail, version="1.0"), answers=1)
        )
        assert (status10, end) == (202, b"EOF")
        assert b"Connection: close" in head10
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
            b"POST /events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"8000\r\n" + b"x" * 0x8000 + b"\r\n" for _ in range(3)),
            413,
            b"body larger than 65536 bytes",
        ),
        (
            b"POST /events HTTP/1.1\r\n" + b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 1000) for i in range(40)) + b"\r\n",
            431,
            b"headers larger than",
        ),
        (b"POST /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414, b"longer than 8190 bytes"),
        (b"HELLO THERE\r\n\r\n", 400, b"malformed HTTP request"),
        (b"GET /events HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n", 400, b"upgrades"),
    ],
    ids=["content-length-too-large", "chunked-too-large", "headers-too-large", "target-too-long", "garbage", "upgrade"],
)
async def test_requests_a_front_cannot_read_on_get_an_answer_and_a_close(
    make_app: MakeApp, tmp_path: Path, data: bytes, status: int, message: bytes
) -> None:
    port = free_port()
    async with make_app(config(port, tmp_path)):
        got = await anyio.to_thread.run_sync(lambda: exchange(port, data, answers=1))
        assert got[0][0] == status, got
        assert message in got[0][2] and b"Connection: close" in got[0][1]
        assert got[1][1] == b"EOF"
        # and the front serves the next client as before
        mail = orjson.dumps(example("transport.messageReceived"))
        (after, _, _), _ = await anyio.to_thread.run_sync(lambda: exchange(port, request(mail), answers=1))
        assert after == 202


@pytest.mark.anyio
async def test_idle_connections_are_closed() -> None:
    """The sweep closes a connection that sent nothing for IDLE_SECONDS, unless it waits for an answer."""
    import asyncio
    import socket

    from event_router.inputs import webhook_front as front

    channel = front._Channel()
    http = front._Server(channel, "/events", 1000)
    server = await asyncio.get_running_loop().create_server(lambda: front._Connection(http), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        idle = socket.create_connection(("127.0.0.1", port))
        waiting = socket.create_connection(("127.0.0.1", port))
        await wait_for_async(lambda: len(http.connections) == 2)
        by_port = {conn.transport.get_extra_info("peername")[1]: conn for conn in http.connections if conn.transport}
        by_port[waiting.getsockname()[1]].answers.append([None])  # a request whose answer is owed
        now = time.monotonic()
        http.sweep(now + front.IDLE_SECONDS - 1)
        assert len(http.connections) == 2
        http.sweep(now + front.IDLE_SECONDS + 1)
        await wait_for_async(lambda: len(http.connections) == 1)
        idle.settimeout(5)
        assert idle.recv(10) == b""  # closed by the server
        (left,) = http.connections
        assert left is by_port[waiting.getsockname()[1]]
        idle.close()
        waiting.close()
    finally:
        server.close()


@pytest.mark.anyio
async def test_a_client_that_takes_no_answers_is_closed_after_the_idle_time() -> None:
    """Reading pauses while the client takes none of its answers (`pause_writing`); the sweep ends it."""
    import asyncio
    import socket

    from event_router.inputs import webhook_front as front

    channel = front._Channel()
    http = front._Server(channel, "/events", 1000)
    server = await asyncio.get_running_loop().create_server(lambda: front._Connection(http), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = socket.create_connection(("127.0.0.1", port))
        await wait_for_async(lambda: len(http.connections) == 1)
        (conn,) = http.connections
        conn.pause_writing()  # what the transport calls once unsent answers pass WRITE_HIGH
        now = time.monotonic()
        http.sweep(now + front.IDLE_SECONDS - 1)
        assert http.connections == {conn}
        http.sweep(now + front.IDLE_SECONDS + 1)
        await wait_for_async(lambda: not http.connections)
        client.settimeout(5)
        assert client.recv(10) == b""
        client.close()
    finally:
        server.close()


def test_an_answer_that_fails_to_go_out_costs_only_its_request(caplog: pytest.LogCaptureFixture) -> None:
    from event_router.inputs import webhook_front as front

    channel = front._Channel()
    got: list[int] = []

    def broken(status: int, headers: dict[str, str], body: bytes) -> None:
        raise RuntimeError("boom")

    channel.waiting.update({1: broken, 2: lambda status, headers, body: got.append(status)})
    answer = front.ANSWER_HEAD.pack(202, 0) + b"{}"
    channel.data_received(encode(front.ANSWER, 1, answer) + encode(front.ANSWER, 2, answer))
    assert got == [202]  # the frame after the failing one was still read and answered
    assert "webhook front failed to answer a request" in caplog.text


async def wait_for_async(check, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    with anyio.fail_after(timeout):
        while not check():
            await anyio.sleep(0.01)


# --- in process (the router under test is this process) -------------------------------------------------


@pytest.mark.anyio
async def test_fronts_are_processes_of_their_own_and_store_what_they_take(make_app: MakeApp, tmp_path: Path) -> None:
    port = free_port()
    async with make_app(config(port, tmp_path, processes=2)) as app:
        pids = fronts_of(os.getpid())
        assert len(pids) == 2, pids
        url = f"http://127.0.0.1:{port}/events"
        mail = example("transport.messageReceived")

        def send_many() -> list[tuple[int, dict[str, Any], dict[str, str]]]:
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                return list(pool.map(lambda _: post(url, mail, {"x-api-key": KEY}), range(200)))

        answers = await anyio.to_thread.run_sync(send_many)
        assert {status for status, _, _ in answers} == {202}
        ids = {body["id"] for _, body, _ in answers}
        lines = await anyio.to_thread.run_sync(
            lambda: wait_for(lambda: (rows := read_jsonl(tmp_path / "out.jsonl")) and len(rows) >= 200 and rows)
        )
        assert {line["id"] for line in lines} == ids
        assert app.readiness()["inputs"] == {"connector": True}
    assert await anyio.to_thread.run_sync(lambda: wait_for(lambda: not any(alive(p) for p in pids)))


@pytest.mark.anyio
async def test_a_killed_front_is_logged_and_started_again(
    make_app: MakeApp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/events"
    async with make_app(config(port, tmp_path)) as app:
        (pid,) = fronts_of(os.getpid())
        os.kill(pid, signal.SIGKILL)
        await anyio.to_thread.run_sync(lambda: wait_for(lambda: not app.readiness()["ready"], timeout=5))
        # the listening socket stays open (the router holds it): a request waits in the backlog, then passes
        status, body, _ = await anyio.to_thread.run_sync(
            lambda: post(url, example("transport.messageReceived"), {"x-api-key": KEY}, timeout=20)
        )
        assert status == 202, body
        (new,) = fronts_of(os.getpid())
        assert new != pid
        assert app.readiness()["ready"]
    exited = [r for r in caplog.records if r.getMessage() == "webhook front process exited; starting it again"]
    assert exited and exited[0].__dict__["exit_code"] == -signal.SIGKILL


@pytest.mark.anyio
async def test_a_request_the_router_fails_on_costs_only_itself(
    make_app: MakeApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug on one request must not break the channel that the front's other requests share."""
    from event_router.inputs.webhook import WebhookInput

    original = WebhookInput.prepare

    def prepare(self: WebhookInput, received, raw: bytes):  # type: ignore[no-untyped-def]
        if b"boom" in raw:
            raise RuntimeError("boom")
        return original(self, received, raw)

    monkeypatch.setattr(WebhookInput, "prepare", prepare)
    port = free_port()
    url = f"http://127.0.0.1:{port}/events"
    async with make_app(config(port, tmp_path)):
        (pid,) = fronts_of(os.getpid())
        status, body, _ = await anyio.to_thread.run_sync(lambda: post(url, {"trigger": "boom"}, {"x-api-key": KEY}))
        assert status == 500 and "not stored" in body["error"]
        status, _, _ = await anyio.to_thread.run_sync(
            lambda: post(url, example("transport.messageReceived"), {"x-api-key": KEY})
        )
        assert status == 202
        assert fronts_of(os.getpid()) == [pid]


@pytest.mark.anyio
async def test_a_front_ignores_sigterm_its_router_stops_it(make_app: MakeApp, tmp_path: Path) -> None:
    """Under systemd the whole control group gets SIGTERM: the front must keep answering until the router,
    which stops inputs first, tells it to stop."""
    port = free_port()
    async with make_app(config(port, tmp_path)):
        (pid,) = fronts_of(os.getpid())
        os.kill(pid, signal.SIGTERM)
        await anyio.sleep(0.3)
        assert alive(pid)
        status, _, _ = await anyio.to_thread.run_sync(
            lambda: post(f"http://127.0.0.1:{port}/events", example("transport.messageReceived"), {"x-api-key": KEY})
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
        # the app has stopped: fronts drained and exited, spool closed
        stop_sending = True
        await anyio.to_thread.run_sync(lambda: [f.result() for f in futures])
    finally:
        stop_sending = True
        pool.shutdown(wait=True)
    from event_router.core.spool.sqlite import SQLiteSpool

    spool = SQLiteSpool(tmp_path / "var/spool.db")
    spool.open("readonly")
    try:
        pending = {row.event_id for row in spool.fetch_due("archive", spool.clock.now() + 3600, 100_000, ())}
    finally:
        spool.close()
    delivered = {line["id"] for line in read_jsonl(tmp_path / "out.jsonl")}
    assert len(accepted) >= 300
    assert set(accepted) <= delivered | pending, "a sender got 202 for an event that is not on disk"
    assert refused, "senders kept posting while the router stopped: some must have been refused"


# --- the router as a subprocess --------------------------------------------------------------------------


def test_fronts_do_not_outlive_a_killed_router(tmp_path: Path) -> None:
    """SIGKILL the router: its fronts see their channel close and exit, freeing the port for the restart."""
    port = free_port()
    path = tmp_path / "router.toml"
    path.write_text(config(port, tmp_path, processes=2))
    router = RouterProcess(path).start()
    assert router.proc is not None
    pids = fronts_of(router.proc.pid)
    assert len(pids) == 2
    url = f"http://127.0.0.1:{port}/events"
    status, first, _ = post(url, example("transport.messageReceived"), {"x-api-key": KEY})
    assert status == 202
    router.kill()
    wait_for(lambda: not any(alive(p) for p in pids), timeout=10, what="fronts exit after their router is killed")
    wait_for(lambda: not port_accepts(port), timeout=5, what="the port is free")
    router = RouterProcess(path).start()
    try:
        status, second, _ = post(url, example("transport.messageReceived"), {"x-api-key": KEY})
        assert status == 202
        # at least once: the first may be written twice if the kill came before its outcome was committed
        wait_for(lambda: {first["id"], second["id"]} <= {line["id"] for line in read_jsonl(tmp_path / "out.jsonl")})
    finally:
        router.terminate()


# --- arbitrary bytes against a front ---------------------------------------------------------------------

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


_STATUSES = {b"202", b"400", b"401", b"404", b"405", b"413", b"414", b"422", b"431"}


@pytest.fixture
def front_router(tmp_path: Path):  # type: ignore[no-untyped-def]
    """One router with one front for all of the property's examples (hypothesis runs them in one test call)."""
    port = free_port()
    path = tmp_path / "router.toml"
    path.write_text(config(port, tmp_path))
    with RouterProcess(path) as router:
        assert router.proc is not None
        yield port, router.proc.pid


@given(stream=http_streams(), cuts=st.lists(st.integers(0, 600), max_size=4))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_arbitrary_bytes_get_whole_answers_or_a_close_and_never_break_the_front(  # type: ignore[no-untyped-def]
    front_router, stream: bytes, cuts: list[int]
) -> None:
    """Whatever a client sends (cut anywhere, then half-closed): only whole HTTP/1.1 answers with statuses
    the webhook uses come back, the connection ends, and the front process is the same one afterwards."""
    import socket

    port, router_pid = front_router
    (front,) = fronts_of(router_pid)
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            for start, end in itertools.pairwise(points):
                sock.sendall(stream[start:end])
            sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass  # the front closed while bytes were unread: allowed, the answers before it still count
    rest = received
    while rest:
        assert rest.startswith(b"HTTP/1.1 "), received
        head, sep, rest = rest.partition(b"\r\n\r\n")
        assert sep, f"a cut-off answer head: {received!r}"
        status = head[9:12]
        if status == b"100":
            continue
        assert status in _STATUSES, received
        length = int(next(ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.startswith(b"Content-Length")))
        assert len(rest) >= length, f"a cut-off answer body: {received!r}"
        orjson.loads(rest[:length])  # every answer body is JSON
        rest = rest[length:]
    assert fronts_of(router_pid) == [front], "the front process died or was restarted"
