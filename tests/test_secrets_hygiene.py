"""Secrets never appear in logs, errors, `check` output, dead letters, HTTP answers or the admin endpoint.

Every secret the core takes (the webhook's api_key and signing secret, the http output's auth of each kind,
static headers and signing secret, a password in an output's URL, the connector output's API key, an
OAuth2 client secret and the token it earns) holds the marker `CANARY`; Basic credentials are sent base64
encoded, so their encoded form is looked for too. The receivers echo the credentials they were sent in
their error answers, as some error pages do. Each check also asserts what the text must say, so it cannot
pass on an empty or unrelated text. Broker URLs are covered by each broker plugin's own tests.
"""

from __future__ import annotations

import base64
import html
import json
import re
import sqlite3
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from event_router.api.secrets import scrub, url_secrets
from event_router.ops.importer import import_connector_config
from event_router.testing import (
    Recorded,
    RouterProcess,
    assert_check_hides_secrets,
    assert_no_secrets,
    example,
    free_port,
    http_receiver,
    post,
    read_jsonl,
    run_cli,
    wait_for,
)
from event_router.web.signing import WebhookSigner

CANARY = "s3cr3t-CANARY"
WEBHOOK_KEY = f"{CANARY}-webhook-api-key"
#: `whsec_` + base64 of a 24-byte key; the base64 text itself carries the marker
INPUT_SIGNING = "whsec_s3cr3tCANARYwebhookSigningKey012"
OUTPUT_SIGNING = "whsec_s3cr3tCANARYoutputSigningKey0123"
BEARER = f"{CANARY}-bearer-token"
BASIC_PASSWORD = f"{CANARY}-basic-password"
OUTPUT_KEY = f"{CANARY}-output-api-key"
STATIC_HEADER = f"{CANARY}-static-header"
URL_PASSWORD = f"{CANARY}-url-password"
CLIENT_SECRET = f"{CANARY}-oauth-client-secret"
ACCESS_TOKEN = f"{CANARY}-oauth-access-token"
CONNECTOR_KEY = f"{CANARY}-connector-api-key"
#: every Basic credential here is `router:s3cr3t-CANARY...`: base64 of its first 18 bytes starts each one
BASIC_MARKER = base64.b64encode(b"router:s3cr3t-CANA").decode()
#: what no text may contain: the marker every secret holds (the `whsec_` ones without the dash base64 lacks)
SECRETS = ("CANARY", BASIC_MARKER)

ENV = {
    "HYGIENE_WEBHOOK_KEY": WEBHOOK_KEY,
    "HYGIENE_BEARER": BEARER,
    "HYGIENE_STATIC": STATIC_HEADER,
    "HYGIENE_OUTPUT_SIGNING": OUTPUT_SIGNING,
    "HYGIENE_CLIENT_SECRET": CLIENT_SECRET,
}
#: the outputs that fail, and what each one's dead letter must say (the echo shows up masked)
FAILURES = {
    "bearer": ["answered 401", "Authorization: Bearer ***", "credentials: bearer token"],
    "basic": ["answered 500", "Authorization: Basic ***"],
    "apikey": ["answered 400", "x-api-key: ***", "x-static: ***"],
    "userinfo": ["POST http://router:***@127.0.0.1:", "answered 500", "Authorization: Basic ***"],
    "down": ["POST http://router:***@127.0.0.1:", "failed: ClientConnectorError"],
    "oauth": ["answered 403", "Authorization: Bearer ***"],
    "oauthbad": ["rejected client 'router'", "invalid_client", "Authorization: Basic ***"],
    "connector": ["the Connector rejected the API key", "X-API-KEY: ***"],
}


def echo(*names: str, shape: str = "plain") -> Callable[[Recorded], bytes]:
    """An answer body quoting the request's credential headers back."""

    def reply(request: Recorded) -> bytes:
        sent = {k.lower(): v for k, v in request.headers.items()}
        quoted = "; ".join(f"{name}: {sent.get(name.lower())}" for name in names)
        if shape == "connector":
            return orjson.dumps({"error": {"code": "error.connector.unauthorized", "message": f"denied, {quoted}"}})
        if shape == "oauth":
            return orjson.dumps({"error": "invalid_client", "error_description": f"denied, {quoted}"})
        return orjson.dumps({"error": "denied", "echo": quoted})

    return reply


