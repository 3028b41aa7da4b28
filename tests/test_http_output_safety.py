"""What the outputs that make HTTP requests do with hostile or odd answers, in a real router process.

- A redirect (301/302/303/307/308) is followed with the same request (method, body, headers) or fails; a
  bodiless GET is never what counts as delivered.
- A redirect to another origin is refused: no secret header, signature or auth reaches it.
- An answer's body is read only up to a small bound, whatever its size: the router's memory stays flat.
- A receiver echoing the credentials it was sent in an encoded form (JSON with `\\/`, URL-encoded, base64)
  gets them masked in dead letters, `dlq show` and the log.
- No Retry-After parks a delivery: each one is bounded by `max_backoff` and `max_age`.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import urlencode

import pytest

from event_router.testing import (
    Recorded,
    RouterProcess,
    assert_no_secrets,
    example,
    free_port,
    http_receiver,
    post,
    run_cli,
    wait_for,
)
from event_router.web.signing import verify

SIGNING_SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
MB = 1024 * 1024


# --- answers a test writes itself (`http_receiver(handle)`) ------------------------------------------------


def answer(
    handler: BaseHTTPRequestHandler, status: int, body: bytes = b"", headers: dict[str, str] | None = None
) -> None:
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def stream(
    handler: BaseHTTPRequestHandler, sent: dict[str, int], key: str, status: int, *, declared: int | None, cap: int
) -> None:
    """Answer `status` with a body that goes on until the client hangs up or `cap` bytes were sent (counted in
    `sent[key]`): chunked (`declared` None, no end in sight) or with a Content-Length of `declared` bytes."""
    handler.send_response(status)
    if declared is None:
        handler.send_header("Transfer-Encoding", "chunked")
    else:
        handler.send_header("Content-Length", str(declared))
    handler.end_headers()
    chunk = b"x" * (256 * 1024)
    framed = b"%x\r\n%s\r\n" % (len(chunk), chunk) if declared is None else chunk
    handler.close_connection = True
    try:
        while sent[key] < cap:
            handler.wfile.write(framed)
            sent[key] += len(chunk)
    except OSError:  # the router hung up: what it is meant to do
        pass


# --- the router ---------------------------------------------------------------------------------------------


def router_toml(port: int, admin: int, outputs: str, routes: list[str], retry: str) -> str:
    route_tables = "\n".join(
        f'[[routes]]\nname = "to-{name}"\nmatch = {{ trigger = ["transport.messageReceived"] }}\nto = ["{name}"]\n'
        for name in routes
    )
    return f"""
[router]
data_dir = "./var"
shutdown_timeout = "2s"
retry = {retry}
[router.admin]
listen = "127.0.0.1:{admin}"

[inputs.connector]
type = "webhook"
listen = "127.0.0.1:{port}"
validation = "warn"

{outputs}

