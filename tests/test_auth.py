"""HTTP auth shared by the outputs (OAuth2 against a local token endpoint), and the `http` output's additions:
auth, body modes (Connector webhook body, CloudEvents), Standard Webhooks signatures, TLS and redirects.
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import orjson
import pytest
from aiohttp import web

from event_router.api.errors import PermanentError, RetryableError
from event_router.app import App
from event_router.config import ConfigErrors, build_config
from event_router.core.spool import DeadLetter, DeadLetterFilter
from event_router.plugin_loader import load_plugins
from event_router.testing import MakeApp, example, free_port, http_receiver, send_webhook, until
from event_router.web.auth import OAuth2ClientCredentials
from event_router.web.signing import sign, verify
from fake_connector import FakeTokenEndpoint
from router_helpers import keyless_webhook

pytestmark = pytest.mark.anyio

SIGNING_SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


# --- OAuth2 client credentials --------------------------------------------------------------------------


class Clock:
    """Time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def idp() -> AsyncIterator[Any]:
    async with FakeTokenEndpoint(expires_in=60) as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def oauth(idp: Any, clock: Clock | None = None, **kw: Any) -> OAuth2ClientCredentials:
    return OAuth2ClientCredentials(
        f"{idp.url}/token", kw.pop("client_id", "router"), kw.pop("secret", "s3cret"), clock=clock or Clock(), **kw
    )


async def test_token_is_cached_and_refreshed_before_expiry(idp, session) -> None:  # type: ignore[no-untyped-def]
    clock = Clock()
    auth = oauth(idp, clock, scope="events", audience="crm")
    assert await auth.headers(session) == {"Authorization": "Bearer tok-1"}
    clock.now += 49  # 11 s left: still good
    assert await auth.token(session) == "tok-1"
    clock.now += 1.5  # 9.5 s left: less than the Connector's 10 s margin
    assert await auth.token(session) == "tok-2"
    assert await auth.token(session) == "tok-2"
    assert len(idp.requests) == 2
    first = idp.requests[0]
    assert first["form"] == {"grant_type": "client_credentials", "scope": "events", "audience": "crm"}
    assert first["client_id"] == "router" and first["content_type"] == "application/x-www-form-urlencoded"


async def test_concurrent_deliveries_share_one_token_request(idp, session) -> None:  # type: ignore[no-untyped-def]
    auth = oauth(idp)
    tokens: list[str] = []

    async def one() -> None:
        tokens.append(await auth.token(session))

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(one)
    assert set(tokens) == {"tok-1"} and len(tokens) == 20
    assert len(idp.requests) == 1


async def test_token_without_expiry_is_used_once(idp, session) -> None:  # type: ignore[no-untyped-def]
    idp.expires_in = None
    auth = oauth(idp)
    assert [await auth.token(session) for _ in range(3)] == ["tok-1", "tok-2", "tok-3"]


async def test_unauthorized_drops_the_cached_token(idp, session) -> None:  # type: ignore[no-untyped-def]
    auth = oauth(idp)
    assert not auth.unauthorized(), "no token yet: nothing to refresh"
    await auth.token(session)
    assert auth.unauthorized()
    assert await auth.token(session) == "tok-2"


async def test_token_endpoint_down_is_retryable(session) -> None:  # type: ignore[no-untyped-def]
    auth = OAuth2ClientCredentials(f"http://127.0.0.1:{free_port()}/token", "router", "s3cret")
    with pytest.raises(RetryableError, match=r"OAuth2 token endpoint http://127\.0\.0\.1:\d+/token unreachable"):
        await auth.token(session)


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_token_endpoint_server_errors_are_retryable(idp, session, status: int) -> None:  # type: ignore[no-untyped-def]
    idp.status = status
    with pytest.raises(RetryableError, match=f"answered {status}"):
        await oauth(idp).token(session)


async def test_rejected_client_is_permanent_with_a_clear_message(idp, session) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PermanentError) as caught:
        await oauth(idp, secret="wrong").token(session)
    assert caught.value.code == "oauth2_client_rejected"
    assert str(caught.value) == (
        f"OAuth2 token endpoint {idp.url}/token rejected client 'router' "
        "(401: invalid_client (unknown client or bad secret)): check client_id, client_secret and scope"
    )
    assert "wrong" not in str(caught.value)


