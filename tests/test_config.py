"""router.toml loading: valid configs build, broken ones fail with the exact key path and a clear message."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import orjson
import pytest

from event_router.api.durations import parse_duration
from event_router.api.ratelimit import RateLimit
from event_router.api.secrets import Secret, secret_schema
from event_router.config import ConfigErrors, build_config, load_config
from event_router.config.secrets import resolve_table
from event_router.plugin_loader import load_plugins
from event_router.testing import run_cli

CRM = 'url = "http://127.0.0.1:9000/hooks/{{trigger}}"'
BASE = """
[router]
data_dir = "./var"
[inputs.connector]
type = "webhook"
listen = "127.0.0.1:8787"
[outputs.archive]
type = "file"
path = "./var/events.jsonl"
[outputs.crm]
type = "http"
url = "http://127.0.0.1:9000/hooks/{{trigger}}"
[[routes]]
name = "messages to CRM"
match = { trigger = ["transport.messageReceived"], "data.content.@type" = ["Mail"] }
to = ["crm", "archive"]
"""


@pytest.fixture(scope="module")
def registry():  # type: ignore[no-untyped-def]
    return load_plugins(entry_points=False)


def build(text: str, tmp_path: Path, registry):  # type: ignore[no-untyped-def]
    return build_config(tomllib.loads(text), path=tmp_path / "router.toml", registry=registry)


def errors_of(text: str, tmp_path: Path, registry) -> list[str]:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigErrors) as info:
        build(text, tmp_path, registry)
    return [str(e) for e in info.value.errors]


def test_valid_config_builds(tmp_path: Path, registry) -> None:  # type: ignore[no-untyped-def]
    config = build(BASE, tmp_path, registry)
    assert set(config.inputs) == {"connector"}
    assert config.inputs["connector"].validation == "strict"
    assert config.outputs["crm"].type == "http"
    assert config.outputs["crm"].concurrency == 8
    assert config.routes[0].to == ("crm", "archive")
    assert config.data_dir == tmp_path / "var"
    assert config.unmatched == "drop"


def test_shipped_router_toml_is_valid(monkeypatch: pytest.MonkeyPatch, registry) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("ROUTER_WEBHOOK_API_KEY", "test-key")
    root = Path(__file__).resolve().parents[1]
    config = load_config(root / "router.toml", registry)
    assert config.inputs and config.outputs and config.routes


def test_shipped_router_toml_delivery_controls_are_valid(monkeypatch: pytest.MonkeyPatch, registry) -> None:  # type: ignore[no-untyped-def]
    """router.toml shows `rate_limit`, `retry_on`, `permanent_on` and `ordering_key` commented out: uncommented,
    they load."""
    monkeypatch.setenv("ROUTER_WEBHOOK_API_KEY", "test-key")
    root = Path(__file__).resolve().parents[1]
    keys = ("rate_limit", "retry_on", "permanent_on", "ordering_key")
    text = re.sub(rf"^# ({'|'.join(keys)}) =", r"\1 =", (root / "router.toml").read_text(), flags=re.MULTILINE)
    config = build_config(tomllib.loads(text), path=root / "router.toml", registry=registry)
    crm = config.outputs["crm"]
    assert crm.rate_limit == RateLimit(50.0, 10.0)
    assert crm.plugin.statuses.retryable(404) and not crm.plugin.statuses.retryable(501)  # type: ignore[attr-defined]
    assert crm.ordering_key is not None and config.routes[0].ordering["crm"] is crm.ordering_key


BROKEN = [
    pytest.param(
        BASE.replace('type = "webhook"', 'type = "smtp"'),
        "router.toml: inputs.connector.type: unknown input type 'smtp' (installed: connector, webhook;",
        id="unknown-input-type",
    ),
    pytest.param(
        BASE.replace('type = "file"', 'type = "ftp"'),
        "router.toml: outputs.archive.type: unknown output type 'ftp'",
        id="unknown-output-type",
    ),
    pytest.param(
        BASE.replace('to = ["crm", "archive"]', 'to = ["crm", "archiv"]'),
        "router.toml: routes[0].to[1]: no output named 'archiv' (outputs: archive, crm)",
        id="route-to-unknown-output",
    ),
    pytest.param(
        BASE.replace('url = "http://127.0.0.1:9000/hooks/{{trigger}}"', 'url = "ftp://x"'),
        "router.toml: outputs.crm.url: 'ftp://x' does not match '^https?://' (plugin http)",
        id="http-url-scheme",
    ),
    pytest.param(
        BASE + "[outputs.crm.retry]\nmax_attempts = 0\n",
        "router.toml: outputs.crm.retry.max_attempts: 0 is less than the minimum of 1",
        id="retry-max-attempts",
    ),
    pytest.param(
        BASE.replace('listen = "127.0.0.1:8787"', 'listen = "localhost"'),
        "router.toml: inputs.connector.listen: 'localhost' is not host:port (e.g. 127.0.0.1:8787) (plugin webhook)",
        id="webhook-listen",
    ),
    pytest.param(
        BASE.replace("[router]", "[router]\ncolour = 'blue'"),
        "router.toml: router: unknown key 'colour' (allowed: admin, announced_retention, data_dir, log_level, "
        "max_pending_events",
        id="unknown-router-key",
    ),
    pytest.param(
        BASE.replace('path = "./var/events.jsonl"', 'path = "./var/events.jsonl"\nrotate = true'),
        "router.toml: outputs.archive: unknown key 'rotate' "
        "(allowed: breaker, concurrency, fsync, max_pending, mode, ordering_key, path, rate_limit, retry, timeout, "
        "type) (plugin file)",
        id="unknown-plugin-key",
    ),
    pytest.param(
        BASE.replace('path = "./var/events.jsonl"', 'path = "./var/events.jsonl"\ntimout = 5'),
        "router.toml: outputs.archive: unknown key 'timout'; did you mean 'timeout'? "
        "(allowed: breaker, concurrency, fsync, max_pending, mode, ordering_key, path, rate_limit, retry, timeout, "
        "type) (plugin file)",
        id="core-output-key-typo",
    ),
    pytest.param(
        BASE.replace('path = "./var/events.jsonl"', 'path = "./var/events.jsonl"\nmax_pending = 0'),
        "router.toml: outputs.archive.max_pending: 0 is less than the minimum of 1",
        id="output-max-pending-zero",
    ),
    pytest.param(
        BASE.replace('path = "./var/events.jsonl"', 'path = "./var/events.jsonl"\nmax_pending = "lots"'),
        "router.toml: outputs.archive.max_pending: must be an integer, not a string",
        id="output-max-pending-type",
    ),
    pytest.param(
        BASE.replace('path = "./var/events.jsonl"', 'path = "./var/events.jsonl"\nmax_pendng = 10'),
        "router.toml: outputs.archive: unknown key 'max_pendng'; did you mean 'max_pending'?",
        id="output-max-pending-typo",
    ),
    pytest.param(
        BASE.replace('listen = "127.0.0.1:8787"', 'listen = "127.0.0.1:8787"\nvalidaton = "warn"'),
        "router.toml: inputs.connector: unknown key 'validaton'; did you mean 'validation'? (allowed: allow_networks,",
        id="core-input-key-typo",
    ),
    pytest.param(
        BASE.replace('listen = "127.0.0.1:8787"', 'listen = "127.0.0.1:8787"\nvalidaton = "warn"'),
        "type, unknown_triggers, validation) (plugin webhook)",
        id="core-input-keys-listed",
    ),
    pytest.param(
        # `processes` is still in the webhook's schema, only to be refused with its own message: not "allowed"
        BASE.replace('listen = "127.0.0.1:8787"', 'listen = "127.0.0.1:8787"\nvalidaton = "warn"'),
        "(allowed: allow_networks, api_key, api_key_header, body_timeout, header_timeout, listen, max_body_bytes, "
        "max_connections, path, rate_limit, signature_tolerance, signing_secrets, socket, tls, type, unknown_triggers, "
        "validation) (plugin webhook)",
        id="removed-key-not-listed",
    ),
    pytest.param(
        BASE.replace('listen = "127.0.0.1:8787"', 'listen = "127.0.0.1:8787"\nproceses = 2'),
        "router.toml: inputs.connector: unknown key 'proceses' (allowed: allow_networks,",
        id="removed-key-not-suggested",
    ),
    pytest.param(
        BASE.replace('path = "./var/events.jsonl"', 'path = "./var/events.jsonl"\nconcurency = 2\nfsnyc = true'),
        "router.toml: outputs.archive: unknown keys 'concurency', 'fsnyc'; did you mean 'concurrency' for "
        "'concurency', 'fsync' for 'fsnyc'? (allowed: breaker, concurrency, fsync",
        id="several-key-typos",
    ),
    pytest.param(
        BASE.replace("[router]", "[router]\nlog_levl = 'debug'"),
        "router.toml: router: unknown key 'log_levl'; did you mean 'log_level'? (allowed: admin, "
        "announced_retention, data_dir,",
        id="router-key-typo",
    ),
    pytest.param(
        BASE.replace('listen = "127.0.0.1:8787"', 'listen = "127.0.0.1:8787"\nvalidation = "lenient"'),
        "router.toml: inputs.connector.validation: 'lenient' is not one of 'strict', 'warn', 'off'",
        id="validation-enum",
    ),
    pytest.param(
        BASE + '[[routes]]\nname = "messages to CRM"\nto = "archive"\n',
        "router.toml: routes[1].name: route name 'messages to CRM' is already used by routes[0]",
        id="duplicate-route-name",
    ),
    pytest.param(
        BASE + '[[routes]]\nname = "x"\n',
        "router.toml: routes[1]: 'to' is required but missing",
        id="route-without-to",
    ),
    pytest.param(
        BASE.replace('["Mail"]', '[{ prefx = "Ma" }]'),
        "router.toml: routes[0].match.data.content.@type[0]: unknown operator 'prefx'",
        id="unknown-match-operator",
    ),
    pytest.param(
        BASE.replace('url = "http://127.0.0.1:9000/hooks/{{trigger}}"', 'url = "http://{{data.host}}/x"'),
        "router.toml: outputs.crm.url: the host part of the URL cannot contain a template",
        id="template-in-host",
    ),
    pytest.param(
        BASE.replace('path = "./var/events.jsonl"', 'path = "./var/{{trigger}}.jsonl"'),
        "router.toml: outputs.archive.path: templates are not allowed in a file path",
        id="template-in-file-path",
    ),
    pytest.param(
        BASE.replace('listen = "127.0.0.1:8787"', 'listen = "127.0.0.1:8787"\napi_key = { env = "NO_SUCH_VAR_X1" }'),
        "router.toml: inputs.connector.api_key: environment variable NO_SUCH_VAR_X1 is not set (plugin webhook)",
        id="secret-env-missing",
    ),
    pytest.param(
        BASE.replace('listen = "127.0.0.1:8787"', 'listen = "127.0.0.1:8787"\napi_key = { vault = "x" }'),
        "router.toml: inputs.connector.api_key: must be a string or a table with one key: env, file or credential",
        id="secret-bad-reference",
    ),
    pytest.param(
        BASE.replace("[router]", '[router]\nshutdown_timeout = "ten seconds"'),
        "router.toml: router.shutdown_timeout: 'ten seconds' is not a duration",
        id="bad-duration",
    ),
    pytest.param(
        BASE.replace("[inputs.connector]", '[inputs."my input"]'),
        "'my input' is not a valid name",
        id="bad-input-name",
    ),
    pytest.param(
        BASE.replace('type = "webhook"\n', ""),
        "router.toml: inputs.connector: 'type' is required but missing",
        id="input-without-type",
    ),
    pytest.param(
        BASE.replace(CRM, CRM + "\nretry_on = [404, 200]"),
        "router.toml: outputs.crm.retry_on[1]: 200 is not an HTTP error status: give one from 400 to 599, or "
        '"4xx" or "5xx" for a whole class (plugin http)',
        id="retry-on-not-an-error-status",
    ),
    pytest.param(
        BASE.replace(CRM, CRM + '\npermanent_on = ["6xx"]'),
        "router.toml: outputs.crm.permanent_on[0]: '6xx' is not an HTTP error status",
        id="permanent-on-unknown-class",
    ),
    pytest.param(
        BASE.replace(CRM, CRM + "\nretry_on = 404"),
        "router.toml: outputs.crm.retry_on: must be an array, not an integer (plugin http)",
        id="retry-on-not-a-list",
    ),
    pytest.param(
        BASE.replace(CRM, CRM + "\nretry_on = [404, 503]\npermanent_on = [501, 503]"),
        "router.toml: outputs.crm.permanent_on[1]: 503 is in retry_on too: name it in one list (an exact status "
        'wins over a class, so retry_on = ["5xx"] with permanent_on = [501] is fine) (plugin http)',
        id="status-in-both-lists",
    ),
    pytest.param(
        BASE.replace(CRM, CRM + '\nretry_on = ["4xx"]\npermanent_on = ["4xx"]'),
        'router.toml: outputs.crm.permanent_on[0]: "4xx" is in retry_on too',
        id="class-in-both-lists",
    ),
    pytest.param(
        BASE.replace('path = "./var/events.jsonl"', 'path = "./var/events.jsonl"\nretry_on = [404]'),
        "router.toml: outputs.archive: unknown key 'retry_on'",
        id="retry-on-for-an-output-that-is-not-http",
    ),
    pytest.param(
        BASE.replace(CRM, CRM + "\nrate_limit = { per_second = 0 }"),
        "router.toml: outputs.crm.rate_limit.per_second: 0 is less than or equal to the minimum of 0",
        id="rate-limit-zero",
    ),
    pytest.param(
        BASE.replace(CRM, CRM + "\nrate_limit = { per_second = 5, burst = 0.5 }"),
        "router.toml: outputs.crm.rate_limit.burst: 0.5 is less than the minimum of 1",
        id="rate-limit-burst-below-one",
    ),
    pytest.param(
        BASE.replace(CRM, CRM + '\nrate_limit = "50/s"'),
        "router.toml: outputs.crm.rate_limit: must be a table, not a string",
        id="rate-limit-not-a-table",
    ),
    pytest.param(
        BASE.replace(CRM, CRM + "\nrate_limit = { per_sec = 5 }"),
        "router.toml: outputs.crm.rate_limit: unknown key 'per_sec'; did you mean 'per_second'?",
        id="rate-limit-key-typo",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BROKEN)
def test_broken_config_names_the_key(text: str, expected: str, tmp_path: Path, registry) -> None:  # type: ignore[no-untyped-def]
    messages = errors_of(text, tmp_path, registry)
    assert any(expected in m for m in messages), messages


def test_all_errors_are_reported_at_once(tmp_path: Path, registry) -> None:  # type: ignore[no-untyped-def]
    text = BASE.replace('type = "webhook"', 'type = "smtp"').replace('to = ["crm", "archive"]', 'to = ["nope"]')
    messages = errors_of(text, tmp_path, registry)
    assert len(messages) == 2, messages


def test_not_toml(tmp_path: Path, registry) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "router.toml"
    path.write_text("[router\n")
    with pytest.raises(ConfigErrors, match=r"router.toml: not valid TOML: .*line 1"):
        load_config(path, registry)


def test_missing_file(tmp_path: Path, registry) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigErrors, match="cannot read"):
        load_config(tmp_path / "absent.toml", registry)


def test_secrets_resolve_and_stay_masked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("ROUTER_KEY_T", "s3cret-env")
    (tmp_path / "key.txt").write_text("s3cret-file\n")
    text = BASE.replace('listen = "127.0.0.1:8787"', 'listen = "127.0.0.1:8787"\napi_key = { env = "ROUTER_KEY_T" }')
    text = text.replace(
        'url = "http://127.0.0.1:9000/hooks/{{trigger}}"',
        'url = "http://127.0.0.1:9000/x"\nheaders = { Authorization = { file = "key.txt" } }',
    )
    config = build(text, tmp_path, registry)
    plugin = config.inputs["connector"].plugin
    assert plugin.api_key == b"s3cret-env"
    header = config.outputs["crm"].plugin.headers["Authorization"]
    assert header == "s3cret-file"
    assert config.warnings == ()
    assert "s3cret" not in repr(Secret("s3cret-env"))


def test_plain_secret_warns(tmp_path: Path, registry) -> None:  # type: ignore[no-untyped-def]
    text = BASE.replace('listen = "127.0.0.1:8787"', 'listen = "127.0.0.1:8787"\napi_key = "plain"')
    config = build(text, tmp_path, registry)
    assert any("inputs.connector.api_key: secret written in plain text" in w for w in config.warnings)
    assert all('plain"' not in w for w in config.warnings)


@pytest.mark.parametrize(
    ("url", "warned"),
    [
        ("amqp://rabbitmq:5672/", False),
        ("amqp://rabbitmq:5672/?heartbeat=30", False),
        ("mqtt://router@broker:1883", False),  # a user name alone is no secret
        ("redis://redis:6379/0", False),
        ("amqp://router:pw@rabbitmq:5672/", True),
        ("redis://:pw@redis:6379/0", True),
        ("redis://redis:6379/0?password=pw", True),
        ("rediss://redis/0?ssl_cert_reqs=none&auth_token=pw", True),
        ("amqp://router:pw@[::1", True),  # cannot be parsed: it may hold one anywhere
    ],
)
def test_a_url_secret_written_plain_warns_only_when_it_holds_credentials(
    url: str, warned: bool, tmp_path: Path
) -> None:
    """A broker URL without credentials (what the importer writes for `amqp://rabbitmq:5672`) is no secret."""
    schema = {"type": "object", "properties": {"url": secret_schema("amqp://127.0.0.1/", url=True)}}
    resolved = resolve_table(schema, {"url": url}, "inputs.broker", mode="resolve", base_dir=tmp_path)
    assert resolved.table == {"url": url}
    assert resolved.plain == (["inputs.broker.url"] if warned else [])
    # a secret that is not a URL still warns whatever it holds
    plain = resolve_table(
        {"properties": {"key": secret_schema("x")}}, {"key": "amqp://rabbitmq/"}, "k", mode="resolve", base_dir=tmp_path
    )
    assert plain.plain == ["k.key"]


HEADERS = """[outputs.crm.headers]
X-Tenant = "acme"
Accept = "application/json"
Authorization = "Bearer abc123"
X-Partner-Token = "t0k3n-value"
Cookie = "session=s3ss"
X-Region = { env = "ROUTER_TEST_REGION" }"""


def test_only_credential_headers_are_secrets(  # type: ignore[no-untyped-def]
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry
) -> None:
    monkeypatch.setenv("ROUTER_TEST_REGION", "eu-west-7")
    text = BASE.replace(
        'url = "http://127.0.0.1:9000/hooks/{{trigger}}"', f'url = "http://127.0.0.1:9000/x"\n{HEADERS}'
    )
    config = build(text, tmp_path, registry)
    plain = sorted(w.split(": ")[1] for w in config.warnings if "secret written in plain text" in w)
    assert plain == [
        "outputs.crm.headers.Authorization",
        "outputs.crm.headers.Cookie",
        "outputs.crm.headers.X-Partner-Token",
    ]
    output = config.outputs["crm"].plugin
    assert output.headers["X-Region"] == "eu-west-7"
    # a receiver echoing what it was sent: the credentials are masked, ordinary values stay readable
    echoed = "got Bearer abc123, t0k3n-value, session=s3ss, tenant acme, region eu-west-7, application/json"
    assert output._scrub(echoed) == "got ***, ***, ***, tenant acme, region ***, application/json"


def test_credential_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "webhook-key").write_text("from-systemd")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    text = BASE.replace(
        'listen = "127.0.0.1:8787"', 'listen = "127.0.0.1:8787"\napi_key = { credential = "webhook-key" }'
    )
    assert build(text, tmp_path, registry).inputs["connector"].plugin.api_key == b"from-systemd"


def test_retry_policy_layers(tmp_path: Path, registry) -> None:  # type: ignore[no-untyped-def]
    text = BASE.replace("[router]", '[router]\nretry = { max_attempts = 5, max_backoff = "1m" }')
    text += '[outputs.crm.retry]\ninitial_backoff = "250ms"\n'
    text = text.replace('to = ["crm", "archive"]', 'to = ["crm", "archive"]\nretry = { max_attempts = 2 }')
    config = build(text, tmp_path, registry)
    crm = config.outputs["crm"].retry
    assert (crm.max_attempts, crm.max_backoff, crm.initial_backoff) == (5, 60.0, 0.25)
    assert config.outputs["archive"].retry.initial_backoff == 1.0
    assert config.retry_for("crm", "messages to CRM").max_attempts == 2


def test_statuses_retried_per_output(tmp_path: Path, registry) -> None:  # type: ignore[no-untyped-def]
    """`retry_on`/`permanent_on` move statuses over the defaults; an exact status wins over a class."""
    text = BASE.replace(CRM, CRM + '\nretry_on = [404, "5xx"]\npermanent_on = [501, "4xx"]')
    text += '[outputs.actions]\ntype = "connector"\nbase_url = "http://127.0.0.1:8080"\napi_key = "k"\n'
    text += "retry_on = [409]\n"
    config = build(text, tmp_path, registry)
    crm = config.outputs["crm"].plugin.statuses
    decided = {status: crm.retryable(status) for status in (400, 404, 408, 429, 500, 501, 503)}
    # 404 named, 408 and 429 put with "4xx" to the permanent side, 501 named there, the rest of 5xx retried
    assert decided == {400: False, 404: True, 408: False, 429: False, 500: True, 501: False, 503: True}
    defaults = config.outputs["actions"].plugin.statuses
    assert [defaults.retryable(s) for s in (404, 409, 422, 425, 502)] == [False, True, False, True, True]


def test_rate_limit_per_output(tmp_path: Path, registry) -> None:  # type: ignore[no-untyped-def]
    """The same table as the webhook's `rate_limit`; `burst` defaults to a second's worth, at least 1."""
    text = BASE.replace(CRM, CRM + "\nrate_limit = { per_second = 50, burst = 10 }")
    text = text.replace('path = "./var/events.jsonl"', 'path = "./var/events.jsonl"\nrate_limit = { per_second = 0.2 }')
    config = build(text, tmp_path, registry)
    assert config.outputs["crm"].rate_limit == RateLimit(50.0, 10.0)
    assert config.outputs["archive"].rate_limit == RateLimit(0.2, 1.0)
    assert build(BASE, tmp_path, registry).outputs["crm"].rate_limit is None
    slow = BASE.replace("[inputs.connector]", "[inputs.connector]\nrate_limit = { per_second = 0.5 }")
    webhook = build(slow, tmp_path, registry).inputs["connector"].plugin
    assert webhook.limiter.allow("client", now=0.0) == 0.0, "a limit under 1/s still lets a request through"


def test_what_a_worker_looks_up_survives_a_reload_that_removed_it(tmp_path: Path, registry) -> None:  # type: ignore[no-untyped-def]
    """A worker finishing its deliveries after a reload removed its output (or their route) reads the new
    configuration: the router's default policy, no route options; not a KeyError in the delivery loop."""
    text = BASE.replace("[router]", "[router]\nretry = { max_attempts = 5 }")
    text = text.replace('to = ["crm", "archive"]', 'to = ["crm", "archive"]\nretry = { max_attempts = 2 }')
    config = build(text, tmp_path, registry)
    assert config.retry_for("removed", "messages to CRM") == config.retry
    assert config.retry_for("removed", "messages to CRM").max_attempts == 5
    route = config.route("messages to CRM")
    assert route is not None and config.route_options("messages to CRM") is route.options
    assert config.route_options("removed route") == {}