{route_tables}
"""


def send_event(port: int) -> str:
    status, body, _ = post(f"http://127.0.0.1:{port}/events", example("transport.messageReceived"))
    assert status == 202, body
    return str(body["id"])


def dead_letters(db: Path) -> dict[str, str]:
    """output -> error of each dead letter (read while the router runs: SQLite WAL allows it)."""
    if not db.exists():
        return {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return dict(conn.execute("SELECT output, error FROM dead_letters"))


def delivered(admin: int, output: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        labels = (f'output="{output}"', 'outcome="delivered"')
        if line.startswith("event_router_deliveries_total{") and all(label in line for label in labels):
            total += float(line.rsplit(" ", 1)[1])
    return total


def memory_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field_name} in /proc/{pid}/status")


# --- 3. redirects keep the request ----------------------------------------------------------------------------


def test_a_redirect_is_followed_with_the_same_post_and_a_get_only_target_is_not_a_delivery(tmp_path: Path) -> None:
    def handle(request: Recorded, h: BaseHTTPRequestHandler) -> None:
        moves = {"/moved": (302, "/new"), "/seeother": (303, "/getonly"), "/permanent": (301, "/new")}
        if request.path in moves:
            status, location = moves[request.path]
            answer(h, status, b"moved", {"Location": location})
        elif request.path == "/getonly":  # a page that only serves GET, as the target of a 303 often is
            answer(h, 200 if request.method == "GET" else 405, b"{}")
        else:
            answer(h, 200, b'{"ok": true}')

    port, admin = free_port(), free_port()
    with http_receiver(handle) as web:
        outputs = "\n".join(
            f'[outputs.{name}]\ntype = "http"\nurl = "{web.url}/{path}"\nfollow_redirects = true\n'
            f'signing_secret = "{SIGNING_SECRET}"\n'
            for name, path in (("found", "moved"), ("seeother", "seeother"), ("permanent", "permanent"))
        )
        config = tmp_path / "router.toml"
        retry = '{ max_attempts = 2, initial_backoff = "50ms", max_backoff = "100ms" }'
        config.write_text(router_toml(port, admin, outputs, ["found", "seeother", "permanent"], retry))
        db = tmp_path / "var/spool.db"
        with RouterProcess(config) as router:
            event_id = send_event(port)
            wait_for(lambda: delivered(admin, "found") + delivered(admin, "permanent") == 2, what="the deliveries")
            wait_for(lambda: "seeother" in dead_letters(db), what="the 303's dead letter")
            assert delivered(admin, "seeother") == 0
            assert router.terminate() == 0
        error = dead_letters(db)["seeother"]
        assert error.startswith(f"POST {web.url}/getonly (redirected from {web.url}/seeother) answered 405"), error
        resent = [r for r in web.requests if r.path in ("/new", "/getonly")]
        assert len(resent) == 3 and all(r.method == "POST" for r in resent), resent
        first = next(r for r in web.requests if r.path == "/moved")
        for request in resent:
            assert request.body == first.body and request.json()["id"] == event_id
            assert verify(SIGNING_SECRET, request.headers, request.body)
            assert request.headers["Idempotency-Key"] == event_id


def test_redirects_are_a_failure_unless_followed_and_loops_end(tmp_path: Path) -> None:
    def handle(request: Recorded, h: BaseHTTPRequestHandler) -> None:
        if request.path == "/loop":
            answer(h, 307, headers={"Location": "/loop"})
        elif request.path == "/nowhere":
            answer(h, 302)
        else:
            answer(h, 308, headers={"Location": "/new"})

    port, admin = free_port(), free_port()
    with http_receiver(handle) as web:
        outputs = (
            f'[outputs.plain]\ntype = "http"\nurl = "{web.url}/old"\n'
            f'[outputs.loop]\ntype = "http"\nurl = "{web.url}/loop"\nfollow_redirects = true\n'
            f'[outputs.nowhere]\ntype = "http"\nurl = "{web.url}/nowhere"\nfollow_redirects = true\n'
        )
        config = tmp_path / "router.toml"
        config.write_text(router_toml(port, admin, outputs, ["plain", "loop", "nowhere"], "{ max_attempts = 2 }"))
        db = tmp_path / "var/spool.db"
        with RouterProcess(config):
            send_event(port)
            wait_for(lambda: len(dead_letters(db)) == 3, what="three dead letters")
        errors = dead_letters(db)
    assert errors["plain"] == f"POST {web.url}/old answered 308"
    assert errors["loop"] == (
        f"POST {web.url}/loop (redirected from {web.url}/loop) answered 307: more than 5 redirects [too_many_redirects]"
    )
    assert (
        errors["nowhere"] == f"POST {web.url}/nowhere answered 302: redirect without a usable Location [bad_redirect]"
    )
    assert [r.path for r in web.requests].count("/loop") == 6
    assert "/new" not in [r.path for r in web.requests]


# --- 4. secrets stay on the configured origin -----------------------------------------------------------------


def test_a_redirect_to_another_origin_is_refused_and_gets_no_secret(tmp_path: Path) -> None:
    with http_receiver() as elsewhere:

        def handle(request: Recorded, h: BaseHTTPRequestHandler) -> None:
            target = {"/port": f"{elsewhere.url}/steal", "/host": "http://localhost:1/steal"}[request.path]
            answer(h, 307, headers={"Location": target})

        port, admin = free_port(), free_port()
        with http_receiver(handle) as web:
            common = (
                'follow_redirects = true\nheaders = { X-Static = "static-secret-value" }\n'
                f'signing_secret = "{SIGNING_SECRET}"\nauth = {{ type = "bearer", token = "bearer-token-value" }}\n'
            )
            outputs = (
                f'[outputs.otherport]\ntype = "http"\nurl = "{web.url}/port"\n{common}'
                f'[outputs.otherhost]\ntype = "http"\nurl = "{web.url}/host"\n{common}'
            )
            config = tmp_path / "router.toml"
            config.write_text(router_toml(port, admin, outputs, ["otherport", "otherhost"], "{ max_attempts = 2 }"))
            db = tmp_path / "var/spool.db"
            with RouterProcess(config) as router:
                send_event(port)
                wait_for(lambda: len(dead_letters(db)) == 2, what="both dead letters")
                record = router.wait_log("delivery dead-lettered")
                assert router.terminate() == 0
            errors = dead_letters(db)
        assert elsewhere.requests == []
        assert [r.headers["X-Static"] for r in web.requests] == ["static-secret-value"] * 2
        assert errors["otherport"] == (
            f"POST {web.url}/port answered 307: redirect to another origin {elsewhere.url}/ refused: "
            f"secrets are only sent to the configured origin {web.url}/ [redirect_refused]"
        )
        assert "redirect to another origin http://localhost:1/ refused" in errors["otherhost"]
        assert record["reason"] == "permanent" and "refused" in record["error"]


# --- 5. answers are read up to a bound ------------------------------------------------------------------------


@pytest.mark.slow
def test_huge_and_endless_answers_leave_the_router_s_memory_flat(tmp_path: Path) -> None:
    cap = 200 * MB
    sent = {"ok": 0, "error": 0}

    def endless_ok(request: Recorded, h: BaseHTTPRequestHandler) -> None:
        stream(h, sent, "ok", 200, declared=None, cap=cap)

    def huge_error(request: Recorded, h: BaseHTTPRequestHandler) -> None:
        stream(h, sent, "error", 500, declared=1024 * MB, cap=cap)

    port, admin = free_port(), free_port()
    with http_receiver(endless_ok) as ok, http_receiver(huge_error) as error, http_receiver() as warm:
        outputs = (
            f'[outputs.warm]\ntype = "http"\nurl = "{warm.url}/in"\n'
            f'[outputs.endless]\ntype = "http"\nurl = "{ok.url}/in"\n'
            f'[outputs.huge]\ntype = "http"\nurl = "{error.url}/in"\n'
        )
        config = tmp_path / "router.toml"
        retry = '{ max_attempts = 2, initial_backoff = "50ms", max_backoff = "100ms" }'
        text = router_toml(port, admin, outputs, ["warm"], retry)
        big = 'match = { trigger = ["transport.relationshipChanged"] }\nto = ["endless", "huge"]'
        text += f'[[routes]]\nname = "big"\n{big}\n'
        config.write_text(text)
        db = tmp_path / "var/spool.db"
        with RouterProcess(config) as router:
            assert router.proc is not None
            pid = router.proc.pid
            send_event(port)  # warms the router up: the http client, the spool's writer
            wait_for(lambda: delivered(admin, "warm") == 1, what="the warm-up delivery")
            baseline = memory_kib(pid, "VmHWM")
            status, body, _ = post(f"http://127.0.0.1:{port}/events", example("transport.relationshipChanged"))
            assert status == 202, body
            wait_for(lambda: delivered(admin, "endless") == 1, timeout=30, what="the 200 with an endless body")
            wait_for(lambda: "huge" in dead_letters(db), timeout=30, what="the 500 with a 1 GiB body dead-lettered")
            growth = memory_kib(pid, "VmHWM") - baseline
            assert router.terminate() == 0
        assert growth < 50 * 1024, f"the router's peak RSS grew by {growth} KiB"
        # each answer was cut early; nowhere near what the receivers would have sent
        assert sent["ok"] < 64 * MB and sent["error"] < 64 * MB, sent
        assert dead_letters(db)["huge"].startswith(f"POST {error.url}/in answered 500: xxxxxxxxxx")


# --- 6. secrets echoed back in an encoded form ----------------------------------------------------------------

#: each holds the marker; `/`, `"` and `\` are what JSON escapes, `+` and `=` what URL-encoding changes
STATIC = 'st/at"ic\\CANARY-header'
BEARER = "be/arer+CANARY=token"
#: a password whose Basic credentials (base64 of `router:<password>`) hold a `/`, which json_encode escapes
PASSWORD = "pass/CANARY?>?>"
BASIC = base64.b64encode(f"router:{PASSWORD}".encode()).decode()


def credentials(request: Recorded) -> dict[str, str]:
    return {k: v for k, v in request.headers.items() if k.lower() in ("x-static", "authorization")}


def php_json_echo(request: Recorded) -> bytes:
    """The credential headers as PHP's json_encode writes them: `/` as `\\/`."""
    return json.dumps({"error": "denied", "headers": credentials(request)}).replace("/", "\\/").encode()