async def test_answer_without_access_token_is_permanent(idp, session) -> None:  # type: ignore[no-untyped-def]
    idp.status = 200  # the fake then answers {"error": ...} with 200
    with pytest.raises(PermanentError, match="answered 200 without an access_token"):
        await oauth(idp).token(session)


async def test_an_endless_token_answer_is_read_up_to_a_bound(session) -> None:  # type: ignore[no-untyped-def]
    streamed = 0

    async def endless(request: web.Request) -> web.StreamResponse:
        nonlocal streamed
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError, OSError):
            while streamed < 256 * 1024 * 1024:
                await response.write(b" " * 65536)
                streamed += 65536
        return response

    app = web.Application()
    app.router.add_post("/token", endless)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        auth = OAuth2ClientCredentials(f"http://127.0.0.1:{runner.addresses[0][1]}/token", "router", "s3cret")
        with anyio.fail_after(10), pytest.raises(PermanentError, match="answered 200 without an access_token"):
            await auth.token(session)
    finally:
        await runner.cleanup()
    assert streamed < 32 * 1024 * 1024


# --- the http output: auth ------------------------------------------------------------------------------


def http_toml(tmp: Path, port: int, url: str, output_extra: str = "", route_extra: str = "") -> str:
    return (
        keyless_webhook(tmp, port, validation="warn")
        + f"""
[outputs.crm]
type = "http"
url = "{url}"
timeout = "3s"
retry = {{ initial_backoff = "20ms", max_backoff = "100ms", max_attempts = 3 }}
{output_extra}
[[routes]]
name = "all"
to = "crm"
{route_extra}
"""
    )


def dead_letters(app: App) -> list[DeadLetter]:
    return app.spool.dead_letters(DeadLetterFilter(output="crm"))


@pytest.mark.parametrize(
    ("auth", "header", "value"),
    [
        ('{ type = "api_key", key = { env = "T_AUTH_SECRET" } }', "x-api-key", "sesame"),
        ('{ type = "api_key", key = { env = "T_AUTH_SECRET" }, header = "X-Token" }', "X-Token", "sesame"),
        ('{ type = "bearer", token = { env = "T_AUTH_SECRET" } }', "Authorization", "Bearer sesame"),
        (
            '{ type = "basic", username = "router", password = { env = "T_AUTH_SECRET" } }',
            "Authorization",
            "Basic " + base64.b64encode(b"router:sesame").decode(),
        ),
    ],
)
async def test_http_output_static_auth(
    make_app: MakeApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, auth: str, header: str, value: str
) -> None:
    monkeypatch.setenv("T_AUTH_SECRET", "sesame")
    port = free_port()
    with http_receiver() as rx:
        # a static header of the same name loses: the auth header is set last, as the Connector does
        extra = f'auth = {auth}\nheaders = {{ "{header}" = "static", X-Other = "kept" }}'
        async with make_app(http_toml(tmp_path, port, rx.url + "/in", extra)) as app:
            await send_webhook(port, example("transport.messageReceived"))
            await until(lambda: app.stats.get("deliveries", outcome="delivered"), "the delivery")
        (request,) = rx.requests
    assert request.headers[header] == value
    assert request.headers["X-Other"] == "kept"


async def test_a_static_basic_header_is_masked_whole_encoded_and_decoded(make_app: MakeApp, tmp_path: Path) -> None:
    credentials = base64.b64encode(b"router:pass-word-1").decode()
    port = free_port()
    with http_receiver() as rx:
        rx.respond(400)
        rx.reply = lambda r: f"got {r.headers['Authorization']}, {credentials} = router:pass-word-1".encode()
        extra = f'headers = {{ Authorization = "Basic {credentials}" }}'
        async with make_app(http_toml(tmp_path, port, rx.url + "/in", extra)) as app:
            await send_webhook(port, example("transport.messageReceived"))
            await until(lambda: dead_letters(app), "the dead letter")
            (letter,) = dead_letters(app)
    assert (letter.error or "").endswith("answered 400: got ***, *** = ***"), letter.error


