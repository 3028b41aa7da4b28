"""Defences around secrets and the spool, against real router processes: empty secrets, two routers on one
data_dir, operator commands beside a running router (a replay's counts on both spool backends), spool files
removed under it, a full data disk (those two SQLite's: the PostgreSQL spool has no file of the router's)."""

from __future__ import annotations

import logging
import os
import select
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from event_router.api.errors import ConfigError
from event_router.api.plugin import PluginContext
from event_router.inputs.webhook import Received, WebhookInput
from event_router.testing import IN_CI, RouterProcess, example, free_port, http_receiver, post, run_cli, wait_for

KEY = "spool-safety-key"
HEADERS = {"x-api-key": KEY}


ARCHIVE = """
[outputs.archive]
type = "file"
path = "./archive.jsonl"
"""


def config_text(port: int, admin: int, *, data_dir: str = "./var", extra: str = "", outputs: str = ARCHIVE) -> str:
    """A webhook input routing everything to the one output in `outputs`."""
    output = outputs.split("[outputs.", 1)[1].split("]", 1)[0]
    return f"""
[router]
data_dir = "{data_dir}"
shutdown_timeout = "2s"
{extra}
[router.admin]
listen = "127.0.0.1:{admin}"
[inputs.connector]
type = "webhook"
listen = "127.0.0.1:{port}"
api_key = {{ env = "SPOOL_SAFETY_KEY" }}
{outputs}
[[routes]]
name = "all"
to = ["{output}"]
"""


ENV = {"SPOOL_SAFETY_KEY": KEY}


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def gauge(admin: int, name: str, labels: str = "") -> float:
    """A metric's value from a real scrape; `labels` as in the exposition, e.g. `output="archive"`."""
    name = "event_router_" + name
    _, text = get(f"http://127.0.0.1:{admin}/metrics")
    for line in text.splitlines():
        if line.startswith((name + "{" + labels + "} ",) if labels else (name + " ", name + "{}")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name}{{{labels}}} in /metrics:\n{text}")


def event(n: int) -> dict[str, object]:
    body = example("transport.messageReceived")
    body["data"] = {**body["data"], "id": f"MSG{n:017d}"}
    return body


