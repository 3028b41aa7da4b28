"""Test kit for the router and for plugin authors: real sockets, real subprocesses, a real HTTP receiver.

Its pytest fixtures (`event_router.testing.fixtures`: `anyio_backend`, `make_app`, the autouse
`reap_routers`) are opt-in: a test suite names them in its top-level conftest.py,
`pytest_plugins = ["event_router.testing.fixtures"]`; installing the router adds nothing to anyone's pytest
session. The helpers here are plain imports. Nothing here mocks the router's own I/O.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self

import orjson

# the dead letters' types, for a plugin's tests (`dead_letters` below) without importing the core's spool
from event_router.core.spool import DeadLetter as DeadLetter
from event_router.core.spool import DeadLetterFilter as DeadLetterFilter
from event_router.core.spool import Parked, Refused, SpoolSettings

if TYPE_CHECKING:
    from event_router.app import App
    from event_router.core.model import RouterConfig
    from event_router.plugin_loader import PluginRegistry

#: the source checkout (tests and plugins/_template live there); meaningless in an installed wheel
ROOT = Path(__file__).resolve().parents[3]
#: a copy of the Connector reference's example-events.json, shipped so tests run without ../shared
EXAMPLES = Path(__file__).resolve().parent / "example-events.json"
#: the reference itself, beside a checkout (as in CI); tests prefer it so a changed reference shows
REFERENCE_EXAMPLES = ROOT.parent / "shared" / "reference" / "example-events.json"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


class MakeApp(Protocol):
    """The `make_app` fixture's type, for a test's parameter (`make_app: MakeApp`): `make_app(text)` runs an
    App in-process from router.toml text for an `async with` block, entered once the router is ready;
    `ready=False`: once it runs and waits for its inputs (a test of a broker that is down). `plugins`:
    plugin modules (the ones with the hook implementations) to register as if installed, for a plugin's
    tests before `pip install`; one whose entry point is installed is found through it."""

    def __call__(
        self, text: str, *, ready: bool = True, plugins: Sequence[ModuleType] = ()
    ) -> AbstractAsyncContextManager[App]: ...


def example_events() -> list[dict[str, Any]]:
    """The Connector's example events (`{trigger, data}`, webhook shape)."""
    source = REFERENCE_EXAMPLES if REFERENCE_EXAMPLES.is_file() else EXAMPLES
    events: list[dict[str, Any]] = json.loads(source.read_text())
    return events


def example(trigger: str) -> dict[str, Any]:
    return next(e for e in example_events() if e["trigger"] == trigger)


def unique_relationship() -> tuple[dict[str, Any], str]:
    """The Connector's example relationship (`transport.relationshipChanged`'s data) with an id of its own, and
    the trigger of the `consumption.relationshipEvent.<id>` the Connector publishes it as: an event only this
    test sends, on a broker other tests publish to as well."""
    relationship: dict[str, Any] = example("transport.relationshipChanged")["data"]
    relationship["id"] = "REL" + uuid.uuid4().hex[:17].upper()
    return relationship, f"consumption.relationshipEvent.{relationship['id']}"


def connector_events(lines: Iterable[dict[str, Any]], message_id: str, *triggers: str) -> dict[str, dict[str, Any]]:
    """Among the events a file output wrote (`read_jsonl`): the `transport.messageReceived` of the message
    `message_id` (under "message") and an event of each of `triggers` (under its trigger), once all of them
    are there, else {}. On a broker other tests publish to as well, a test picks what only it sent."""
    found = {}
    for line in lines:
        if line["trigger"] == "transport.messageReceived" and line["data"]["id"] == message_id:
            found["message"] = line
        elif line["trigger"] in triggers:
            found[line["trigger"]] = line
    return found if len(found) == 1 + len(triggers) else {}