async def test_http_output_oauth2_caches_and_refreshes_on_401(make_app: MakeApp, idp: Any, tmp_path: Path) -> None:
    port = free_port()
    with http_receiver() as rx:
        extra = (
            f'auth = {{ type = "oauth2", token_url = "{idp.url}/token", client_id = "router",'
            ' client_secret = "s3cret", scope = "events" }'
        )
        async with make_app(http_toml(tmp_path, port, rx.url + "/in", extra)) as app:
            for _ in range(3):
                await send_webhook(port, example("transport.messageReceived"))
            await until(lambda: app.stats.get("deliveries", outcome="delivered") == 3, "three deliveries")
            assert len(idp.requests) == 1
            rx.respond(401, 200)  # the receiver no longer takes the token: fetch a new one and send again
            await send_webhook(port, example("transport.messageReceived"))
            await until(lambda: app.stats.get("deliveries", outcome="delivered") == 4, "the fourth")
            assert app.stats.get("deliveries", outcome="retry") == 0, "the refresh happens within the attempt"
    assert len(idp.requests) == 2
    assert [r.headers["Authorization"] for r in rx.requests] == ["Bearer tok-1"] * 4 + ["Bearer tok-2"]


async def test_http_output_token_failures(make_app: MakeApp, idp: Any, tmp_path: Path) -> None:
    port = free_port()
    with http_receiver() as rx:
        extra = (
            f'auth = {{ type = "oauth2", token_url = "{idp.url}/token", client_id = "router",'
            ' client_secret = "wrong" }'
        )
        idp.status = 503
        # enough attempts that the retries cannot run out before the token endpoint is back
        route_retry = "retry = { max_attempts = 1000 }"
        async with make_app(http_toml(tmp_path, port, rx.url + "/in", extra, route_retry)) as app:
            await send_webhook(port, example("transport.messageReceived"))
            await until(lambda: app.stats.get("deliveries", outcome="retry") >= 1, "a retry")
            idp.status = None  # back, but the secret is wrong: permanent
            await until(lambda: dead_letters(app), "the dead letter")
            (letter,) = dead_letters(app)
    assert rx.requests == []
    assert letter.reason == "permanent"
    assert "rejected client 'router' (401: invalid_client" in (letter.error or "")
    assert (letter.error or "").endswith("[oauth2_client_rejected]")


def test_auth_config_errors(tmp_path: Path) -> None:
    base = http_toml(tmp_path, 8787, "http://127.0.0.1:9/in")
    cases = {
        'auth = { type = "api_key" }': "outputs.crm.auth: 'key' is required but missing",
        'auth = { type = "bearer", token = "t", header = "X" }': (
            "outputs.crm.auth.header: does not apply to auth type 'bearer' (its keys: token)"
        ),
        'auth = { type = "oauth2", token_url = "ftp://x", client_id = "a", client_secret = "b" }': (
            "outputs.crm.auth.token_url: 'ftp://x' does not match"
        ),
        'auth = { type = "kerberos" }': "outputs.crm.auth.type: 'kerberos' is not one of",
        'signing_secret = "not-whsec"': "outputs.crm.signing_secret: a signing secret starts with 'whsec_'",
        'signing_secret = "whsec_c2hvcnQ="': "the key is 5 bytes; Standard Webhooks asks for at least 24",
        'ca_file = "nope.pem"': "outputs.crm.ca_file: ",
        'ca_file = "x.pem"\ntls_verify = false': "a CA file makes no sense with tls_verify = false",
        'body = "xml"': "outputs.crm.body: 'xml' is not one of 'event', 'webhook', 'cloudevents'",
    }
    (tmp_path / "x.pem").write_text("")
    registry = load_plugins()
    import tomllib

    for extra, expected in cases.items():
        text = base.replace('timeout = "3s"', f'timeout = "3s"\n{extra}')
        with pytest.raises(ConfigErrors) as caught:
            build_config(tomllib.loads(text), path=tmp_path / "router.toml", registry=registry)
        assert any(expected in str(e) for e in caught.value.errors), (extra, [str(e) for e in caught.value.errors])


def test_url_credentials_exclude_other_credentials(tmp_path: Path) -> None:
    import tomllib

    registry = load_plugins()
    base = http_toml(tmp_path, 8787, "http://user:pw-CANARY@127.0.0.1:9/in")
    assert build_config(tomllib.loads(base), path=tmp_path / "router.toml", registry=registry).outputs["crm"]
    cases = {
        'auth = { type = "bearer", token = "t0ken" }': "outputs.crm.auth: the url carries credentials",
        'headers = { Authorization = "Basic eDp5" }': "outputs.crm.headers: the url carries credentials",
    }
    for extra, expected in cases.items():
        text = base.replace('timeout = "3s"', f'timeout = "3s"\n{extra}')
        with pytest.raises(ConfigErrors) as caught:
            build_config(tomllib.loads(text), path=tmp_path / "router.toml", registry=registry)
        messages = [str(e) for e in caught.value.errors]
        assert any(expected in m for m in messages), (extra, messages)
        assert not any("CANARY" in m for m in messages)