@pytest.mark.parametrize(
    ("value", "seconds"), [(5, 5.0), (0.5, 0.5), ("500ms", 0.5), ("2m", 120.0), ("1.5h", 5400.0), ("7d", 604800.0)]
)
def test_durations(value: float | str, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["5", "five s", "-1s", True, -3])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError, match=r"duration|negative"):
        parse_duration(value)  # type: ignore[arg-type]


ROUTE_TRIGGER_TYPOS = """
[[routes]]
name = "typo"
to = ["archive"]
[routes.match]
trigger = ["transport.messageRecieved", "router.actionFailed", "consumption.relationshipEvent.x", "runtime.*"]
[[routes]]
name = "in an or"
match = { "$or" = [{ trigger = "transport.mesageSent" }, { "data.id" = ["x"] }] }
to = ["archive"]
"""


def test_check_warns_about_a_route_trigger_no_schema_knows(tmp_path: Path) -> None:
    """Such a condition passes `check`; it is most likely a typo that costs every event it was meant for."""
    config = tmp_path / "router.toml"
    config.write_text(BASE + ROUTE_TRIGGER_TYPOS)
    checked = run_cli("check", "-c", str(config))
    assert checked.returncode == 0, checked.stderr
    warnings = [line for line in checked.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: router.toml: routes[1].match.trigger[0]: no schema knows the trigger 'transport.messageRecieved': "
        "a typo? did you mean 'transport.messageReceived'?",
        "warning: router.toml: routes[2].match.$or[0].trigger: no schema knows the trigger 'transport.mesageSent': "
        "a typo? did you mean 'transport.messageSent'?",
    ], checked.stderr
    as_json = orjson.loads(run_cli("check", "-c", str(config), "--json").stdout)
    assert as_json["warnings"] == [w.removeprefix("warning: ") for w in warnings], as_json