# --- empty secrets -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("api_key", "env", "said"),
    [
        ('{ env = "SPOOL_SAFETY_KEY" }', {"SPOOL_SAFETY_KEY": ""}, "environment variable SPOOL_SAFETY_KEY is empty"),
        ('{ env = "SPOOL_SAFETY_KEY" }', {"SPOOL_SAFETY_KEY": " \t"}, "environment variable SPOOL_SAFETY_KEY is only"),
        ('{ file = "key.txt" }', {}, "key.txt' is empty"),
        ('""', {}, "the secret is empty"),
        ('"   "', {}, "the secret is only whitespace"),
    ],
    ids=["env-empty", "env-blank", "file-newline", "plain-empty", "plain-blank"],
)
def test_empty_api_key_is_a_config_error(tmp_path: Path, api_key: str, env: dict[str, str], said: str) -> None:
    """An empty key would let a request without the header in (both read as ""): check and run refuse it."""
    (tmp_path / "key.txt").write_text("\n")
    port, admin = free_port(), free_port()
    config = tmp_path / "router.toml"
    config.write_text(config_text(port, admin).replace('{ env = "SPOOL_SAFETY_KEY" }', api_key))
    checked = run_cli("check", "-c", str(config), env=env)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    lines = [line for line in checked.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "inputs.connector.api_key: " in lines[0] and said in lines[0], checked.stderr
    ran = run_cli("run", "-c", str(config), env=env, timeout=30)
    assert ran.returncode == 1 and lines[0] in ran.stderr.splitlines(), ran.stderr
    assert "Traceback" not in ran.stderr


def test_empty_signing_secret_of_an_output_is_a_config_error(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    config = tmp_path / "router.toml"
    outputs = (
        '[outputs.crm]\ntype = "http"\nurl = "http://127.0.0.1:9/in"\nsigning_secret = { env = "SPOOL_SAFETY_SIGN" }'
    )
    config.write_text(config_text(port, admin, outputs=outputs))
    checked = run_cli("check", "-c", str(config), env={**ENV, "SPOOL_SAFETY_SIGN": ""})
    assert checked.returncode == 1
    assert (
        "error: router.toml: outputs.crm.signing_secret: the secret from environment variable SPOOL_SAFETY_SIGN "
        "is empty (plugin http)"
    ) in checked.stderr.splitlines(), checked.stderr


def test_webhook_refuses_an_empty_key_and_a_missing_header(tmp_path: Path) -> None:
    """Beneath the config loader: the input itself never compares a missing header with a key."""
    context = PluginContext("connector", tmp_path, logging.getLogger("t"), tmp_path)
    with pytest.raises(ConfigError, match="api_key: the secret is empty"):
        WebhookInput({"listen": "127.0.0.1:1", "api_key": ""}, context)
    webhook = WebhookInput({"listen": "127.0.0.1:1", "api_key": KEY}, context)
    for headers in ({}, {"x-api-key": ""}, {"x-api-key": KEY + "x"}):
        answer = webhook.screen(Received("127.0.0.1", headers, "/events", None))
        assert answer is not None and answer[0] == 401, headers
    assert webhook.screen(Received("127.0.0.1", {"x-api-key": KEY}, "/events", None)) is None


# --- one router per data_dir ---------------------------------------------------------------------------


def test_second_router_on_the_same_data_dir_refuses_while_operator_commands_work(tmp_path: Path) -> None:
    first_dir, second_dir = tmp_path / "a", tmp_path / "b"
    first_dir.mkdir()
    second_dir.mkdir()
    data_dir = tmp_path / "var"
    port = free_port()
    first = first_dir / "router.toml"
    first.write_text(config_text(port, free_port(), data_dir=str(data_dir)))
    second = second_dir / "router.toml"
    second.write_text(config_text(free_port(), free_port(), data_dir=str(data_dir)))
    with RouterProcess(first, env=ENV) as router:
        assert router.proc is not None
        assert post(f"http://127.0.0.1:{port}/events", event(1), HEADERS)[0] == 202
        ran = run_cli("run", "-c", str(second), env=ENV, timeout=30)
        assert ran.returncode == 1
        # the one `error:` line naming the file and the key, as every other start-up failure; off a terminal
        # the log's JSON record of the same failure comes first, with the key
        message = f"router.toml: router.data_dir: {data_dir} is in use by another router (pid {router.proc.pid})"
        assert [line for line in ran.stderr.splitlines() if not line.startswith("{")] == [f"error: {message}"], (
            ran.stderr
        )
        (record,) = [orjson.loads(line) for line in ran.stderr.splitlines() if line.startswith("{")]
        assert (record["msg"], record["key"], record["error"]) == ("router failed to start", "router.data_dir", message)
        # read-only commands and dead-letter commands go through SQLite's own locking beside the router
        status = run_cli("status", "-c", str(second), "--json", env=ENV)
        assert status.returncode == 0, status.stderr
        assert orjson.loads(status.stdout)["spool"] == str(data_dir / "spool.db")
        listed = run_cli("dlq", "list", "-c", str(second), env=ENV)
        assert listed.returncode == 0, listed.stderr
        purged = run_cli("dlq", "purge", "--all", "--yes", "-c", str(second), env=ENV)
        assert purged.returncode == 0 and "nothing purged" in purged.stderr, purged.stdout + purged.stderr
        assert router.proc.poll() is None
    # the lock goes with the router: the second one starts now
    with RouterProcess(second, env=ENV):
        pass


# --- dlq replay beside a running router ------------------------------------------------------------------


def test_replay_beside_a_running_router_keeps_its_counts(
    tmp_path: Path, router_spool: tuple[str, dict[str, str]]
) -> None:
    """The router learns of events `dlq replay` adds: the limit holds, and the gauge never goes negative. On
    each spool backend (PostgreSQL: the replay is another client's transaction, counted at the router's
    next count)."""
    spool_line, spool_env = router_spool
    env = {**ENV, **spool_env}
    port, admin = free_port(), free_port()
    config = tmp_path / "router.toml"
    with http_receiver() as rx:
        outputs = (
            f'[outputs.crm]\ntype = "http"\nurl = "{rx.url}/in"\n'
            'retry = { initial_backoff = "50ms", max_backoff = "100ms", max_attempts = 1000 }'
        )
        extra = f"max_pending_events = 100\n{spool_line}"
        config.write_text(config_text(port, admin, extra=extra, outputs=outputs))
        rx.respond(400)  # permanent: every event becomes a dead letter
        with RouterProcess(config, env=env):
            url = f"http://127.0.0.1:{port}/events"
            for n in range(150):  # one at a time, each dead-lettered before the next: the limit is not hit
                status, body, _ = post(url, event(n), HEADERS)
                assert status == 202, (n, body)
                # a 202 says stored, not delivered: wait for the dead letter, or a fast sender fills the spool

                def dead_lettered(count: int = n + 1) -> bool:
                    return gauge(admin, "dead_letters_stored") == count

                wait_for(dead_lettered, what=f"dead letter {n + 1}")
            wait_for(lambda: gauge(admin, "dead_letters_stored") == 150, what="150 dead letters")
            rx.respond(503)  # now the replayed deliveries stay pending
            replayed = run_cli("dlq", "replay", "--all", "-c", str(config), env=env)
            assert replayed.returncode == 0, replayed.stderr
            assert replayed.stdout.strip() == "replayed 150, still invalid or unrouted 0, skipped 0"
            wait_for(lambda: gauge(admin, "spool_pending_events") == 150, timeout=5, what="router counts replayed")
            status, body, _ = post(url, event(1000), HEADERS)
            assert status == 503 and "spool is full (150 of 100 events pending)" in body["error"], body
            rx.respond(200)
            seen: list[float] = []

            def drained() -> bool:
                seen.append(gauge(admin, "spool_pending_events"))
                return seen[-1] == 0

            try:
                wait_for(drained, timeout=30, interval=0.05, what="replayed events delivered")
            except AssertionError as exc:
                shown = run_cli("status", "--json", "-c", str(config), env=env)
                raise AssertionError(f"{exc}; gauge {seen[-5:]}; status: {shown.stdout[-1500:]}") from None
            assert min(seen) >= 0, seen
            # the writer's idle looks (one a WATCH_INTERVAL) must not move it either
            until = time.monotonic() + 1.5
            while time.monotonic() < until:
                assert gauge(admin, "spool_pending_events") == 0
                time.sleep(0.05)
            assert post(url, event(1001), HEADERS)[0] == 202


# --- spool files removed under a running router -----------------------------------------------------------


@pytest.mark.parametrize("removed", ["spool.db", "spool.db-wal"])
def test_removed_spool_file_is_refused_and_not_ready(tmp_path: Path, removed: str) -> None:
    port, admin = free_port(), free_port()
    config = tmp_path / "router.toml"
    # the receiver is down: acknowledged events stay pending in the spool
    outputs = '[outputs.crm]\ntype = "http"\nurl = "http://127.0.0.1:9/in"\nretry = { initial_backoff = "10s" }'
    config.write_text(config_text(port, admin, outputs=outputs))
    url = f"http://127.0.0.1:{port}/events"
    path = tmp_path / "var" / removed
    with RouterProcess(config, env=ENV) as router:
        for n in range(5):
            assert post(url, event(n), HEADERS)[0] == 202
        assert get(f"http://127.0.0.1:{admin}/readyz")[0] == 200
        path.unlink()
        wait_for(lambda: get(f"http://127.0.0.1:{admin}/readyz")[0] == 503, timeout=5, what="not ready")
        ready = orjson.loads(get(f"http://127.0.0.1:{admin}/readyz")[1])
        assert ready["spool"]["error"] == (
            f"spool file {path} was removed while the router was running; new events are refused until the "
            "router is restarted"
            + ("; the events it held were copied into the spool file" if removed.endswith("-wal") else "")
        ), ready
        status, body, _ = post(url, event(99), HEADERS)
        assert status == 503 and body["error"] == "the router cannot store events right now", body
        assert gauge(admin, "spool_writable") == 0
        record = router.wait_log("spool file removed or replaced under the running router")
        assert record["file"] == str(path)
        router.kill()
    if removed.endswith("-wal"):
        # what the removed WAL held was copied into spool.db: every acknowledged event is still there
        shown = run_cli("status", "-c", str(config), "--json", env=ENV)
        assert orjson.loads(shown.stdout)["pending_events"] == 5, shown.stdout + shown.stderr


# --- a full data disk -------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a data disk that can be filled in a moment. Needs root, as CI has: fails there without."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        (pytest.fail if IN_CI else pytest.skip)("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, check=False
    )
    if done.returncode != 0:
        (pytest.fail if IN_CI else pytest.skip)(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def test_full_data_disk_does_not_write_file_output_lines_twice(tmp_path: Path, small_disk: Path) -> None:
    """Outcome commits fail while the disk is full; the worker keeps the deliveries and commits later."""
    port, admin = free_port(), free_port()
    config = tmp_path / "router.toml"
    pipe = tmp_path / "lines"
    os.mkfifo(pipe)  # the output blocks on it until the disk is full, so its outcomes hit the full disk
    outputs = f'[outputs.archive]\ntype = "file"\npath = "{pipe}"\nfsync = false\ntimeout = "60s"'
    config.write_text(config_text(port, admin, data_dir=str(small_disk / "var"), outputs=outputs))
    url = f"http://127.0.0.1:{port}/events"
    lines: list[bytes] = []
    stop = threading.Event()

    def read(fd: int) -> None:
        """Read lines until `stop` is set and the pipe is empty: once the router has exited, all it wrote."""
        pending = b""
        while True:
            if select.select([fd], [], [], 0.1)[0]:
                pending += os.read(fd, 1 << 16)
                *complete, pending = pending.split(b"\n")
                lines.extend(complete)
            elif stop.is_set():
                break
        os.close(fd)

    reader: threading.Thread | None = None
    router = RouterProcess(config, env=ENV).start()
    try:
        for n in range(20):
            assert post(url, event(n), HEADERS)[0] == 202
        filler = fill(small_disk)
        # the output's open of the pipe returns now, with the disk full. Read and write end in one: a
        # worker that closes the file and opens it again (the restart this test is about) must not end
        # the reading with an EOF
        reader = threading.Thread(target=read, args=(os.open(pipe, os.O_RDWR | os.O_NONBLOCK),), daemon=True)
        reader.start()
        wait_for(lambda: len(lines) >= 20, timeout=10, what="20 lines through the pipe")

        # a second failed try of the same commit: a worker that gave up after the first would have been
        # restarted and sent the deliveries again
        def failed_commits() -> float:
            try:
                return gauge(admin, "outcome_commit_failures_total", 'output="archive"')
            except AssertionError:  # not counted yet
                return 0.0

        wait_for(lambda: failed_commits() >= 2, timeout=15, what="the outcome commit tried again")
        assert len(lines) == 20, [orjson.loads(line)["data"]["id"] for line in lines]
        router.wait_log("cannot record delivery outcomes")
        filler.unlink()
        wait_for(lambda: gauge(admin, "spool_pending_events") == 0, timeout=15, what="outcomes committed")
        router.wait_log("delivery outcomes recorded after the spool failed")
        assert router.terminate() == 0
    finally:
        stop.set()
        if reader is not None:
            reader.join(5)
        if router.proc is not None and router.proc.poll() is None:
            router.kill()
    ids = [orjson.loads(line)["data"]["id"] for line in lines]
    assert sorted(ids) == [f"MSG{n:017d}" for n in range(20)], ids


# --- outcome commits: tried again only while the failure is transient ---------------------------------------


@pytest.mark.anyio
async def test_an_outcome_commit_is_tried_again_only_after_a_transient_failure() -> None:
    """A full disk passes (the same commit succeeds later); a failure that repeats at every try (not
    transient) fails the worker at once instead of joining every later group."""
    from types import SimpleNamespace

    from event_router.api.errors import SpoolError
    from event_router.core.delivery import OutputWorker
    from event_router.core.stats import Stats

    class Spool:
        def __init__(self, failures: list[SpoolError]) -> None:
            self.failures = failures
            self.calls = 0

        async def settle(self, **_: object) -> list[int | None]:
            self.calls += 1
            if self.failures:
                raise self.failures.pop(0)
            return [7]

    full = SpoolError("spool write failed: database or disk is full", transient=True)
    spool = Spool([full, full])
    worker = SimpleNamespace(spool=spool, name="archive", stats=Stats())
    assert await OutputWorker._commit(worker, 1, done=[], retry=[], dead=[(1, "permanent", "400", 1)]) == [7]  # type: ignore[arg-type]
    assert spool.calls == 3

    spool = Spool([SpoolError("spool write failed: no such table: nowhere")])
    worker = SimpleNamespace(spool=spool, name="archive", stats=Stats())
    with pytest.raises(SpoolError, match="no such table"):
        await OutputWorker._commit(worker, 1, done=[1], retry=[], dead=[])  # type: ignore[arg-type]
    assert spool.calls == 1