# --- the http output: bodies ----------------------------------------------------------------------------


async def deliver_all(
    make_app: MakeApp,
    tmp_path: Path,
    extra: str,
    events: list[dict[str, Any]],
    route_extra: str = "",
    headers: dict[str, str] | None = None,
) -> tuple[list[Any], list[str]]:
    port = free_port()
    with http_receiver() as rx:
        async with make_app(http_toml(tmp_path, port, rx.url + "/in/{{trigger}}", extra, route_extra)) as app:
            ids = [await send_webhook(port, e, headers) for e in events]
            await until(lambda: app.stats.get("deliveries", outcome="delivered") == len(events), "the deliveries")
        return sorted(rx.requests, key=lambda r: ids.index(r.headers["Idempotency-Key"])), ids


async def test_webhook_body_is_what_the_connector_sends(make_app: MakeApp, tmp_path: Path) -> None:
    mail = example("transport.messageReceived")
    started = {"trigger": "runtime.modulesStarted"}  # the webhook form: no data key
    requests, _ = await deliver_all(
        make_app, tmp_path, 'body = "webhook"', [mail, started], headers={"x-correlation-id": "c0ffee"}
    )
    assert requests[0].json() == {"data": mail["data"], "trigger": "transport.messageReceived"}
    assert requests[0].body.startswith(b'{"data":')  # the Connector's key order
    assert requests[1].json() == {"trigger": "runtime.modulesStarted"}
    assert requests[0].path == "/in/transport.messageReceived"
    assert all(r.headers["x-correlation-id"] == "c0ffee" for r in requests)
    assert requests[0].headers["Content-Type"] == "application/json"


async def test_cloudevents_structured(make_app: MakeApp, tmp_path: Path) -> None:
    mail = example("transport.messageReceived")
    (request,), (event_id,) = await deliver_all(make_app, tmp_path, 'body = "cloudevents"', [mail])
    assert request.headers["Content-Type"] == "application/cloudevents+json"
    body = request.json()
    received_at = body.pop("time")
    assert body == {
        "specversion": "1.0",
        "id": event_id,
        "source": "event-router/connector",
        "type": "transport.messageReceived",
        "datacontenttype": "application/json",
        "data": mail["data"],
    }
    assert received_at.endswith("Z")


async def test_cloudevents_binary_and_reshape(make_app: MakeApp, tmp_path: Path) -> None:
    mail = example("transport.messageReceived")
    reshape = 'reshape = { subject = "data.content.subject", note = "from {{ data.createdBy }}" }'
    requests, ids = await deliver_all(
        make_app, tmp_path, 'body = "cloudevents-binary"', [mail, {"trigger": "runtime.modulesStarted"}], reshape
    )
    first, second = requests
    assert first.headers["ce-specversion"] == "1.0" and first.headers["ce-id"] == ids[0]
    assert first.headers["ce-type"] == "transport.messageReceived"
    assert first.headers["ce-source"] == "event-router/connector"
    assert first.headers["ce-time"].endswith("Z")
    assert first.headers["Content-Type"] == "application/json"
    assert first.json() == {"subject": "New postal address", "note": f"from {mail['data']['createdBy']}"}
    assert second.headers["ce-type"] == "runtime.modulesStarted"
    assert second.json() == {"subject": None, "note": "from "}  # the route's reshape of an event without data


async def test_cloudevents_binary_without_data_has_an_empty_body(make_app: MakeApp, tmp_path: Path) -> None:
    (request,), _ = await deliver_all(
        make_app, tmp_path, 'body = "cloudevents-binary"', [{"trigger": "runtime.modulesStarted"}]
    )
    assert request.body == b""
    assert "Content-Type" not in request.headers or request.headers["Content-Type"] != "application/json"
    assert request.headers["ce-type"] == "runtime.modulesStarted"