def form_echo(request: Recorded) -> bytes:
    return urlencode(credentials(request)).encode()


@pytest.mark.parametrize("echo", [php_json_echo, form_echo], ids=["json_encode", "urlencoded"])
def test_credentials_echoed_in_encoded_form_are_masked(tmp_path: Path, echo: Callable[[Recorded], bytes]) -> None:
    assert "/" in BASIC, BASIC
    # the part of the Basic credentials before its `/` is what any form of it shows, even JSON-encoded twice
    secrets = ("CANARY", BASIC.split("/")[0])
    port, admin = free_port(), free_port()
    with http_receiver() as bearer, http_receiver() as basic:
        for rx in (bearer, basic):
            rx.respond(400)
            rx.reply = echo
        outputs = (
            f'[outputs.bearer]\ntype = "http"\nurl = "{bearer.url}/in"\n'
            'headers = { X-Static = { env = "T_STATIC" } }\nauth = { type = "bearer", token = { env = "T_BEARER" } }\n'
            f'[outputs.basic]\ntype = "http"\nurl = "{basic.url}/in"\n'
            'auth = { type = "basic", username = "router", password = { env = "T_PASSWORD" } }\n'
        )
        config = tmp_path / "router.toml"
        config.write_text(router_toml(port, admin, outputs, ["bearer", "basic"], "{ max_attempts = 2 }"))
        env = {"T_STATIC": STATIC, "T_BEARER": BEARER, "T_PASSWORD": PASSWORD}
        db = tmp_path / "var/spool.db"
        with RouterProcess(config, env=env) as router:
            send_event(port)
            wait_for(lambda: len(dead_letters(db)) == 2, what="both dead letters")
            router.wait_log("delivery dead-lettered", count=2)
            assert router.terminate() == 0
        # the receivers were sent the real values, and echoed them
        assert bearer.requests[0].headers["X-Static"] == STATIC
        assert bearer.requests[0].headers["Authorization"] == f"Bearer {BEARER}"
        assert basic.requests[0].headers["Authorization"] == f"Basic {BASIC}"
        assert "CANARY" in echo(bearer.requests[0]).decode() and BASIC not in echo(basic.requests[0]).decode()
        assert BASIC.split("/")[0] in echo(basic.requests[0]).decode()
    for output, error in dead_letters(db).items():
        assert_no_secrets(error, secrets, expect=["answered 400", "***"], where=f"the dead letter of {output}")
    assert_no_secrets(router.logs(), secrets, expect=["delivery dead-lettered", "***"], where="the router's log")
    shown = run_cli("dlq", "show", "-c", str(config), env=env)
    assert shown.returncode == 0, shown.stderr
    # with each attempt's status and the start of the answer (which echoed them), scrubbed as the error is
    expect = ["answered 400", '"status": 400', '"answer": ']
    assert_no_secrets(shown.stdout + shown.stderr, secrets, expect=expect, where="dlq show")


