"""Operator commands on a shell that has none of the service's secrets: `status`, `dlq`, `output`, `schemas`, `plugins`,
`reload` and `check --no-secrets` / `check --credentials-dir`. The daemon always resolves its secrets."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from event_router.plugin_loader import load_plugins
from event_router.testing import (
    ROOT,
    RouterProcess,
    example,
    free_port,
    http_receiver,
    post,
    router_table,
    run_cli,
    wait_for,
    webhook_input,
)

#: what the service has and an operator's shell does not
SERVICE_ONLY = ("ROUTER_WEBHOOK_API_KEY", "CREDENTIALS_DIRECTORY", "AUDIT_PASSWORD", "BROKER_URL")
API_KEY = "operator-test-key"
CRM_TOKEN = "crm-token-from-a-credential"


def run_as_operator(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`event-router ARGS` with none of the service's variables set (run_cli can only add variables)."""
    env = {k: v for k, v in os.environ.items() if k not in (*SERVICE_ONLY, "EVENT_ROUTER_CONFIG")}
    return subprocess.run(
        [sys.executable, "-m", "event_router", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def credentials(tmp: Path, **files: str) -> Path:
    directory = tmp / "credentials"
    directory.mkdir()
    for name, value in files.items():
        (directory / name.replace("_", "-")).write_text(value + "\n")
    return directory


@pytest.mark.slow
def test_status_dlq_schemas_plugins_and_reload_need_no_secret(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    creds = credentials(tmp_path, crm_token=CRM_TOKEN, crm_signing="whsec_" + "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3")
    with http_receiver() as rx:
        rx.respond(422)
        config = tmp_path / "router.toml"
        text = f"""
{router_table(admin, shutdown_timeout="2s")}{webhook_input(port)}[outputs.crm]
type = "http"
url = "{rx.url}/hooks"
headers = {{ X-Crm-Token = {{ credential = "crm-token" }} }}
signing_secret = {{ credential = "crm-signing" }}
retry = {{ max_attempts = 1 }}
[[routes]]
name = "to crm"
to = "crm"
"""
        config.write_text(text)
        service_env = {"ROUTER_WEBHOOK_API_KEY": API_KEY, "CREDENTIALS_DIRECTORY": str(creds)}
        with RouterProcess(config, env=service_env) as router:
            for _ in range(2):
                status, body, _ = post(
                    f"http://127.0.0.1:{port}/events", example("transport.messageReceived"), {"x-api-key": API_KEY}
                )
                assert status == 202, body
            wait_for(lambda: len(rx.requests) == 2, what="two refused deliveries")
            c = ("-c", str(config))

            def dead_letters() -> list[dict[str, object]]:
                listed = run_as_operator("dlq", "list", "--json", *c)
                assert listed.returncode == 0, listed.stderr
                found: list[dict[str, object]] = json.loads(listed.stdout)
                return found

            wait_for(lambda: len(dead_letters()) == 2, what="two dead letters")
            first, second = (str(d["id"]) for d in dead_letters())

            status_run = run_as_operator("status", *c)
            assert status_run.returncode == 0, status_run.stderr
            assert "dead letters: 2" in status_run.stdout
            shown = run_as_operator("dlq", "show", first, *c)
            assert shown.returncode == 0, shown.stderr
            assert json.loads(shown.stdout)[0]["output"] == "crm"
            schemas = run_as_operator("schemas", *c)
            assert schemas.returncode == 0, schemas.stderr
            assert "transport.messageReceived" in schemas.stdout
            plugins = run_as_operator("plugins", *c)
            assert plugins.returncode == 0, plugins.stderr
            assert "builtin.http" in plugins.stdout
            paused = run_as_operator("output", "pause", "crm", *c)
            assert paused.returncode == 0 and paused.stdout.startswith("paused crm"), paused.stdout + paused.stderr
            resumed = run_as_operator("output", "resume", "crm", *c)
            assert resumed.returncode == 0 and resumed.stdout.startswith("resumed crm"), resumed.stdout + resumed.stderr

            purged = run_as_operator("dlq", "purge", second, *c)
            assert purged.returncode == 0, purged.stderr
            # the daemon re-reads the file with its own secrets; the command only needs where it listens
            config.write_text(text.replace("retry = { max_attempts = 1 }", "retry = { max_attempts = 2 }"))
            reloaded = run_as_operator("reload", *c)
            assert reloaded.returncode == 0, reloaded.stderr
            assert reloaded.stdout.strip() == "reloaded"
            rx.respond(200)
            replayed = run_as_operator("dlq", "replay", first, *c)
            assert replayed.returncode == 0, replayed.stderr
            assert "replayed 1" in replayed.stdout
            wait_for(lambda: len(rx.requests) == 3, what="the replayed delivery")
            assert [d["id"] for d in dead_letters()] == []
            router.terminate()
    # the replayed delivery went out with the real secrets, from the output the reload restarted
    sent = rx.requests[2]
    assert sent.headers["X-Crm-Token"] == CRM_TOKEN
    assert sent.headers["webhook-signature"].startswith("v1,")
    assert "unresolved" not in json.dumps(sent.headers)


def test_schemas_without_any_router_toml(tmp_path: Path) -> None:
    listed = run_as_operator("schemas", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    triggers = {row["trigger"] for row in json.loads(listed.stdout)}
    assert "transport.messageReceived" in triggers and len(triggers) >= 41
    assert "built-in and plugin schemas only" in listed.stderr
    # a file asked for by name must exist
    missing = run_as_operator("schemas", "-c", str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert missing.returncode == 1
    assert "cannot read" in missing.stderr and "nope.toml" in missing.stderr


def _every_secret(tmp: Path) -> Path:
    """A router.toml with each secret-bearing key of the built-ins and installed broker plugins as a reference."""
    registry = load_plugins()
    hook = webhook_input(free_port(), name="hook")
    text = f"""
{router_table()}{hook}signing_secrets = [{{ credential = "webhook-signing" }}, {{ file = "secrets/old-signing" }}]
[outputs.crm]
type = "http"
url = "http://127.0.0.1:9/hooks"
headers = {{ Authorization = {{ credential = "crm-token" }} }}
signing_secret = {{ env = "CRM_SIGNING_SECRET_UNSET" }}
[outputs.bearer]
type = "http"
url = "http://127.0.0.1:9/b"
auth = {{ type = "bearer", token = {{ credential = "b" }} }}
[outputs.basic]
type = "http"
url = "http://127.0.0.1:9/c"
auth = {{ type = "basic", username = "u", password = {{ env = "AUDIT_PASSWORD" }} }}
[outputs.keyed]
type = "http"
url = "http://127.0.0.1:9/d"
auth = {{ type = "api_key", key = {{ file = "secrets/missing" }} }}
[outputs.oauth]
type = "http"
url = "http://127.0.0.1:9/e"
auth = {{ type = "oauth2", token_url = "http://127.0.0.1:9/t", client_id = "c", client_secret = {{ env = "X_UNSET" }} }}
[outputs.connector]
type = "connector"
base_url = "http://127.0.0.1:9"
api_key = {{ credential = "connector-api-key" }}
[outputs.connector2]
type = "connector"
base_url = "http://127.0.0.1:9"
oauth2 = {{ token_url = "http://127.0.0.1:9/token", client_id = "c", client_secret = {{ credential = "c2" }} }}
"""
    if "amqp" in registry.inputs:
        text += '[inputs.amqp]\ntype = "amqp"\nurl = { env = "BROKER_URL" }\n'
        text += '[outputs.amqp]\ntype = "amqp"\nurl = { credential = "amqp-url" }\nexchange = "x"\n'
    if "redis" in registry.inputs:
        text += '[inputs.redis]\ntype = "redis"\nurl = { env = "BROKER_URL" }\n'
    if "mqtt" in registry.inputs:
        text += '[inputs.mqtt]\ntype = "mqtt"\nurl = { env = "BROKER_URL" }\n'
    text += '[[routes]]\nname = "all"\nto = ["crm"]\n'
    path = tmp / "router.toml"
    path.write_text(text)
    return path


def test_check_no_secrets_checks_everything_but_their_values(tmp_path: Path) -> None:
    config = _every_secret(tmp_path)
    strict = run_as_operator("check", "-c", str(config))
    assert strict.returncode == 1
    assert "error: router.toml: inputs.hook.api_key: environment variable ROUTER_WEBHOOK_API_KEY is not set" in (
        strict.stderr
    )
    assert "--no-secrets" in strict.stderr and "--credentials-dir" in strict.stderr

    checked = run_as_operator("check", "--no-secrets", "-c", str(config), "--json")
    assert checked.returncode == 0, checked.stderr
    report = json.loads(checked.stdout)
    unresolved = report["unresolved_secrets"]
    assert "inputs.hook.api_key" in unresolved and "inputs.hook.signing_secrets[0]" in unresolved
    assert "outputs.crm.headers.Authorization" in unresolved and "outputs.oauth.auth.client_secret" in unresolved
    assert "outputs.connector2.oauth2.client_secret" in unresolved
    for broker in ("amqp", "redis", "mqtt"):
        if broker in report["inputs"]:
            assert f"inputs.{broker}.url" in unresolved

    # the operator commands take the same file as it is: `status` gets as far as the spool (no router has
    # run here), `test` all the way
    status = run_as_operator("status", "-c", str(config))
    assert status.returncode == 1 and status.stderr.startswith("error: no spool at "), status.stderr
    events = tmp_path / "event.json"
    events.write_text(json.dumps(example("transport.messageReceived")))
    tested = run_as_operator("test", "-c", str(config), str(events))
    assert "is not set" not in tested.stderr and "test: 1 event(s)" in tested.stderr, tested.stderr

    # what does not depend on the secrets' values is still checked: their form, and every other key
    broken = config.read_text().replace('{ env = "AUDIT_PASSWORD" }', '{ envv = "AUDIT_PASSWORD" }')
    broken = broken.replace('url = "http://127.0.0.1:9/b"', 'url = "ftp://127.0.0.1:9/b"')
    config.write_text(broken + '[outputs.plain]\ntype = "http"\nurl = "http://x/"\nsigning_secret = "whsec_!!"\n')
    refused = run_as_operator("check", "--no-secrets", "-c", str(config))
    assert refused.returncode == 1
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    for start in (
        "error: router.toml: outputs.basic.auth.password: must be a string or a table with one key",
        "error: router.toml: outputs.bearer.url: 'ftp://",
        "error: router.toml: outputs.plain.signing_secret: the part after 'whsec_' is not valid base64",
    ):
        assert any(line.startswith(start) for line in errors), (start, refused.stderr)
    assert "whsec_!!" not in refused.stderr


def test_check_credentials_dir_reads_credentials_from_it(tmp_path: Path) -> None:
    config = tmp_path / "router.toml"
    config.write_text(f"""
[inputs.connector]
type = "webhook"
listen = "127.0.0.1:{free_port()}"
api_key = {{ credential = "webhook-api-key" }}
[outputs.archive]
type = "file"
path = "./var/events.jsonl"
[[routes]]
name = "all"
to = "archive"
""")
    without = run_as_operator("check", "-c", str(config))
    assert without.returncode == 1
    assert "credential 'webhook-api-key' asked for, but $CREDENTIALS_DIRECTORY is not set" in without.stderr
    assert "--credentials-dir" in without.stderr

    creds = credentials(tmp_path)
    empty = run_as_operator("check", "--credentials-dir", str(creds), "-c", str(config))
    assert empty.returncode == 1
    assert f"cannot read secret credential '{creds}/webhook-api-key'" in empty.stderr

    (creds / "webhook-api-key").write_text("k3y\n")
    ok = run_as_operator("check", "--credentials-dir", str(creds), "-c", str(config))
    assert ok.returncode == 0, ok.stderr
    assert "ok: 1 input(s), 1 output(s), 1 route(s)" in ok.stdout
    assert "k3y" not in ok.stdout + ok.stderr

    both = run_as_operator("check", "--no-secrets", "--credentials-dir", str(creds), "-c", str(config))
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_the_operating_guides_pre_start_check_works_as_written(tmp_path: Path) -> None:
    """docs/operating.md's install steps, in a scratch /etc: `init`, the edits it asks for, then its `check`."""
    guide = (ROOT / "docs" / "operating.md").read_text()
    found = re.search(r"^sudo \S+/event-router (check .*)$", guide, re.MULTILINE)
    assert found, "docs/operating.md has no `sudo .../event-router check ...` line"
    etc = tmp_path / "etc" / "event-router"
    (etc / "credentials").mkdir(parents=True)
    (etc / "credentials" / "webhook-api-key").write_text("the-key\n")
    assert run_cli("init", "-o", str(etc / "router.toml")).returncode == 0
    document = tomllib.loads((etc / "router.toml").read_text())
    # "set data_dir = /var/lib/event-router (the unit's StateDirectory)": systemd creates it at the first start
    document["router"]["data_dir"] = str(tmp_path / "var" / "lib" / "event-router")
    document["inputs"]["connector"]["api_key"] = {"credential": "webhook-api-key"}
    (etc / "router.toml").write_text(tomli_w.dumps(document))

    command = shlex.split(found[1].replace("/etc/event-router", str(etc)))
    checked = run_as_operator(*command)
    assert checked.returncode == 0, checked.stderr
    assert "ok: 1 input(s)" in checked.stdout
    assert not (tmp_path / "var").exists(), "check created the data_dir"


def test_a_config_loaded_without_secrets_cannot_run(tmp_path: Path) -> None:
    from event_router.api.errors import RouterError
    from event_router.api.secrets import Unresolved
    from event_router.app import App
    from event_router.config import build_config

    registry = load_plugins()
    text = '[inputs.connector]\ntype = "webhook"\nlisten = "127.0.0.1:0"\napi_key = { env = "NO_SUCH_VAR_OP1" }\n'
    config = build_config(tomllib.loads(text), path=tmp_path / "router.toml", registry=registry, secrets="skip")
    assert config.unresolved_secrets == ("inputs.connector.api_key",)
    plugin = config.inputs["connector"].plugin
    assert isinstance(plugin.config["api_key"], Unresolved)
    with pytest.raises(RouterError, match=r"loaded without resolving its secrets \(inputs.connector.api_key\)"):
        App(config, registry)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("plugin", "table"),
    [
        ("http", {"url": "http://127.0.0.1:9/in", "headers": {"X-Api-Key": "UNRESOLVED"}}),
        ("http", {"url": "http://127.0.0.1:9/in", "auth": {"type": "bearer", "token": "UNRESOLVED"}}),
        (
            "http",
            {"url": "http://127.0.0.1:9/in", "auth": {"type": "basic", "username": "u", "password": "UNRESOLVED"}},
        ),
        ("connector", {"base_url": "http://127.0.0.1:9", "api_key": "UNRESOLVED"}),
        (
            "connector",
            {
                "base_url": "http://127.0.0.1:9",
                "oauth2": {"token_url": "http://127.0.0.1:9/token", "client_id": "c", "client_secret": "UNRESOLVED"},
            },
        ),
    ],
)
async def test_an_output_never_sends_an_unresolved_secret(
    tmp_path: Path, plugin: str, table: dict[str, object]
) -> None:
    """Outputs built from a configuration loaded without secrets (as `check --no-secrets` builds them) refuse
    to open, and their auth refuses to make a request header: the placeholder is never sent."""
    import logging

    from event_router.api.plugin import PluginContext
    from event_router.api.secrets import Unresolved, UnresolvedSecretError
    from event_router.web.auth import HttpAuth

    def unresolved(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: unresolved(v) for k, v in value.items()}
        return Unresolved("unresolved-secret") if value == "UNRESOLVED" else value

    output_class = load_plugins().outputs[plugin]
    output = output_class(unresolved(table), PluginContext("out", tmp_path, logging.getLogger("t"), tmp_path))
    with pytest.raises(UnresolvedSecretError, match="a secret reference was not resolved"):
        await output.open()
    auth: HttpAuth | None = getattr(output, "auth", None)
    if auth is not None:
        with pytest.raises(UnresolvedSecretError):
            await auth.headers(None)  # type: ignore[arg-type]