async def test_standard_webhooks_signature(make_app: MakeApp, tmp_path: Path) -> None:
    mail = example("transport.messageReceived")
    (request,), (event_id,) = await deliver_all(make_app, tmp_path, f'signing_secret = "{SIGNING_SECRET}"', [mail])
    headers = {k.lower(): v for k, v in request.headers.items()}
    assert headers["webhook-id"] == event_id
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    assert headers["webhook-signature"].startswith("v1,")
    assert verify(SIGNING_SECRET, headers, request.body)
    assert not verify(SIGNING_SECRET, headers, request.body + b" ")
    other = "whsec_" + base64.b64encode(b"another key, 24 bytes or more").decode()
    assert not verify(other, headers, request.body)
    assert not verify(SIGNING_SECRET, headers, request.body, now=time.time() + 3600), "too old"


def test_signature_matches_the_standard_webhooks_example() -> None:
    # the example from the Standard Webhooks specification (secret, id, timestamp, payload -> signature)
    key = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == expected


async def test_dot_segments_from_event_data_are_refused(make_app: MakeApp, tmp_path: Path) -> None:
    port = free_port()
    mail = example("transport.messageReceived")
    mail["data"]["id"] = ".."
    with http_receiver() as rx:
        async with make_app(http_toml(tmp_path, port, rx.url + "/m/{{data.id}}/x")) as app:
            await send_webhook(port, mail)
            await until(lambda: dead_letters(app), "the dead letter")
            (letter,) = dead_letters(app)
        assert rx.requests == []
    assert "'.' or '..' path segment" in (letter.error or "")


# --- the http output: TLS and redirects -----------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def tls_server(certificate: tuple[Path, Path], seen: list[bytes]) -> tuple[web.AppRunner, int]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)

    async def handle(request: web.Request) -> web.Response:
        seen.append(await request.read())
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/in", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    return runner, port


async def test_tls_verified_by_default_with_ca_file_or_off(
    make_app: MakeApp, tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    seen: list[bytes] = []
    runner, tls_port = await tls_server(certificate, seen)
    url = f"https://127.0.0.1:{tls_port}/in"
    try:
        port = free_port()
        async with make_app(http_toml(tmp_path / "default", port, url)) as app:
            await send_webhook(port, example("transport.messageReceived"))
            # retried (3 attempts, 20-100 ms apart), then a dead letter: the end state, not a moment between
            await until(lambda: dead_letters(app), "the dead letter of a refused certificate")
            (letter,) = dead_letters(app)
            assert "certificate" in (letter.error or ""), letter.error
            assert app.stats.get("deliveries", outcome="retry") >= 1
            assert seen == [] and app.spool.depth == 0
        for extra in (f'ca_file = "{certificate[0]}"', "tls_verify = false"):
            port = free_port()
            async with make_app(http_toml(tmp_path / str(len(seen)), port, url, extra)) as app:
                await send_webhook(port, example("transport.messageReceived"))
                await until(lambda: app.stats.get("deliveries", outcome="delivered"), f"delivery with {extra}")
        assert len(seen) == 2
    finally:
        await runner.cleanup()


async def test_redirects_only_when_asked(make_app: MakeApp, tmp_path: Path) -> None:
    seen: list[tuple[str, str, bytes]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append((request.method, request.path, await request.read()))
        if request.path == "/old":
            return web.Response(status=307, headers={"Location": "/new"})
        return web.json_response({"ok": True})

    app_ = web.Application()
    app_.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app_)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        port = free_port()
        async with make_app(http_toml(tmp_path / "a", port, url + "/old")) as app:
            await send_webhook(port, example("transport.messageReceived"))
            await until(lambda: dead_letters(app), "the dead letter")
            (letter,) = dead_letters(app)
        assert "answered 307" in (letter.error or "") and [path for _, path, _ in seen] == ["/old"]
        port = free_port()
        async with make_app(http_toml(tmp_path / "b", port, url + "/old", "follow_redirects = true")) as app:
            await send_webhook(port, example("transport.messageReceived"))
            await until(lambda: app.stats.get("deliveries", outcome="delivered"), "the delivery")
    finally:
        await runner.cleanup()
    method, path, body = seen[-1]
    assert (method, path) == ("POST", "/new") and seen[-2][2] == body
    assert orjson.loads(body)["trigger"] == "transport.messageReceived"