def config_text(port: int, admin: int, rx: dict[str, int], closed: int) -> str:
    """router.toml with every kind of secret; `rx` maps each receiver's name to its port."""
    return f"""
[router]
data_dir = "./var"
log_level = "debug"
shutdown_timeout = "5s"
retry = {{ max_attempts = 2, initial_backoff = "50ms", max_backoff = "100ms" }}
[router.admin]
listen = "127.0.0.1:{admin}"

[inputs.connector]
type = "webhook"
listen = "127.0.0.1:{port}"
api_key = {{ env = "HYGIENE_WEBHOOK_KEY" }}
signing_secrets = [{{ file = "secrets/webhook-signing" }}]

[outputs.archive]
type = "file"
path = "./var/archive.jsonl"

[outputs.bearer]
type = "http"
url = "http://127.0.0.1:{rx["bearer"]}/in"
auth = {{ type = "bearer", token = {{ env = "HYGIENE_BEARER" }} }}

[outputs.basic]
type = "http"
url = "http://127.0.0.1:{rx["basic"]}/in"
auth = {{ type = "basic", username = "router", password = {{ file = "secrets/basic-password" }} }}

[outputs.apikey]
type = "http"
url = "http://127.0.0.1:{rx["apikey"]}/in"
headers = {{ X-Static = {{ env = "HYGIENE_STATIC" }} }}
auth = {{ type = "api_key", key = {{ credential = "output-api-key" }} }}
signing_secret = {{ env = "HYGIENE_OUTPUT_SIGNING" }}

[outputs.userinfo]
type = "http"
url = "http://router:{URL_PASSWORD}@127.0.0.1:{rx["userinfo"]}/in"

[outputs.down]
type = "http"
url = "http://router:{URL_PASSWORD}@127.0.0.1:{closed}/in"

[outputs.oauth]
type = "http"
url = "http://127.0.0.1:{rx["oauth"]}/in"
[outputs.oauth.auth]
type = "oauth2"
token_url = "http://127.0.0.1:{rx["token"]}/token"
client_id = "router"
client_secret = {{ env = "HYGIENE_CLIENT_SECRET" }}

[outputs.oauthbad]
type = "http"
url = "http://127.0.0.1:{rx["oauth"]}/in"
[outputs.oauthbad.auth]
type = "oauth2"
token_url = "http://127.0.0.1:{rx["badtoken"]}/token"
client_id = "router"
client_secret = {{ env = "HYGIENE_CLIENT_SECRET" }}

[outputs.connector]
type = "connector"
base_url = "http://127.0.0.1:{rx["connector"]}"
api_key = "{CONNECTOR_KEY}"
emit_results = true

[[routes]]
name = "archive"
to = ["archive"]

[[routes]]
name = "everywhere"
match = {{ trigger = ["transport.messageReceived"] }}
to = ["bearer", "basic", "apikey", "userinfo", "down", "oauth", "oauthbad"]

[[routes]]
name = "sync"
match = {{ trigger = ["transport.messageReceived"] }}
to = ["connector"]
action = {{ name = "sync" }}
"""


def broken(text: str) -> str:
    """`text` with secrets in the wrong shape, an unknown key beside a secret, and a missing reference."""
    replacements = {
        'signing_secrets = [{ file = "secrets/webhook-signing" }]': (
            f'signing_secrets = "{INPUT_SIGNING}"\nmax_body_bytes = "{CANARY}-misplaced"'
        ),
        'auth = { type = "bearer", token = { env = "HYGIENE_BEARER" } }': (
            f'auth = {{ type = "bearer", token = "{BEARER}", tokn = "{BEARER}" }}'
        ),
        'headers = { X-Static = { env = "HYGIENE_STATIC" } }': f'headers = "X-Static: {STATIC_HEADER}"',
        'password = { file = "secrets/basic-password" }': f'password = ["{BASIC_PASSWORD}"]',
        f'api_key = "{CONNECTOR_KEY}"': f'api_key = {{ env = "HYGIENE_UNSET", value = "{CONNECTOR_KEY}" }}',
        f'url = "http://router:{URL_PASSWORD}@127.0.0.1:': f'url = "ftp://router:{URL_PASSWORD}@127.0.0.1:',
    }
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