def require_service(name: str, host: str, port: int) -> None:
    """Skip when a broker is missing on a developer's machine; fail in CI, where .ci/run starts it."""
    import pytest

    try:
        with socket.create_connection((host, port), timeout=2):
            return
    except OSError as exc:
        message = f"{name} is not reachable on {host}:{port} ({exc}); see README 'Running the tests'"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def require_program(name: str, *candidates: str) -> str:
    """The path of a program a test starts itself: the first of `candidates` that is executable, else `name`
    on PATH. Skips when it is missing on a developer's machine; fails in CI, whose machine must have it."""
    import pytest

    found = next((path for path in candidates if os.access(path, os.X_OK)), None) or shutil.which(name)
    if found is None:
        message = f"{name} is not installed; see README 'Running the tests'"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


def pytest_in_subprocess(
    tmp: Path, test_source: str, *, conftest_dir: Path, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the test module `test_source` in a fresh pytest process in `tmp`, with `conftest_dir`'s conftest.py
    loaded as a plugin (its fixtures) and `env` over this process's environment.

    For tests of fixtures themselves, e.g. that one fails rather than skips in CI when its program is missing.
    """
    (tmp / "test_in_subprocess.py").write_text(test_source)
    path = os.pathsep.join(filter(None, [str(conftest_dir), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider", "test_in_subprocess.py"],
        cwd=tmp,
        env={**os.environ, "PYTHONPATH": path, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_program_fixture_outcome(tmp: Path, test_source: str, *, conftest_dir: Path, program: str, ci: bool) -> None:
    """Run `test_source` (a test using a fixture that starts `program`) with an empty PATH: with CI set it
    must fail, naming the missing program; without, it must skip."""
    empty = tmp / "bin"
    empty.mkdir()
    done = pytest_in_subprocess(
        tmp, test_source, conftest_dir=conftest_dir, env={"CI": "true" if ci else "", "PATH": str(empty)}
    )
    output = done.stdout + done.stderr
    assert done.returncode == (1 if ci else 0), output
    assert ("1 error" if ci else "1 skipped") in output, output
    if ci:
        assert f"{program} is not installed" in output, output


def port_accepts(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass
class ServerProcess:
    """A server a test started on its own port (a private broker...), ready once the port accepts.

    Subclasses say how to start it in `command()` (and `environment()`); `stop()` terminates it by process
    id, so the machine's shared server on the standard port is never touched. `kill()` then `start()` is a
    crash and a restart: whatever the server keeps on disk is the subclass's to keep in the same place.
    """

    port: int
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    #: how long `start()` waits for the port to accept connections
    boot_timeout: ClassVar[float] = 15.0

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        """The server's environment; None: the test's own."""
        return None

    def start(self) -> Self:
        args = self.command()
        try:
            proc = self.proc = subprocess.Popen(
                args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.environment()
            )
        except FileNotFoundError:
            # outside pytest (a benchmark) nothing called require_program first: say what is missing
            raise FileNotFoundError(
                f"{args[0]} is not installed (or not on PATH); see README 'Running the tests'"
            ) from None

        def up() -> bool:
            if proc.poll() is not None:  # a server that cannot start should not cost the whole boot timeout
                raise AssertionError(f"{args[0]} exited with code {proc.returncode} before port {self.port} accepted")
            return port_accepts(self.port)

        wait_for(up, timeout=self.boot_timeout, what=f"{args[0]} on port {self.port}")
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Terminate the server (SIGTERM) and wait for it; one that does not exit within `timeout` is killed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would: the server gets no chance to flush or close anything."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: the webhook's `api_key` most tests give: the key read from `$ROUTER_WEBHOOK_API_KEY` (a TOML value)
WEBHOOK_API_KEY_ENV = '{ env = "ROUTER_WEBHOOK_API_KEY" }'


def router_table(
    admin: int | None = None, *, data_dir: str = "./var", shutdown_timeout: str | None = None, extra: str = ""
) -> str:
    """router.toml text: `[router]` with `data_dir`, `shutdown_timeout` when given and the `extra` lines, then,
    when `admin` is a port, `[router.admin]` listening on it on loopback."""
    lines = ["[router]", f'data_dir = "{data_dir}"']
    if shutdown_timeout is not None:
        lines.append(f'shutdown_timeout = "{shutdown_timeout}"')
    if extra:
        lines.append(extra)
    if admin is not None:
        lines += ["[router.admin]", f'listen = "127.0.0.1:{admin}"']
    return "\n".join(lines) + "\n"


def webhook_input(
    port: int, *, name: str = "connector", api_key: str | None = WEBHOOK_API_KEY_ENV, extra: str = ""
) -> str:
    """router.toml text: `[inputs.<name>]`, a webhook on loopback `port`; `api_key` is a TOML value (None:
    no key), `extra` lines go into the same table."""
    lines = [f"[inputs.{name}]", 'type = "webhook"', f'listen = "127.0.0.1:{port}"']
    if api_key is not None:
        lines.append(f"api_key = {api_key}")
    if extra:
        lines.append(extra)
    return "\n".join(lines) + "\n"


def archive_all(path: str = "./var/events.jsonl", *, name: str = "archive") -> str:
    """router.toml text: a file output `name` writing `path`, and a route `all` sending every event to it."""
    return f'[outputs.{name}]\ntype = "file"\npath = "{path}"\n[[routes]]\nname = "all"\nto = "{name}"\n'


def url_secret_inputs(kind: str, *, env: str, refused: str, unreachable: str) -> str:
    """router.toml text for a test that the password in an input's `url` never shows: logging at debug, three
    inputs of type `kind` that reconnect within a second: `good`, its URL read from `$<env>`; `refused`, the
    URL `refused` (a password the broker refuses, written in plain text: `check` warns of it); `unreachable`,
    the URL `unreachable` (nothing listens there)."""
    inputs = [("good", f'{{ env = "{env}" }}'), ("refused", f'"{refused}"'), ("unreachable", f'"{unreachable}"')]
    tables = "".join(f'[inputs.{name}]\ntype = "{kind}"\nurl = {url}\nreconnect_max = "1s"\n' for name, url in inputs)
    return '\n[router]\ndata_dir = "./var"\nlog_level = "debug"\n' + tables


def build_router_config(text: str, directory: Path, *, registry: PluginRegistry | None = None) -> RouterConfig:
    """router.toml `text` built as the router builds it, as if read from `directory`/router.toml (its relative
    paths are that folder's), with the installed plugins (`load_plugins()`) unless `registry` is given."""
    import tomllib

    from event_router.config import build_config
    from event_router.plugin_loader import load_plugins

    plugins = load_plugins() if registry is None else registry
    return build_config(tomllib.loads(text), path=directory / "router.toml", registry=plugins)


def config_errors(build: Callable[[], object]) -> list[str]:
    """The errors, as the router words them, of the `ConfigErrors` that `build()` (a `build_router_config`, say)
    raises for a router.toml a test expects refused; fails when it builds."""
    import pytest

    from event_router.config import ConfigErrors

    with pytest.raises(ConfigErrors) as info:
        build()
    return [str(e) for e in info.value.errors]


def wait_for(check: Callable[[], Any], timeout: float = 15.0, interval: float = 0.02, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def until(check: Callable[[], Any], what: str = "condition", within: float = 20.0, interval: float = 0.02) -> Any:
    """`wait_for` on the event loop: for checks that read the spool (its sqlite reader belongs to the loop's
    thread) or app state. `check` may be a coroutine function. Returns its first truthy value."""
    import inspect

    import anyio

    deadline = anyio.current_time() + within
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if anyio.current_time() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await anyio.sleep(interval)


async def send_webhook(
    port: int, event: dict[str, Any], headers: dict[str, str] | None = None, path: str = "/events"
) -> str:
    """POST `event` to a webhook input on loopback from a worker thread; assert 202; return the event id."""
    import anyio

    status, body, _ = await anyio.to_thread.run_sync(lambda: post(f"http://127.0.0.1:{port}{path}", event, headers))
    assert status == 202, body
    return str(body["id"])


def dead_letters(
    data_dir: Path | str, where: DeadLetterFilter | None = None, *, spool_settings: SpoolSettings | None = None
) -> list[DeadLetter]:
    """The dead letters (those `where` selects, else all) in the spool of the router whose `data_dir` (and
    `[router] spool`, `spool_settings`: a `RouterConfig.spool`) this is, oldest first. Read on a read-only
    connection of its own, as `event-router dlq list` reads them: while the router runs (from a test's event
    loop too) or after it stopped."""
    from event_router.core.spool.backend import open_spool

    spool = open_spool(Path(data_dir), "readonly", spool_settings)
    try:
        return spool.dead_letters(where or DeadLetterFilter())
    finally:
        spool.close()


def delivery_ids(stored: Sequence[list[int | Parked | Refused] | int | None]) -> list[list[int]]:
    """The delivery ids of the events in a `Spool.store` result, each event's in order; fails on a dead
    letter, a repeat or a parked (or refused) delivery among them."""
    out: list[list[int]] = []
    for result in stored:
        assert isinstance(result, list), f"not a stored event: {result!r}"
        assert all(isinstance(did, int) for did in result), f"a delivery was parked: {result!r}"
        out.append([did for did in result if isinstance(did, int)])
    return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The lines of a JSON Lines file, which the router may be appending to while a test polls it: a last line
    without its newline yet is left for the next read (a large write can be seen half done)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    return [orjson.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines() if line.strip()]


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    #: time.monotonic() when the request arrived
    at: float = 0.0

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Receiver:
    """A real HTTP server on loopback that records requests and answers with a programmable status."""

    port: int = 0
    requests: list[Recorded] = field(default_factory=list)
    #: statuses to answer with, in order; the last one repeats. (status, headers)
    script: list[tuple[int, dict[str, str]]] = field(default_factory=lambda: [(200, {})])
    delay: float = 0.0
    #: builds the answer's body from the request (default: a fixed JSON); e.g. one that echoes the request's
    #: credentials back, as some error pages do
    reply: Callable[[Recorded], bytes] | None = None
    #: writes each answer itself (`handle(request, handler)`, GET too), instead of `script`, `delay`, `reply`
    handle: Callable[[Recorded, BaseHTTPRequestHandler], None] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def respond(self, *script: tuple[int, dict[str, str]] | int) -> None:
        with self.lock:
            self.script = [s if isinstance(s, tuple) else (s, {}) for s in script]

    def bodies(self) -> list[Any]:
        with self.lock:
            return [r.json() for r in self.requests]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def http_receiver(
    handle: Callable[[Recorded, BaseHTTPRequestHandler], None] | None = None, *, port: int = 0
) -> Iterator[Receiver]:
    """A `Receiver` serving on loopback for the `with` block, on `port` (0: a free one); `handle` see
    `Receiver.handle`. A given port is one a router already sends to: the receiver comes back up."""
    receiver = Receiver(handle=handle)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = self.rfile.read(length)
            if receiver.handle is not None:
                request = Recorded(self.command, self.path, dict(self.headers.items()), body, time.monotonic())
                with receiver.lock:
                    receiver.requests.append(request)
                receiver.handle(request, self)
                return
            if receiver.delay:
                time.sleep(receiver.delay)
            recorded = Recorded(self.command, self.path, dict(self.headers.items()), body, time.monotonic())
            with receiver.lock:
                status, headers = receiver.script[0] if len(receiver.script) == 1 else receiver.script.pop(0)
                receiver.requests.append(recorded)
            if receiver.reply is not None:
                payload = receiver.reply(recorded)
            else:
                payload = b'{"ok": true}' if status < 300 else b'{"error": "scripted failure"}'
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_PUT = do_POST

        def do_GET(self) -> None:
            if receiver.handle is None:
                self.send_error(501, f"Unsupported method ({self.command!r})")
            else:
                self.do_POST()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


def readyz(port: int) -> tuple[int, dict[str, Any]]:
    """GET /readyz of an admin endpoint on loopback: (status, body)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def assert_ready_means_consuming(router: RouterProcess, admin: int, consuming: str) -> None:
    """Call at READY=1 (`RouterProcess.start()` returned): /readyz says 200 already, and the input's log
    line `consuming` (its queue bound, its subscription made) came before `router ready`."""
    status, body = readyz(admin)
    assert status == 200, body
    messages = [str(r.get("msg", "")) for r in router.log_records()]
    assert "router ready" in messages, router.logs()
    ready = messages.index("router ready")
    assert any(m.startswith(consuming) for m in messages[:ready]), f"{consuming!r} not before router ready:\n{messages}"


@contextmanager
def published_at_ready(
    config: Path, admin: int, consuming: str, publish: Callable[[], object]
) -> Iterator[RouterProcess]:
    """An input's ready-on-start test: start the router on `config` (its admin endpoint on `admin`) and, the
    moment it says READY=1, `publish` (as the Connector would); READY=1 must have meant consuming
    (`assert_ready_means_consuming`). The `with` block then checks that every event was stored; after it,
    /readyz still says 200 and the router stops cleanly (exit status 0)."""
    with RouterProcess(config) as router:
        publish()
        assert_ready_means_consuming(router, admin, consuming)
        yield router
        assert readyz(admin)[0] == 200
        assert router.terminate() == 0


@contextmanager
def router_refusing_a_reload(config: Path, broken: str, env: dict[str, str]) -> Iterator[RouterProcess]:
    """A secrets test's router, run on `config` with `env` without waiting for its inputs (they may never
    connect). The `with` block waits for what the router must log first; after it, `broken` is written over
    `config` and the router reloaded, and once it logged that it refused, it stops (exit status 0): its logs
    are complete for `assert_no_secrets`."""
    with RouterProcess(config, env=env, ready=False) as router:
        yield router
        config.write_text(broken)
        router.reload()
        router.wait_log("reload refused")
        assert router.terminate() == 0


def assert_no_secrets(text: str, secrets: Iterable[str], *, expect: Iterable[str], where: str) -> None:
    """Fail when any of `secrets` occurs in `text`, or when any of `expect` does not.

    `expect` names what `text` must say (the error, the log message...), so the check cannot pass on an
    empty or unrelated text.
    """
    leaked = [s for s in secrets if s in text]
    assert not leaked, f"{where} shows {leaked}:\n{text}"
    missing = [e for e in expect if e not in text]
    assert not missing, f"{where} does not say {missing}:\n{text}"


class Headers(dict[str, str]):
    """An answer's headers, looked up by name in any case (HTTP's names are; some servers write them in
    lower case, hyper among them)."""

    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        super().__init__((name.lower(), value) for name, value in items)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)


def post(
    url: str, body: bytes | dict[str, Any], headers: dict[str, str] | None = None, timeout: float = 10
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """POST with the stdlib client (a different HTTP stack than the router's)."""
    import urllib.error
    import urllib.request

    data = body if isinstance(body, bytes) else orjson.dumps(body)
    request = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            return response.status, (orjson.loads(raw) if raw else {}), Headers(response.headers.items())
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            parsed = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            parsed = {"raw": raw.decode(errors="replace")}
        return exc.code, parsed, Headers(exc.headers.items())


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `python -m event_router ...` as a real subprocess, with no terminal on stdin (as in a script)."""
    return subprocess.run(
        [sys.executable, "-m", "event_router", *args],
        stdin=subprocess.DEVNULL,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_check_hides_secrets(
    config: Path, secrets: Iterable[str], *, expect: Iterable[str], env: dict[str, str] | None = None
) -> None:
    """`event-router check` accepts `config`, says everything in `expect` and shows none of `secrets`."""
    checked = run_cli("check", "-c", str(config), env=env)
    assert checked.returncode == 0, checked.stderr
    assert_no_secrets(checked.stdout + checked.stderr, secrets, expect=expect, where="check")


#: routers started and not yet stopped: the `reap_routers` fixture kills what a failed test left running
LIVE_ROUTERS: set[RouterProcess] = set()


#: run in place of the router by `socket_activated`: what systemd does for a `.socket` unit between fork and
#: exec. The sockets go to descriptors 3, 4, ... (`LISTEN_FDS`), `LISTEN_PID` is this process's id, which
#: `exec` keeps, and then this process becomes the router
_ACTIVATE = """
import fcntl, os, sys
given = [int(fd) for fd in os.environ.pop("EVENT_ROUTER_TEST_FDS").split(",")]
first = 3
# copies above the target range first, so that no dup2 below overwrites a descriptor still to be moved
moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, first + len(given)) for fd in given]
for fd in given:
    os.close(fd)