def test_check_names_the_core_keys_and_the_key_meant(tmp_path: Path) -> None:
    config = tmp_path / "router.toml"
    config.write_text(BASE.replace('path = "./var/events.jsonl"', 'path = "./var/events.jsonl"\ntimout = "5s"'))
    checked = run_cli("check", "-c", str(config))
    assert checked.returncode != 0
    assert (
        "error: router.toml: outputs.archive: unknown key 'timout'; did you mean 'timeout'? "
        "(allowed: breaker, concurrency, fsync, max_pending, mode, ordering_key, path, rate_limit, retry, timeout, "
        "type) (plugin file)"
    ) in checked.stderr, checked.stderr


# --- [router.admin] token -------------------------------------------------------------------------------


@pytest.mark.parametrize("listen", ["0.0.0.0:9187", "[::]:9187", "192.0.2.10:9187", "router.example:9187"])
def test_admin_off_the_loopback_requires_a_token(tmp_path: Path, registry, listen: str) -> None:  # type: ignore[no-untyped-def]
    errors = errors_of(BASE + f'[router.admin]\nlisten = "{listen}"\n', tmp_path, registry)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"router.toml: router.admin.token: required: the admin endpoint listens on {listen}"), (
        errors
    )
    assert 'token = { env = "ROUTER_ADMIN_TOKEN" }' in errors[0]


