"""The web console (event_router.console) in a real browser: Debian's Chromium driven by Playwright against
real router processes, a real HTTP receiver and the real spool (each backend for the replay).

A dead letter appears when the receiver fails, is replayed from the console through its confirmation page
and arrives at the receiver; an output is paused and resumed from the outputs page; a dead letter is purged
after its confirmation; the configuration page shows no secret. Refused: an admin endpoint off the
loopback without a token, a form posted without its CSRF token or from another site (a page of another
origin in the same browser), a Host that is not the loopback, the API without the token when one is set.

Each page's screenshot is written to CONSOLE_SCREENSHOTS (default: the test's temporary folder); with
UPDATE_README_SCREENSHOT=1 the overview's is written to docs/images/console-overview.png for README.md.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import orjson
import pytest

from event_router.console.configview import config_text
from event_router.testing import (
    IN_CI,
    ROOT,
    Receiver,
    Recorded,
    RouterProcess,
    example,
    free_port,
    http_receiver,
    post,
    require_program,
    run_cli,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

KEY = "console-webhook-key"
HEADERS = {"x-api-key": KEY}
#: written in router.toml in plain text on purpose: the configuration page must not show it
CRM_SECRET = "Bearer console-crm-secret-0123456789"
SIGNING_SECRET = "whsec_Y29uc29sZS1zaWduaW5nLXNlY3JldC0zMi1ieXRlcyE="
TOKEN = "console-admin-token-0123456789abcdef"
ENV = {"CONSOLE_WEBHOOK_KEY": KEY, "CONSOLE_ADMIN_TOKEN": TOKEN}


def screenshots_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = os.environ.get("CONSOLE_SCREENSHOTS")
    path = Path(where) if where else tmp_path_factory.getbasetemp() / "console-screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return screenshots_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium (scripts/services installs it), driven by Playwright: never a browser it downloads."""
    chromium = require_program("chromium", "/usr/bin/chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        message = "playwright is not installed (the dev extra); see README 'Running the tests'"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A page of a fresh browser context (cookies of its own)."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    try:
        yield context.new_page()
    finally:
        context.close()


def router_config(port: int, admin: int, url: str, *, spool: str = "", admin_extra: str = "", listen: str = "") -> str:
    return f"""
[router]
data_dir = "./var"
shutdown_timeout = "5s"
retention = "1h"
{spool}
[router.admin]
listen = "{listen or f"127.0.0.1:{admin}"}"
{admin_extra}
[inputs.connector]
type = "webhook"
listen = "127.0.0.1:{port}"
api_key = {{ env = "CONSOLE_WEBHOOK_KEY" }}
[outputs.crm]
type = "http"
url = "{url}"
timeout = "5s"
signing_secret = "{SIGNING_SECRET}"
retry = {{ initial_backoff = "50ms", max_backoff = "100ms", max_attempts = 2 }}
[outputs.crm.headers]
Authorization = "{CRM_SECRET}"
X-Tenant = "acme"
[[routes]]
name = "mail to crm"
match.trigger = "transport.messageReceived"
to = "crm"
"""


def send(port: int) -> str:
    status, body, _ = post(f"http://127.0.0.1:{port}/events", example("transport.messageReceived"), HEADERS)
    assert status == 202, body
    return str(body["id"])


def admin_json(admin: int, path: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{admin}{path}", method=method, headers=headers or {})
    if method == "POST":
        request.data = b""
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read() or b"{}")


def delivered_ids(receiver: Receiver) -> list[str]:
    with receiver.lock:
        return [r.headers.get("Idempotency-Key", "") for r in receiver.requests]


class Site:
    """A router with its admin endpoint, and the receiver behind its `crm` output."""

    def __init__(self, router: RouterProcess, receiver: Receiver, port: int, admin: int, *, sqlite: bool):
        self.router, self.receiver, self.port, self.admin = router, receiver, port, admin
        #: the SQLite spool (the screenshots are of this one)
        self.sqlite = sqlite
        self.base = f"http://127.0.0.1:{admin}/console"

    def dead_letter(self) -> tuple[str, int]:
        """An event whose delivery the receiver refuses until it is a dead letter: (event id, dead letter id)."""
        event_id = send(self.port)
        record = self.router.wait_log("delivery dead-lettered", count=1 + self._dead)
        self._dead += 1
        assert record["event_id"] == event_id, record
        return event_id, int(record["dead_letter"])

    _dead = 0


@pytest.fixture
def site(tmp_path: Path, router_spool: tuple[str, dict[str, str]]) -> Iterator[Site]:
    spool, env = router_spool
    port, admin = free_port(), free_port()
    with http_receiver() as receiver:
        receiver.respond(503)
        config = tmp_path / "router.toml"
        config.write_text(router_config(port, admin, f"{receiver.url}/crm", spool=spool))
        with RouterProcess(config, env={**ENV, **env}) as router:
            yield Site(router, receiver, port, admin, sqlite=spool == "")


def shoot(page: Any, shots: Path, name: str) -> None:
    if name == "overview":
        page.wait_for_timeout(2100)  # the live rows' highlight fades
    page.screenshot(path=str(shots / f"console-{name}.png"), full_page=True)
    if name == "overview" and os.environ.get("UPDATE_README_SCREENSHOT") == "1":
        page.screenshot(path=str(ROOT / "docs" / "images" / "console-overview.png"))


def test_a_dead_letter_is_replayed_from_the_console_and_arrives(site: Site, page: Any, shots: Path) -> None:
    """The whole path in a browser: the overview shows the dead letter, the dead letters page selects it,
    the confirmation page names it, its button replays it, and the receiver (accepting now) gets the event.
    The overview's live table shows the delivery as it happens (the tap). Then the events page finds it and
    its trace shows it received and delivered (nothing pending, no dead letter left)."""
    event_id, dlid = site.dead_letter()
    page.goto(f"{site.base}/")
    assert page.locator("h1").inner_text() == "Overview"
    recent = page.locator("section", has=page.locator("h2", has_text="Recent failures"))
    assert recent.locator(f'a[href="/console/dead-letters/{dlid}"]').count() == 1
    assert "retries_exhausted" in recent.inner_text()
    page.locator("[data-tap-status]", has_text="live").wait_for()
    # a second event while the overview is open: its attempts show in the live table as they happen
    live_id = send(site.port)
    page.locator("table.live", has_text=live_id).wait_for()
    live_dlid = int(site.router.wait_log("delivery dead-lettered", count=2)["dead_letter"])
    site._dead += 1
    page.locator("table.live", has_text="retries exhausted").wait_for()
    if site.sqlite:
        shoot(page, shots, "overview")

    page.click("nav >> text=Dead letters")
    page.wait_for_url(f"{site.base}/dead-letters")
    rows = page.locator("tbody tr")
    assert rows.count() == 2
    if site.sqlite:
        shoot(page, shots, "dead-letters")
    page.check(f'input[name="id"][value="{dlid}"]')
    page.click("text=Replay selected…")
    assert page.locator("h1").inner_text() == "Replay 1 dead letter(s)?"
    assert event_id in page.locator("table").inner_text()
    if site.sqlite:
        shoot(page, shots, "confirm-replay")
    site.receiver.respond(200)
    page.click("button:has-text('Replay 1 dead letter(s)')")
    page.wait_for_url(re.compile(r"/console/dead-letters\?done=replayed"))
    assert "Replayed 1 dead letter(s)" in page.locator(".notice").inner_text()
    wait_for(lambda: event_id in delivered_ids(site.receiver), what="the replayed event at the receiver")
    with site.receiver.lock:
        arrived = [r for r in site.receiver.requests if r.headers.get("Idempotency-Key") == event_id]
    assert arrived[-1].json()["id"] == event_id
    # the other dead letter stays, and only it
    ids = [int(v) for v in page.locator('input[name="id"]').evaluate_all("els => els.map(e => e.value)")]
    assert ids == [live_dlid]

    page.click("nav >> text=Events")
    page.fill('input[name="id"]', event_id)
    page.click("button:has-text('Search')")
    found = page.locator("tbody tr")
    assert found.count() == 1 and "stored" in found.inner_text() and "mail to crm" in found.inner_text()
    if site.sqlite:
        shoot(page, shots, "events")
    # the window: both events kept (retention), and the dead letter still there; by outcome, only it
    page.goto(f"{site.base}/events?trigger=transport.*&since=10m")
    rows = page.locator("tbody tr").all_inner_texts()
    assert len(rows) == 3, rows
    assert sum("stored" in row for row in rows) == 2 and sum(f"dead letter {live_dlid}" in row for row in rows) == 1
    page.goto(f"{site.base}/events?trigger=transport.*&outcome=dead_lettered")
    assert [live_id in row for row in page.locator("tbody tr").all_inner_texts()] == [True]
    page.goto(f"{site.base}/events?trigger=consumption.*")
    assert page.locator("tbody tr").inner_text() == "Nothing matches."
    page.goto(f"{site.base}/events?id={event_id}")
    page.click(f"tbody >> text={event_id}")
    page.wait_for_url(f"{site.base}/events/{event_id}")
    timeline = page.locator("table").first.inner_text()
    assert "received" in timeline and "pending" not in timeline, timeline
    assert "mail to crm → crm" in page.locator("dl.facts").inner_text()
    event = page.locator("pre.json").inner_text()
    assert '"subject": "***"' in event, event
    assert '"bodyFormat": "PlainText"' in event, event  # fixed by the schema (an enum): shown
    assert example("transport.messageReceived")["data"]["content"]["subject"] not in event
    if site.sqlite:
        shoot(page, shots, "trace")
    # the live event's attempts, from the spool's attempt history (kept with its dead letter): each with
    # its outcome, the receiver's HTTP status and how long it took
    page.goto(f"{site.base}/events/{live_id}")
    timeline = page.locator("table").first.inner_text()
    assert re.search(r"retry\s+crm.*attempt 1 \(HTTP 503, \d+ ms\)", timeline, re.S), timeline
    assert re.search(r"retries exhausted\s+crm.*attempt 2 \(HTTP 503, \d+ ms\)", timeline, re.S), timeline


def test_outputs_pause_resume_and_purge_with_confirmation(site: Site, page: Any, shots: Path) -> None:
    """Pause and resume from the outputs page (the admin endpoint's JSON agrees; paused, an event waits and
    nothing is sent), and a dead letter purged after its confirmation page: gone for good."""
    page.goto(f"{site.base}/outputs")
    page.click("#output-crm >> button:has-text('Pause')")
    page.wait_for_url(re.compile(r"/console/outputs\?done=paused"))
    assert "Paused crm" in page.locator(".notice").inner_text()
    status, outputs = admin_json(site.admin, "/outputs")
    assert status == 200 and outputs["outputs"]["crm"]["paused"] is True
    assert "console (127.0.0.1)" in outputs["outputs"]["crm"]["paused_by"]
    # paused: an event waits, nothing is sent
    held = send(site.port)
    page.goto(f"{site.base}/outputs")
    wait_for(lambda: admin_json(site.admin, "/outputs")[1]["outputs"]["crm"]["pending"] == 1, what="held")
    assert held not in delivered_ids(site.receiver)
    if site.sqlite:
        shoot(page, shots, "outputs")
    page.click("#output-crm >> button:has-text('Resume')")
    page.wait_for_url(re.compile(r"/console/outputs\?done=resumed"))
    assert admin_json(site.admin, "/outputs")[1]["outputs"]["crm"]["paused"] is False
    site.router.wait_log("delivery dead-lettered")
    site._dead += 1

    _, dlid = site.dead_letter()
    page.goto(f"{site.base}/dead-letters/{dlid}")
    assert page.locator("h1").inner_text() == f"Dead letter {dlid}"
    if site.sqlite:
        shoot(page, shots, "dead-letter")
    page.click("text=Purge…")
    assert page.locator("h1").inner_text() == "Purge 1 dead letter(s)?"
    assert "cannot be replayed afterwards" in page.inner_text("main")
    if site.sqlite:
        shoot(page, shots, "confirm-purge")
    page.click("button:has-text('Purge 1 dead letter(s)')")
    page.wait_for_url(re.compile(r"/console/dead-letters\?done=purged"))
    assert "Purged 1 dead letter(s)." in page.locator(".notice").inner_text()
    page.goto(f"{site.base}/dead-letters/{dlid}")
    assert page.locator("h1").inner_text() == "Not found"


def test_retry_now_makes_a_waiting_retry_go_at_once(tmp_path: Path, page: Any, shots: Path) -> None:
    """A retry due in hours (full jitter: almost surely) goes within seconds once "Retry now" is pressed."""
    port, admin = free_port(), free_port()
    with http_receiver() as receiver:
        receiver.respond(503, 200)
        config = tmp_path / "router.toml"
        text = router_config(port, admin, f"{receiver.url}/crm").replace(
            'initial_backoff = "50ms", max_backoff = "100ms", max_attempts = 2',
            'initial_backoff = "10h", max_backoff = "10h", max_attempts = 5, max_age = "2d"',
        )
        config.write_text(text)
        with RouterProcess(config, env=ENV) as router:
            event_id = send(port)
            router.wait_log("delivery failed, will retry")
            page.goto(f"http://127.0.0.1:{admin}/console/outputs")
            assert page.locator("#output-crm td").nth(3).inner_text() == "1"
            page.click("#output-crm >> button:has-text('Retry now')")
            page.wait_for_url(re.compile(r"/console/outputs\?done=retried"))
            assert "1 retry(s) of crm made due now." in page.locator(".notice").inner_text()
            wait_for(lambda: delivered_ids(receiver).count(event_id) == 2, timeout=10, what="the retry")
            router.wait_log("delivered after 2 attempts")


def test_the_configuration_page_shows_no_secret(site: Site, page: Any, shots: Path) -> None:
    page.goto(f"{site.base}/config")
    text = page.locator("pre.toml").inner_text()
    html = page.content()
    for secret in (CRM_SECRET, SIGNING_SECRET, KEY, "console-crm-secret"):
        assert secret not in html, secret
    assert '[inputs.connector.api_key]\nenv = "CONSOLE_WEBHOOK_KEY"' in text, text
    assert 'Authorization = "***"' in text and 'signing_secret = "***"' in text, text
    assert 'X-Tenant = "acme"' in text, text
    if site.sqlite:
        shoot(page, shots, "config")


def test_config_text_masks_every_kind_of_secret(tmp_path: Path) -> None:
    """Without a browser: plain-text secrets in each shape the built-in plugins take, a URL's password, the
    admin token and the PostgreSQL dsn; references shown as written."""
    from event_router.config import load_config
    from event_router.plugin_loader import load_plugins

    secrets = {
        "bearer": "plain-bearer-token-1234567",
        "signing": "whsec_cGxhaW4tc2lnbmluZy1zZWNyZXQtOTg3NjU0LWFiY2Q=",
        "password": "url-password-5555",
        "client": "oauth-client-secret-4444",
        "api": "plain-webhook-key-33333",
        "dsn": "dsn-password-2222",
        "token": "admin-token-plain-11111111",
    }
    (tmp_path / "router.toml").write_text(f"""
[router]
spool = {{ backend = "postgresql", dsn = "postgresql://router:{secrets["dsn"]}@127.0.0.1:5432/router" }}
[router.admin]
listen = "127.0.0.1:9187"
token = "{secrets["token"]}"
[inputs.hook]
type = "webhook"
listen = "127.0.0.1:8787"
api_key = "{secrets["api"]}"
[outputs.c]
type = "http"
url = "http://user:{secrets["password"]}@127.0.0.1:9000/hook"
[outputs.a]
type = "http"
url = "http://127.0.0.1:9000/a"
signing_secret = "{secrets["signing"]}"
[outputs.a.auth]
type = "oauth2"
token_url = "http://127.0.0.1:9000/token"
client_id = "router"
client_secret = "{secrets["client"]}"
[outputs.b]
type = "http"
url = "http://127.0.0.1:9000/b"
auth = {{ type = "bearer", token = "{secrets["bearer"]}" }}
[[routes]]
name = "all"
to = ["a", "b", "c"]
""")
    config = load_config(tmp_path / "router.toml", load_plugins(entry_points=False))
    text = config_text(config)
    leaked = [name for name, value in secrets.items() if value in text]
    assert not leaked, text
    assert 'url = "http://user:***@127.0.0.1:9000/hook"' in text, text
    assert 'client_id = "router"' in text and 'token = "***"' in text and 'dsn = "***"' in text, text


def test_cross_site_posts_and_missing_csrf_tokens_are_refused(site: Site, page: Any) -> None:
    """A page of another origin (the receiver's port) posts a form to the console in the same browser: the
    browser marks it cross-site, the console refuses it (403) and nothing is paused. Posts without the CSRF
    token, or with one that is not the cookie's, are refused too; so is /reload from another site, and any
    request whose Host is not the loopback (a rebound name)."""
    admin = site.admin
    evil = (
        f"<!doctype html><form id=f method=post action='http://127.0.0.1:{admin}/console/outputs/crm/pause'>"
        "<input name=csrf value=guessed></form><script>document.getElementById('f').submit()</script>"
    ).encode()

    def serve(request: Recorded, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/html")
        handler.send_header("Content-Length", str(len(evil)))
        handler.end_headers()
        handler.wfile.write(evil)

    page.goto(f"{site.base}/outputs")  # the operator has the console open: its cookies are in the browser
    with http_receiver(serve) as other:
        with page.expect_response(re.compile(r"/console/outputs/crm/pause")) as refused:
            page.goto(f"{other.url}/evil.html")
        assert refused.value.status == 403
        assert "is refused" in refused.value.text()
    assert admin_json(admin, "/outputs")[1]["outputs"]["crm"]["paused"] is False

    # the console's own form, without its token or with a wrong one (same site: no Origin to tell)
    cookie = next(c["value"] for c in page.context.cookies() if c["name"] == "event_router_csrf")
    for form, cookies in ((b"", f"event_router_csrf={cookie}"), (b"csrf=" + b"x" * 43, f"event_router_csrf={cookie}")):
        request = urllib.request.Request(
            f"{site.base}/outputs/crm/pause",
            data=form,
            method="POST",
            headers={"Cookie": cookies, "Content-Type": "application/x-www-form-urlencoded"},
        )
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(request, timeout=10)
        assert failed.value.code == 403
        assert "CSRF token" in orjson.loads(failed.value.read())["error"]
    assert admin_json(admin, "/outputs")[1]["outputs"]["crm"]["paused"] is False

    status, body = admin_json(admin, "/reload", method="POST", headers={"Origin": "http://evil.example"})
    assert status == 403 and "http://evil.example" in body["error"]
    status, body = admin_json(admin, "/outputs", headers={"Host": f"evil.example:{admin}"})
    assert status == 421 and "loopback only" in body["error"]
    assert admin_json(admin, "/healthz", headers={"Host": f"evil.example:{admin}"})[0] == 200


def test_off_the_loopback_without_a_token_the_router_does_not_start(tmp_path: Path) -> None:
    config = tmp_path / "router.toml"
    config.write_text(router_config(free_port(), 0, "http://127.0.0.1:9/crm", listen=f"0.0.0.0:{free_port()}"))
    for command in ("check", "run"):
        done = run_cli(command, "-c", str(config), env=ENV, timeout=30)
        assert done.returncode != 0, done.stdout + done.stderr
        assert "router.admin.token: required: the admin endpoint listens on 0.0.0.0:" in done.stderr, done.stderr


def test_with_a_token_the_console_asks_for_it_and_the_commands_send_it(tmp_path: Path, page: Any, shots: Path) -> None:
    """The login page (a wrong token refused, the right one lets in, logout ends it); the JSON endpoints want
    `Authorization: Bearer`; `event-router reload` and `tap` read the token (secrets mode "admin") and get in."""
    port, admin = free_port(), free_port()
    config = tmp_path / "router.toml"
    config.write_text(
        router_config(port, admin, "http://127.0.0.1:9/crm", admin_extra='token = { env = "CONSOLE_ADMIN_TOKEN" }')
    )
    with RouterProcess(config, env=ENV):
        base = f"http://127.0.0.1:{admin}/console"
        page.goto(f"{base}/dead-letters")
        page.wait_for_url(re.compile(r"/console/login\?next="))
        shoot(page, shots, "login")
        page.fill('input[name="token"]', "not-the-token")
        page.click("button:has-text('Log in')")
        assert "That is not the token." in page.inner_text("main")
        page.fill('input[name="token"]', TOKEN)
        page.click("button:has-text('Log in')")
        page.wait_for_url(f"{base}/dead-letters")
        assert page.locator("h1").inner_text() == "Dead letters"
        page.locator("[data-select-all]").wait_for()
        page.goto(f"{base}/")
        page.locator("[data-tap-status]", has_text="live").wait_for()  # the tap takes the session cookie
        page.click("text=Log out")
        page.wait_for_url(re.compile(r"/console/login"))
        page.goto(f"{base}/outputs")
        page.wait_for_url(re.compile(r"/console/login\?next="))

        assert admin_json(admin, "/outputs")[0] == 401
        assert admin_json(admin, "/outputs", headers={"Authorization": "Bearer nope"})[0] == 401
        assert admin_json(admin, "/reload", method="POST")[0] == 401
        assert admin_json(admin, "/outputs", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as response:
            assert response.status == 200  # Prometheus scrapes without it

        # the commands resolve the token alone: without it they say which one they need
        refused = run_cli("reload", "-c", str(config))
        assert refused.returncode != 0
        assert "router.admin.token: environment variable CONSOLE_ADMIN_TOKEN is not set (tap and reload" in (
            refused.stderr
        ), refused.stderr
        reloaded = run_cli("reload", "-c", str(config), env=ENV)
        assert reloaded.returncode == 0 and reloaded.stdout.strip() == "reloaded", reloaded.stderr
        tap = subprocess.Popen(
            [sys.executable, "-m", "event_router", "tap", "-c", str(config), "--json"],
            env={**os.environ, **ENV},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert tap.stderr is not None
            assert tap.stderr.readline().startswith("tapping "), "the tap was let in with the token"
        finally:
            tap.terminate()
            tap.wait(10)


def test_session_cookies_and_where_the_login_page_sends_people() -> None:
    """Pure parts of console.security: a session is the token's (another token's, a forged or an expired one
    is not), and the login page's `next` never leaves the console (no open redirect)."""
    from event_router.console import security

    now = 1_800_000_000.0
    cookie = security.session_value(TOKEN, int(now))
    assert security.session_valid(TOKEN, cookie, now + 60)
    assert not security.session_valid("another-token-0123456789", cookie, now + 60)
    assert not security.session_valid(TOKEN, cookie, now + security.SESSION_HOURS * 3600 + 1)
    assert not security.session_valid(TOKEN, cookie, now - 60), "issued in the future"
    issued, _, mac = cookie.partition(".")
    assert not security.session_valid(TOKEN, f"{int(issued) + 1}.{mac}", now + 60)
    for forged in (None, "", "x", ".", "abc.def", f"{issued}."):
        assert not security.session_valid(TOKEN, forged, now)
    assert security.bearer_valid(TOKEN, f"Bearer {TOKEN}")
    assert not security.bearer_valid(TOKEN, f"Basic {TOKEN}") and not security.bearer_valid(TOKEN, None)
    for target, expected in (
        ("/console/outputs?x=1", "/console/outputs?x=1"),
        ("https://evil.example/console/", "/console/"),
        ("//evil.example/console", "/console/"),
        ("/console\\@evil.example", "/console/"),
        ("/metrics", "/console/"),
        (None, "/console/"),
    ):
        assert security.safe_next(target) == expected, target
    assert security.host_is_loopback("127.0.0.1:9187") and security.host_is_loopback("[::1]:9187")
    assert security.host_is_loopback("localhost:9187") and security.host_is_loopback("127.0.0.5")
    assert not security.host_is_loopback("evil.example:9187") and not security.host_is_loopback(None)
    assert not security.host_is_loopback("127.0.0.1.evil.example:9187")


def test_a_trace_says_a_delivery_waits_behind_its_ordering_key() -> None:
    """A keyed delivery behind an earlier one of its key has no due time (BLOCKED): the trace page says what
    it waits for, not 'next attempt in inf s'."""
    from event_router.console.events import Trace
    from event_router.core.spool import BLOCKED, PendingDelivery, StoredEvent

    waiting = PendingDelivery(7, "crm", "messages", 0, BLOCKED, None)
    stored = StoredEvent(1, "E1", "transport.messageReceived", None, b"{}", [waiting])
    trace = Trace("E1", "transport.messageReceived", "connector", None, b"{}", [], [stored], [])
    [step] = trace.timeline()
    assert (step.kind, step.output) == ("pending", "crm")
    assert step.text == "not attempted yet, waiting behind an earlier delivery of its ordering key", step.text


def test_a_trace_shows_a_replayed_dead_letter_before_the_delivery_it_was_replayed_as() -> None:
    """A replayed dead letter is gone from the dead letters, but the event page still shows it became one and
    when and by whom it was replayed, between the earlier delivery's attempts and the replayed one's."""
    from event_router.console.events import Attempt, Trace
    from event_router.core.spool import Replay

    replay = Replay(5, "crm", "messages", "retries_exhausted", "answered 503", 2, 110.0, 200.0, "console (::1)", 9)
    attempts = [
        Attempt(100.0, "crm", "messages", 1, "retry", "answered 503", 503),
        Attempt(110.0, "crm", "messages", 2, "retries_exhausted", "answered 503", 503),
        Attempt(201.0, "crm", "messages", 1, "delivered", None, 200),
    ]
    trace = Trace("E1", "transport.messageReceived", "connector", None, b"{}", [], [], [], attempts, [replay])
    steps = [(step.time, step.kind, step.text) for step in trace.timeline()]
    assert [kind for _, kind, _ in steps] == ["retry", "retries_exhausted", "dead_lettered", "replayed", "delivered"]
    assert steps[2][2] == "retries_exhausted after 2 attempt(s): answered 503"
    assert steps[3] == (200.0, "replayed", "dead letter 5 replayed by console (::1) as delivery 9")