for index, fd in enumerate(moved):
    os.dup2(fd, first + index, inheritable=True)
    os.close(fd)
os.environ["LISTEN_FDS"] = str(len(given))
os.environ["LISTEN_PID"] = str(os.getpid())
os.execvp(sys.argv[1], sys.argv[1:])
"""


def socket_activated(
    sockets: Sequence[socket.socket], names: Sequence[str] | None, program: Sequence[str]
) -> tuple[list[str], dict[str, str], tuple[int, ...]]:
    """How to start `program` with `sockets` passed as systemd passes a socket unit's (`LISTEN_FDS`, and
    `LISTEN_FDNAMES` when `names` are given): (argv prefix, environment to add, `pass_fds`). The caller keeps
    the sockets open, as systemd does, so that a restarted router gets the same ones."""
    env = {"EVENT_ROUTER_TEST_FDS": ",".join(str(s.fileno()) for s in sockets)}
    if names is not None:
        env["LISTEN_FDNAMES"] = ":".join(names)
    return [sys.executable, "-c", _ACTIVATE, *program], env, tuple(s.fileno() for s in sockets)


class RouterProcess:
    """`event-router run` in a subprocess, readiness taken from a real sd_notify socket.

    `sockets` (with `socket_names`, their `FileDescriptorName=`) are passed to it as systemd passes those of
    a socket unit; the caller holds them, so a router started again serves the same ones.
    """

    def __init__(
        self,
        config: Path,
        *,
        env: dict[str, str] | None = None,
        log: Path | None = None,
        program: Sequence[str] = (sys.executable, "-m", "event_router"),
        ready: bool = True,
        sockets: Sequence[socket.socket] = (),
        socket_names: Sequence[str] | None = None,
    ):
        self.config = config
        #: `start()` waits for READY=1 (every input consumes); False: only until the router runs and waits for
        #: its inputs (a broker that is down, on purpose)
        self.ready = ready
        #: the command before `run`: this interpreter's router, or another install's (`venv/bin/event-router`)
        self.program = list(program)
        self.env = env or {}
        self.pass_fds: tuple[int, ...] = ()
        if sockets:
            self.program, passing, self.pass_fds = socket_activated(sockets, socket_names, self.program)
            self.env = {**self.env, **passing}
        self.log_path = log or config.with_suffix(".log")
        self.notify_path = config.parent / f"notify-{os.getpid()}-{id(self)}.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.messages: list[str] = []
        self._sock: socket.socket | None = None

    def start(self, timeout: float = 20) -> RouterProcess:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if self.notify_path.exists():
            self.notify_path.unlink()
        self._sock.bind(str(self.notify_path))
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [*self.program, "run", "-c", str(self.config), "--log-format", "json"],
            env={**os.environ, "NOTIFY_SOCKET": str(self.notify_path), **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.config.parent,
            pass_fds=self.pass_fds,
        )
        log.close()
        LIVE_ROUTERS.add(self)
        if self.ready:
            self.wait_message("READY=1", timeout)
        else:
            self.wait_running(timeout)
        return self

    def wait_running(self, timeout: float = 20) -> None:
        """Until the router is ready, or runs and waits for inputs that do not consume yet."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "READY=1" in self.poll_messages() or any(
                r.get("msg") == "waiting for inputs to consume before reporting ready" for r in self.log_records()
            ):
                return
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"router exited with {self.proc.returncode} before it ran:\n{self.logs()}")
            time.sleep(0.02)
        raise AssertionError(f"router did not run within {timeout}s:\n{self.logs()}")

    def poll_messages(self) -> list[str]:
        """Take every datagram already queued on the socket (never waits: pings may never stop)."""
        assert self._sock is not None
        while True:
            try:
                data = self._sock.recv(4096, socket.MSG_DONTWAIT)
            except (BlockingIOError, TimeoutError):
                return self.messages
            self.messages.extend(data.decode().split("\n"))

    def wait_message(self, message: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        start = len(self.messages)
        while time.monotonic() < deadline:
            self.poll_messages()
            if message in self.messages[start:]:
                return
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"router exited with {self.proc.returncode} before {message}:\n{self.logs()}")
            time.sleep(0.02)
        raise AssertionError(f"router did not send {message} within {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.logs().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def wait_log(self, message: str, *, count: int = 1, timeout: float = 20) -> dict[str, Any]:
        """The `count`-th log record whose message starts with `message`, once it is there."""

        def found() -> list[dict[str, Any]] | None:
            records = [r for r in self.log_records() if str(r.get("msg", "")).startswith(message)]
            return records if len(records) >= count else None

        records: list[dict[str, Any]] = wait_for(found, timeout=timeout, what=f"log message {message!r} x{count}")
        return records[count - 1]

    def reload(self) -> None:
        """SIGHUP, as `systemctl reload` sends it."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.poll_messages()  # what it sent while stopping
        self.close()
        return code

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.close()

    def close(self) -> None:
        LIVE_ROUTERS.discard(self)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self.notify_path.exists():
            self.notify_path.unlink()

    def __enter__(self) -> RouterProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.terminate()
        self.close()


class TcpProxy:
    """A TCP relay on loopback to a real server; `cut()` drops every connection and refuses new ones,
    `restore()` accepts again. The server itself is untouched, so other clients of it are not disturbed.
    `reply_delay` holds back each piece of what the server says by that many seconds: a slow broker, to widen
    the time a client needs to set up (declare, bind, subscribe)."""

    def __init__(self, target_host: str, target_port: int, *, reply_delay: float = 0.0):
        self.target = (target_host, target_port)
        self.reply_delay = reply_delay
        self.port = free_port()
        self._open = threading.Event()
        self._open.set()
        self._stop = threading.Event()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> Self:
        self._listen()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.cut()
        self._thread.join(5)
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.1)
        self._listener = listener

    def _serve(self) -> None:
        while not self._stop.is_set():
            if self._listener is None:
                return
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            if not self._open.is_set():  # cut: the peer sees its connection dropped at once
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self.relay_back, args=(upstream, client), daemon=True).start()

    def relay_back(self, server: socket.socket, client: socket.socket) -> None:
        """Server to client. A subclass may override it to alter what the server says (see the amqp
        plugin's test of an unanswered basic.consume)."""
        self._pump(server, client, self.reply_delay)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, delay: float = 0.0) -> None:
        try:
            while data := source.recv(65536):
                if delay:
                    time.sleep(delay)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """The server 'goes away': established connections are dropped and new ones closed at once.

        The listener stays open, so no other socket can take its port before `restore()`.
        """
        self._open.clear()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for s in pair:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def restore(self) -> None:
        self._open.set()