@pytest.mark.parametrize("listen", ["127.0.0.1:9187", "127.0.0.2:9187", "[::1]:9187", "localhost:9187"])
def test_admin_on_the_loopback_needs_no_token(tmp_path: Path, registry, listen: str) -> None:  # type: ignore[no-untyped-def]
    config = build(BASE + f'[router.admin]\nlisten = "{listen}"\n', tmp_path, registry)
    assert config.admin_token is None


def test_admin_token_is_a_secret_reference(tmp_path: Path, registry, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("ROUTER_ADMIN_TOKEN", "t" * 32)
    text = BASE + '[router.admin]\nlisten = "0.0.0.0:9187"\ntoken = { env = "ROUTER_ADMIN_TOKEN" }\n'
    config = build(text, tmp_path, registry)
    assert isinstance(config.admin_token, Secret) and config.admin_token == "t" * 32
    assert "t" * 32 not in repr(config)
    assert not config.warnings
    # the commands that send nothing leave it unresolved; `tap` and `reload` ("admin") resolve it alone
    monkeypatch.delenv("ROUTER_ADMIN_TOKEN")
    skipped = build_config(tomllib.loads(text), path=tmp_path / "router.toml", registry=registry, secrets="skip")
    assert skipped.unresolved_secrets == ("router.admin.token",)
    with pytest.raises(
        ConfigErrors,
        match=r"router.admin.token: environment variable ROUTER_ADMIN_TOKEN is not set "
        r"\(tap and reload call the admin endpoint, which asks for it\)",
    ):
        build_config(tomllib.loads(text), path=tmp_path / "router.toml", registry=registry, secrets="admin")
    monkeypatch.setenv("ROUTER_ADMIN_TOKEN", "u" * 20)
    spool = 'spool = { backend = "postgresql", dsn = { env = "ROUTER_PG_DSN_UNSET" } }\n'
    admin = build_config(
        tomllib.loads(text.replace('data_dir = "./var"\n', 'data_dir = "./var"\n' + spool)),
        path=tmp_path / "router.toml",
        registry=registry,
        secrets="admin",
    )
    assert admin.admin_token == "u" * 20
    assert admin.unresolved_secrets == ("router.spool.dsn",)


def test_admin_token_too_short_or_plain(tmp_path: Path, registry) -> None:  # type: ignore[no-untyped-def]
    errors = errors_of(BASE + '[router.admin]\ntoken = "short-token"\n', tmp_path, registry)
    assert errors == [
        "router.toml: router.admin.token: too short: 11 characters; use 16 or more (openssl rand -hex 32)"
    ], errors
    config = build(BASE + '[router.admin]\ntoken = "a-plain-token-of-some-length"\n', tmp_path, registry)
    assert config.admin_token == "a-plain-token-of-some-length"
    assert any("router.admin.token: secret written in plain text" in w for w in config.warnings), config.warnings


def _patterns(schema: object, found: set[str]) -> set[str]:
    """Every `pattern` in a JSON Schema."""
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "pattern" and isinstance(value, str):
                found.add(value)
            else:
                _patterns(value, found)
    elif isinstance(schema, list):
        for value in schema:
            _patterns(value, found)
    return found


def test_jsonschema_rs_accepts_no_string_a_schema_pattern_refuses_in_python() -> None:
    """A configuration jsonschema_rs finds valid is not looked at again (`wording._valid`), and the values
    are then read by Python (`parse_duration`...): no pattern of router.toml's schemas (core, every plugin's,
    the Connector actions') may match a string in Rust's dialect that Python's `re` refuses. Each is tried
    with every Unicode space, digit, format and control character put before, inside and after a string it
    matches (jsonschema_rs took "30s" followed by a byte-order mark as a duration; Python did not)."""
    import unicodedata

    import jsonschema_rs

    from event_router.config.schema import ROUTER_SCHEMA
    from event_router.outputs.connector import ACTIONS

    registry = load_plugins()
    found = _patterns(ROUTER_SCHEMA, set())
    for cls in [*registry.inputs.values(), *registry.outputs.values()]:
        _patterns(dict(cls.config_schema), found)
    _patterns(ACTIONS, found)
    assert len(found) >= 5, found
    odd = [
        c
        for c in map(chr, range(0x110000))
        if unicodedata.category(c) in ("Nd", "Zs", "Zl", "Zp", "Cf", "Cc") or c.isspace() or c.isdigit()
    ]
    samples = ["30s", "1.5 h", "/path", "0644", "1.2.3", "crm-1", "https://x.example"]
    differ = []
    for pattern in sorted(found):
        rust = jsonschema_rs.Draft202012Validator({"type": "string", "pattern": pattern})
        python = re.compile(pattern)
        for sample in (s for s in samples if python.search(s)):
            for c in odd:
                for text in (c + sample, sample[:1] + c + sample[1:], sample + c):
                    if rust.is_valid(text) and not python.search(text):
                        differ.append((pattern, text))
    assert not differ, differ[:10]
