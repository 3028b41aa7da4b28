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

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from event_router.frames import MAX_PAYLOAD, FrameError, FrameReader, encode
from event_router.testing import RouterProcess, example, free_port, port_accepts, post, read_jsonl, wait_for

KEY = "front-key"
FRONT_MODULE = b"event_router.builtin.webhook_front"


def config(port: int, tmp: Path, processes: int = 1) -> str:
    return f"""
[router]
data_dir = "{tmp}/var"
[inputs.connector]
type = "webhook"
listen = "127.0.0.1:{port}"
api_key = "{KEY}"
processes = {processes}
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


# --- in process (the router under test is this process) -------------------------------------------------


@pytest.mark.anyio
async def test_fronts_are_processes_of_their_own_and_store_what_they_take(make_app, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    async with make_app(config(port, tmp_path, processes=2)) as app:
        pids = fronts_of(os.getpid())
        assert len(pids) == 2, pids
        url = f"http://127.0.0.1:{port}/events"
        mail = example("transport.messageReceived")

        def send_many() -> list[tuple[int, dict, dict]]:
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
async def test_a_killed_front_is_logged_and_started_again(make_app, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
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
async def test_a_request_the_router_fails_on_costs_only_itself(make_app, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A bug on one request must not break the channel that the front's other requests share."""
    from event_router.builtin.webhook import WebhookInput

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
async def test_a_front_ignores_sigterm_its_router_stops_it(make_app, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
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
async def test_stopping_answers_only_what_is_stored(make_app, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
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
    from event_router.spool import connect

    conn = connect(tmp_path / "var/spool.db", readonly=True)
    try:
        pending = {row[0] for row in conn.execute("SELECT id FROM events")}
    finally:
        conn.close()
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