#: what `check` and a refused reload must say about `broken()`'s file
BROKEN_ERRORS = [
    "inputs.connector.signing_secrets: must be an array, not a string",
    "inputs.connector.max_body_bytes: must be an integer, not a string",
    "outputs.bearer.auth: unknown key 'tokn'",
    "outputs.apikey.headers: must be a table, not a string",
    "outputs.basic.auth.password: must be a string or a table with one key",
    "outputs.connector.api_key: must be a string or a table with one key",
    "outputs.userinfo.url: 'ftp://router:***@127.0.0.1:",
]


def write_secrets(tmp_path: Path) -> dict[str, str]:
    """The secret files and credentials the config refers to; returns the environment to run with."""
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets/webhook-signing").write_text(INPUT_SIGNING + "\n")
    (tmp_path / "secrets/basic-password").write_text(BASIC_PASSWORD + "\n")
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds/output-api-key").write_text(OUTPUT_KEY)
    return {**ENV, "CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}


def signed(event: dict[str, object], msg_id: str) -> tuple[bytes, dict[str, str]]:
    body = orjson.dumps(event)
    return body, {"x-api-key": WEBHOOK_KEY, **WebhookSigner(INPUT_SIGNING).headers(msg_id, body)}


def spool_dump(db: Path) -> str:
    """Every value of every row of every table in the spool, as text."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        lines = []
        for table in tables:
            for row in conn.execute(f"SELECT * FROM {table}"):
                lines.append(" ".join(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in row))
    return "\n".join(lines)


def dead_letters(db: Path) -> dict[str, str]:
    """output -> error of each dead letter (read while the router runs: SQLite WAL allows it)."""
    if not db.exists():
        return {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return dict(conn.execute("SELECT output, error FROM dead_letters"))


def get(url: str, data: bytes | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_scrub_masks_whole_secrets_and_leaves_tiny_ones() -> None:
    text = "token abcd-efgh, its prefix abcd, and t"
    assert scrub(text, ["abcd", "abcd-efgh", "t"]) == "token ***, its prefix ***, and t"
    assert url_secrets("amqp://user:p%40ss@host/") == ("p%40ss", "p@ss")
    assert url_secrets("http://host/") == ()


@pytest.mark.parametrize(
    "encode",
    [
        lambda s: json.dumps(s)[1:-1],
        lambda s: json.dumps(s)[1:-1].replace("/", "\\/"),  # PHP's json_encode
        lambda s: json.dumps(s, ensure_ascii=False)[1:-1],
        lambda s: urllib.parse.quote(s, safe=""),
        lambda s: re.sub("%[0-9A-F]{2}", lambda m: m.group(0).lower(), urllib.parse.quote(s, safe="")),
        urllib.parse.quote_plus,
        lambda s: urllib.parse.urlencode({"h": s})[2:],
        html.escape,
    ],
    ids=["json", "json_encode", "json_utf8", "percent", "percent_lower", "plus", "urlencode", "html"],
)
def test_scrub_masks_the_encoded_forms_a_server_echoes(encode: Callable[[str], str]) -> None:
    secret = 'se/cr"et\\ CANARY+é=&<'
    echoed = f"you sent {encode(secret)}, which is wrong"
    assert encode(secret) != "CANARY" and "CANARY" in echoed
    assert scrub(echoed, [secret]) == "you sent ***, which is wrong"


def test_import_connector_config_reports_a_bad_url_without_its_password() -> None:
    target = {"url": f"ftp://router:{URL_PASSWORD}@127.0.0.1/in", "headers": {"authorization": BEARER}}
    webhooks = {"enabled": True, "targets": {"crm": target}, "webhooks": [{"triggers": ["*"], "target": "crm"}]}
    result = import_connector_config({"modules": {"webhooks": webhooks}})
    assert_no_secrets(
        "\n".join(result.unsupported),
        SECRETS,
        expect=["'ftp://router:***@127.0.0.1/in' is not an http(s) URL"],
        where="the import report",
    )


def test_check_test_plugins_and_status_print_no_secrets(tmp_path: Path) -> None:
    env = write_secrets(tmp_path)
    config = tmp_path / "router.toml"
    # nothing runs: the ports only have to be well-formed
    rx = {name: free_port() for name in ("bearer", "basic", "apikey", "userinfo", "oauth", "token", "badtoken")}
    rx["connector"] = free_port()
    good = config_text(free_port(), free_port(), rx, closed=free_port())
    config.write_text(good)

    assert_check_hides_secrets(
        config,
        SECRETS,
        expect=["ok: 1 input(s), 9 output(s), 3 route(s)", "outputs.connector.api_key: secret written in plain text"],
        env=env,
    )
    as_json = run_cli("check", "-c", str(config), "--json", env=env)
    assert_no_secrets(
        as_json.stdout + as_json.stderr, SECRETS, expect=['"ok": true', "plain text"], where="check --json"
    )

    config.write_text(broken(config.read_text()))
    refused = run_cli("check", "-c", str(config), env=env)
    assert refused.returncode == 1
    assert_no_secrets(refused.stdout + refused.stderr, SECRETS, expect=BROKEN_ERRORS, where="check of a broken file")

    config.write_text(good)
    events = tmp_path / "events.json"
    events.write_text(json.dumps(example("transport.messageReceived")))
    dry = run_cli("test", "-c", str(config), str(events), env=env)
    assert dry.returncode == 0, dry.stderr
    assert_no_secrets(dry.stdout + dry.stderr, SECRETS, expect=['"url": "http://router:***@127.0.0.1:'], where="test")

    plugins = run_cli("plugins", env={**env, "EVENT_ROUTER_CONFIG": str(config)})
    assert_no_secrets(plugins.stdout + plugins.stderr, SECRETS, expect=["builtin.http"], where="plugins")
    status = run_cli("status", "-c", str(config), env=env)
    # no router ran here: status says so, and shows no secret either
    assert_no_secrets(status.stdout + status.stderr, SECRETS, expect=["error: no spool at "], where="status")


@pytest.mark.slow
def test_a_running_router_shows_no_secrets(tmp_path: Path) -> None:
    env = write_secrets(tmp_path)
    port, admin, closed = free_port(), free_port(), free_port()
    config = tmp_path / "router.toml"
    db = tmp_path / "var/spool.db"
    with (
        http_receiver() as bearer,
        http_receiver() as basic,
        http_receiver() as apikey,
        http_receiver() as userinfo,
        http_receiver() as oauth,
        http_receiver() as token,
        http_receiver() as badtoken,
        http_receiver() as connector,
    ):
        bearer.respond(401)
        bearer.reply = echo("Authorization")
        basic.respond(500)
        basic.reply = echo("Authorization")
        apikey.respond(400)
        apikey.reply = echo("x-api-key", "x-static")
        userinfo.respond(500)
        userinfo.reply = echo("Authorization")
        token.reply = lambda _: orjson.dumps({"access_token": ACCESS_TOKEN, "expires_in": 3600})
        oauth.respond(403)
        oauth.reply = echo("Authorization")
        badtoken.respond(401)
        badtoken.reply = echo("Authorization", shape="oauth")
        connector.respond(401)
        connector.reply = echo("X-API-KEY", shape="connector")
        receivers = {
            "bearer": bearer,
            "basic": basic,
            "apikey": apikey,
            "userinfo": userinfo,
            "oauth": oauth,
            "token": token,
            "badtoken": badtoken,
            "connector": connector,
        }
        good = config_text(port, admin, {name: r.port for name, r in receivers.items()}, closed)
        config.write_text(good)
        url = f"http://127.0.0.1:{port}/events"
        with RouterProcess(config, env=env) as router:
            event = example("transport.messageReceived")
            body, headers = signed(event, "msg_hygiene_1")

            status, answer, answer_headers = post(url, body, {**headers, "x-api-key": "wrong-key"})
            assert status == 401
            assert_no_secrets(
                json.dumps([answer, answer_headers]),
                SECRETS,
                expect=["wrong API key in header x-api-key"],
                where="the webhook's answer to a wrong key",
            )
            status, answer, _ = post(url, body, {"x-api-key": WEBHOOK_KEY})
            assert status == 401
            assert_no_secrets(json.dumps(answer), SECRETS, expect=["webhook signature"], where="unsigned")
            status, answer, _ = post(url, body, headers)
            assert status == 202, answer

            wait_for(lambda: len(dead_letters(db)) == len(FAILURES), timeout=30, what="a dead letter per output")
            wait_for(lambda: len(read_jsonl(tmp_path / "var/archive.jsonl")) == 2, what="the result event archived")
            for output, expected in FAILURES.items():
                error = dead_letters(db)[output]
                assert_no_secrets(error, SECRETS, expect=expected, where=f"the dead letter of {output}")
            # the receivers really were sent the credentials they echoed
            assert bearer.requests[0].headers["Authorization"] == f"Bearer {BEARER}"
            assert oauth.requests[0].headers["Authorization"] == f"Bearer {ACCESS_TOKEN}"
            assert connector.requests[0].headers["X-API-KEY"] == CONNECTOR_KEY

            status, metrics = get(f"http://127.0.0.1:{admin}/metrics")
            assert status == 200
            assert_no_secrets(metrics, SECRETS, expect=["event_router_dead_letters_total{"], where="/metrics")
            status, health = get(f"http://127.0.0.1:{admin}/healthz")
            assert_no_secrets(health, SECRETS, expect=['"alive"'], where="/healthz")
            status, ready = get(f"http://127.0.0.1:{admin}/readyz")
            assert_no_secrets(ready, SECRETS, expect=['"ready":true'], where="/readyz")

            config.write_text(broken(config.read_text()))
            status, reload_answer = get(f"http://127.0.0.1:{admin}/reload", data=b"")
            assert status == 422
            assert_no_secrets(reload_answer, SECRETS, expect=BROKEN_ERRORS, where="POST /reload of a broken file")
            router.reload()
            router.wait_log("reload refused", count=2)  # the first was POST /reload's
            assert router.terminate() == 0

    assert_no_secrets(
        router.logs(),
        SECRETS,
        expect=[
            "webhook listening",
            "delivery dead-lettered",
            "reload refused",
            *BROKEN_ERRORS,
            *[part for parts in FAILURES.values() for part in parts],
        ],
        where="the router's log",
    )
    config.write_text(good)
    for args in (["dlq", "list"], ["dlq", "list", "--json"], ["dlq", "show"], ["status"], ["status", "--json"]):
        result = run_cli(*args, "-c", str(config), env=env)
        assert result.returncode == 0, result.stderr
        expect = ["answered 401"] if args[0] == "dlq" else ["bearer", "permanent", "dead"]
        assert_no_secrets(result.stdout + result.stderr, SECRETS, expect=expect, where=" ".join(args))
    assert_no_secrets(
        spool_dump(db), SECRETS, expect=["transport.messageReceived", "answered 403"], where="the spool's rows"
    )
    # the event, and the connector output's result event, which carries the Connector's (echoing) answer
    archived = read_jsonl(tmp_path / "var/archive.jsonl")
    assert [e["trigger"] for e in archived] == ["transport.messageReceived", "router.actionFailed"]
    assert_no_secrets(json.dumps(archived), SECRETS, expect=["msg_hygiene_1", "X-API-KEY: ***"], where="the archive")