# --- 8. no Retry-After parks a delivery -----------------------------------------------------------------------


def test_no_retry_after_parks_a_delivery(tmp_path: Path) -> None:
    headers = {"inf": "inf", "huge": "1e400", "date": "Fri, 31 Dec 9999 23:59:59 GMT"}
    port, admin = free_port(), free_port()
    with (
        http_receiver() as inf,
        http_receiver() as huge,
        http_receiver() as date,
        http_receiver() as aging,
    ):
        receivers = {"inf": inf, "huge": huge, "date": date}
        for name, rx in receivers.items():
            rx.respond((503, {"Retry-After": headers[name]}), 200)
        aging.respond((503, {"Retry-After": headers["date"]}))
        outputs = "".join(f'[outputs.{name}]\ntype = "http"\nurl = "{rx.url}/in"\n' for name, rx in receivers.items())
        # a receiver that always says "much later": dead-lettered once max_age is up, not parked past it
        outputs += (
            f'[outputs.aging]\ntype = "http"\nurl = "{aging.url}/in"\n'
            'retry = { max_attempts = 100, max_age = "2s", initial_backoff = "1h", max_backoff = "1h" }\n'
        )
        config = tmp_path / "router.toml"
        retry = '{ max_attempts = 5, initial_backoff = "1h", max_backoff = "1s" }'
        config.write_text(router_toml(port, admin, outputs, [*receivers, "aging"], retry))
        db = tmp_path / "var/spool.db"
        with RouterProcess(config) as router:
            send_event(port)
            for name in receivers:

                def retried(name: str = name) -> bool:
                    return delivered(admin, name) == 1

                wait_for(retried, timeout=10, what=f"the retry after {name}")
            wait_for(lambda: "aging" in dead_letters(db), timeout=10, what="the dead letter at max_age")
            assert router.terminate() == 0
        for name, rx in receivers.items():
            first, second = rx.requests
            assert second.at - first.at <= 2.0, (name, second.at - first.at)
        assert dead_letters(db)["aging"].startswith(f"POST {aging.url}/in answered 503")
        assert len(aging.requests) >= 2  # a last attempt when max_age ran out
