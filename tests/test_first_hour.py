"""What a new user met in the first hour in production (#14), each as they met it: real subprocesses, a real
router, real sockets and files."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from event_router.core.stats import COUNTERS, HISTOGRAMS
from event_router.testing import ROOT, RouterProcess, example, free_port, http_receiver, post, run_cli

KEY = "first-hour-key"
ENV = {"FIRST_HOUR_WEBHOOK_KEY": KEY}
HEADERS = {"x-api-key": KEY}


def router_toml(tmp: Path, *, listen: str, crm_url: str = "http://127.0.0.1:9/hooks", extra: str = "") -> Path:
    path = tmp / "router.toml"
    path.write_text(f"""
[router]
data_dir = "./var"
shutdown_timeout = "2s"
{extra}
[inputs.connector]
type = "webhook"
listen = "{listen}"
api_key = {{ env = "FIRST_HOUR_WEBHOOK_KEY" }}
[outputs.crm]
type = "http"
url = "{crm_url}"
timeout = "2s"
headers = {{ Authorization = {{ env = "FIRST_HOUR_CRM_TOKEN" }} }}
retry = {{ initial_backoff = "50ms", max_backoff = "100ms", max_attempts = 3 }}
[[routes]]
name = "mail to crm"
match = {{ trigger = ["transport.messageReceived"] }}
to = ["crm"]
""")
    return path


def without(*names: str) -> dict[str, str]:
    """This process's environment less `names`, for a shell that lacks the service's variables."""
    return {k: v for k, v in os.environ.items() if k not in names}


def run_bare(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`run_cli` with exactly `env` (run_cli adds this process's environment, which may hold a secret)."""
    return subprocess.run(
        [sys.executable, "-m", "event_router", *args],
        stdin=subprocess.DEVNULL,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# --- 1. `test` needs no secret ---------------------------------------------------------------------------


def test_test_needs_no_secret_and_names_events_by_their_index(tmp_path: Path) -> None:
    config = router_toml(tmp_path, listen=f"127.0.0.1:{free_port()}")
    events = tmp_path / "events.json"
    broken = example("transport.relationshipChanged")
    broken["data"]["status"] = "Sleeping"
    events.write_text(json.dumps([example("transport.messageReceived"), broken]))
    result = run_bare("test", "-c", str(config), str(events), env=without(*ENV, "FIRST_HOUR_CRM_TOKEN"))
    assert result.returncode == 1, result.stderr  # the second event would be a dead letter
    assert "is not set" not in result.stderr, result.stderr
    report = json.loads(result.stdout)
    (crm,) = report[0]["deliveries"]
    assert crm["output"] == "crm" and crm["url"] == "http://127.0.0.1:9/hooks"
    assert "unresolved-secret" not in result.stdout + result.stderr
    assert f"error: {events}[1] (transport.relationshipChanged) would be dead-lettered: validation:" in result.stderr

    single = tmp_path / "one.json"
    single.write_text(json.dumps({"data": {}}))
    bad = run_bare("test", "-c", str(config), str(single), env=without(*ENV))
    assert bad.returncode == 1 and f'error: {single} is not {{"trigger": "...", "data": ...}}' in bad.stderr


# --- 2. the README's quick start is true about retries ---------------------------------------------------


def test_readme_quick_start_says_how_often_the_shipped_config_retries() -> None:
    readme = (ROOT / "README.md").read_text()
    attempts = tomllib.loads((ROOT / "router.toml").read_text())["router"]["retry"]["max_attempts"]
    assert "retried until something listens" not in readme
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert f"{attempts} attempts" in quick_start and "dlq" in quick_start and "dead letter" in quick_start


# --- 3. no input: `check` fails, the importer writes nothing ---------------------------------------------


def test_check_fails_a_config_without_input(tmp_path: Path) -> None:
    config = tmp_path / "router.toml"
    config.write_text(
        '[outputs.archive]\ntype = "file"\npath = "./var/a.jsonl"\n'
        '[[routes]]\nname = "all"\nmatch = { trigger = ["**"] }\nto = ["archive"]\n'
    )
    checked = run_cli("check", "-c", str(config))
    assert checked.returncode == 1
    assert checked.stderr.strip() == (
        "error: router.toml: inputs: no input configured: the router would receive nothing"
    ), checked.stderr
    assert "ok" not in checked.stdout


def test_import_with_nothing_importable_fails_and_writes_nothing(tmp_path: Path) -> None:
    connector = tmp_path / "config.json"
    connector.write_text(
        json.dumps(
            {
                "modules": {
                    "webhooks": {
                        "enabled": True,
                        "targets": {"ftp": {"url": "ftp://files.example.com/in"}},
                        "webhooks": [{"triggers": ["**"], "target": "ftp"}],
                    }
                }
            }
        )
    )
    out = tmp_path / "router.toml"
    done = run_cli("import-connector-config", str(connector), "-o", str(out))
    assert done.returncode == 1, done.stderr
    assert "not imported: modules.webhooks.targets.ftp.url" in done.stderr
    assert done.stderr.rstrip().splitlines()[-1] == (
        f"error: nothing to import from {connector}: no webhook or message broker the router could receive "
        "events from (each reason is above); nothing written"
    )
    assert not out.exists()
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"modules": {}}))
    to_stdout = run_cli("import-connector-config", str(empty))
    assert to_stdout.returncode == 1 and to_stdout.stdout == ""
    assert "(it configures no webhook and no broker plugin); nothing written" in to_stdout.stderr


# --- 4. a failed start in a JSON log ---------------------------------------------------------------------


def test_a_failed_start_is_a_json_record_too_and_the_documented_jq_recipe_survives_it(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = router_toml(
            tmp_path, listen=f"127.0.0.1:{port}", extra=f'[router.admin]\nlisten = "127.0.0.1:{free_port()}"\n'
        )
        result = run_cli("run", "-c", str(config), "--log-format", "json", env={**ENV, "FIRST_HOUR_CRM_TOKEN": "t"})
    assert result.returncode == 1
    expected = f"router.toml: inputs.connector.listen: 127.0.0.1:{port} is already in use (plugin webhook)"
    lines = result.stderr.splitlines()
    assert [line for line in lines if line.startswith("error:")] == [f"error: {expected}"], result.stderr
    records = [json.loads(line) for line in lines if line.startswith("{")]
    failed = [r for r in records if r["msg"] == "router failed to start"]
    assert len(failed) == 1, result.stderr
    assert (failed[0]["level"], failed[0]["key"], failed[0]["error"]) == ("error", "inputs.connector.listen", expected)
    assert not [r for r in records if r["msg"] == "router stopped"], "it never ran, so it did not stop"
    # the operating guide's recipe, on this very log, as journalctl -o cat would give it
    recipe = re.search(r"journalctl -u event-router -o cat \| (jq .*)", (ROOT / "docs/operating.md").read_text())
    assert recipe is not None
    jq = subprocess.run(["sh", "-c", recipe.group(1)], input=result.stderr, capture_output=True, text=True, check=False)
    assert jq.returncode == 0, jq.stderr
    assert "router failed to start" in jq.stdout


# --- 5. two listeners on one port ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("webhook", "admin", "overlap"),
    [
        ("127.0.0.1:{p}", "127.0.0.1:{p}", True),
        ("0.0.0.0:{p}", "127.0.0.1:{p}", True),
        ("127.0.0.1:{p}", "[::]:{p}", True),
        ("127.0.0.1:{p}", "127.0.0.2:{p}", False),
        ("127.0.0.1:{p}", "127.0.0.1:{q}", False),
    ],
)
def test_check_refuses_two_listeners_on_one_port(tmp_path: Path, webhook: str, admin: str, overlap: bool) -> None:
    p, q = free_port(), free_port()
    listen, admin_listen = webhook.format(p=p, q=q), admin.format(p=p, q=q)
    # a token: an admin endpoint off the loopback ([::]) asks for one
    admin_table = f'[router.admin]\nlisten = "{admin_listen}"\ntoken = {{ env = "FIRST_HOUR_ADMIN_TOKEN" }}\n'
    config = router_toml(tmp_path, listen=listen, extra=admin_table)
    env = {**ENV, "FIRST_HOUR_CRM_TOKEN": "t", "FIRST_HOUR_ADMIN_TOKEN": "first-hour-admin-token"}
    checked = run_cli("check", "-c", str(config), env=env)
    if not overlap:
        assert checked.returncode == 0, checked.stderr
        return
    assert checked.returncode == 1
    assert checked.stderr.strip() == (
        f"error: router.toml: router.admin.listen: {admin_listen} overlaps inputs.connector.listen "
        f"({listen}): each listener needs its own port"
    ), checked.stderr


# --- 6. the operating guide lists every metric once --------------------------------------------------------


def test_operating_guide_lists_each_metric_once() -> None:
    text = (ROOT / "docs/operating.md").read_text()
    table = text.split("| metric | labels | what |", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \|", table, re.M)
    counters = {f"{name}_total" for name in COUNTERS} | set(HISTOGRAMS)
    # `yield "name", ...` and, where it is too long for a line, `yield (\n "name", ...`
    gauges = set(re.findall(r'yield \(?\s*"([a-z_]+)",', (ROOT / "router/event_router/app.py").read_text()))
    metrics = [row for row in rows if row in counters | gauges or row.endswith(("_total", "_seconds"))]
    assert sorted(metrics) == sorted(counters | gauges)
    assert len(metrics) == len(set(metrics)), "a metric is listed twice"
    # the alert rules are the packaged file (tests/test_monitoring.py checks it), each alert in the table
    assert "packaging/prometheus/event-router.rules.yml" in text
    rules = (ROOT / "packaging/prometheus/event-router.rules.yml").read_text()
    alerts = re.findall(r"^\s+- alert: (\w+)$", rules, re.M)
    assert alerts and all(f"| `{alert}` |" in text for alert in alerts), alerts


# --- 8. status and dlq without a spool (tests/test_cli.py::test_status_and_dlq_without_a_spool) ------------
# --- 9. a reader that goes away ----------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["plugins"], ["schemas"], ["status"], ["dlq", "list", "--json"]])
def test_a_closed_pipe_ends_a_command_quietly(tmp_path: Path, command: list[str]) -> None:
    config = router_toml(tmp_path, listen=f"127.0.0.1:{free_port()}")
    if command[0] in ("status", "dlq"):
        with RouterProcess(config, env={**ENV, "FIRST_HOUR_CRM_TOKEN": "t"}):
            pass  # leaves a spool behind
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first write, as `head` is after its lines
    try:
        done = subprocess.run(
            [sys.executable, "-m", "event_router", *command, "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write)
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode == 141, done.stderr


# --- 10. smaller things -----------------------------------------------------------------------------------


def test_an_outage_shows_in_warnings_once_per_delivery_and_errors_say_the_status_once(tmp_path: Path) -> None:
    port = free_port()
    with http_receiver() as crm:
        crm.respond(503, 503, 422)
        config = router_toml(tmp_path, listen=f"127.0.0.1:{port}", crm_url=f"{crm.url}/hooks")
        with RouterProcess(config, env={**ENV, "FIRST_HOUR_CRM_TOKEN": "t"}) as router:
            status, body, _ = post(f"http://127.0.0.1:{port}/events", example("transport.messageReceived"), HEADERS)
            assert status == 202, body
            dead = router.wait_log("delivery dead-lettered")
            retries = [r for r in router.log_records() if r["msg"] == "delivery failed, will retry"]
    assert [(r["attempt"], r["level"]) for r in retries] == [(1, "warning"), (2, "info")]
    assert "answered 503" in retries[0]["error"] and "[503]" not in retries[0]["error"]
    assert "answered 422" in dead["error"] and "[422]" not in dead["error"], dead["error"]


def test_an_undecodable_body_is_logged_with_its_reason(tmp_path: Path) -> None:
    port = free_port()
    config = router_toml(tmp_path, listen=f"127.0.0.1:{port}")
    with RouterProcess(config, env={**ENV, "FIRST_HOUR_CRM_TOKEN": "t"}) as router:
        status, _, _ = post(f"http://127.0.0.1:{port}/events", b"{nope", HEADERS)
        assert status == 400
        record = router.wait_log("input dead-lettered")
    assert record["reason"] == "undecodable" and record["level"] == "warning"


def test_401_says_whether_the_key_was_missing_or_wrong(tmp_path: Path) -> None:
    port = free_port()
    config = router_toml(tmp_path, listen=f"127.0.0.1:{port}")
    url = f"http://127.0.0.1:{port}/events"
    with RouterProcess(config, env={**ENV, "FIRST_HOUR_CRM_TOKEN": "t"}):
        missing = post(url, example("transport.messageReceived"))
        wrong = post(url, example("transport.messageReceived"), {"x-api-key": "nope"})
    assert (missing[0], missing[1]["error"]) == (401, "missing API key header x-api-key")
    assert (wrong[0], wrong[1]["error"]) == (401, "wrong API key in header x-api-key")


def test_an_anyof_validation_error_says_what_is_allowed(tmp_path: Path) -> None:
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    (schemas / "acme.templateShared.json").write_text(
        json.dumps(
            {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "$id": "https://acme.example/schemas/acme.templateShared.json",
                "x-trigger": "acme.templateShared",
                "$ref": "https://enmeshed-event-router.github.io/schemas/defs.json"
                "#/$defs/RelationshipTemplateBase/properties/passwordProtection",
            }
        )
    )
    config = router_toml(tmp_path, listen=f"127.0.0.1:{free_port()}", extra='schemas_dir = "schemas"\n')
    events = tmp_path / "event.json"
    events.write_text(
        json.dumps(
            {
                "trigger": "acme.templateShared",
                "data": {"password": "x", "passwordIsPin": False, "passwordLocationIndicator": 100},
            }
        )
    )
    result = run_cli("test", "-c", str(config), str(events))
    errors = json.loads(result.stdout)["validation"]["errors"]
    (error,) = [e for e in errors if e.startswith("data.passwordLocationIndicator:")]
    assert error.startswith("data.passwordLocationIndicator: 100 is not valid: it is not one of "), errors
    assert error.endswith(", and it is greater than the maximum of 99"), errors
    assert "anyOf" not in error


def test_check_wording_plain_secret_unused_output_and_unknown_trigger(tmp_path: Path) -> None:
    config = router_toml(tmp_path, listen=f"127.0.0.1:{free_port()}")
    text = config.read_text().replace('{ env = "FIRST_HOUR_CRM_TOKEN" }', '"Bearer plain-text-token"')
    text += '[outputs.spare]\ntype = "file"\npath = "./var/spare.jsonl"\n'
    text += '[[routes]]\nname = "typo"\nmatch = { trigger = ["transport.messageRecieved"] }\nto = ["crm"]\n'
    config.write_text(text)
    checked = run_cli("check", "-c", str(config), env=ENV)
    assert checked.returncode == 0, checked.stderr
    warnings = [line for line in checked.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: router.toml: outputs.crm.headers.Authorization: secret written in plain text; "
        'prefer { env = "NAME" }, { file = "path" } or { credential = "name" } (systemd)',
        "warning: router.toml: outputs.spare: no route sends to this output: it receives nothing "
        "(add it to a route's `to`, or remove it)",
        "warning: router.toml: routes[1].match.trigger[0]: no schema knows the trigger "
        "'transport.messageRecieved': a typo? did you mean 'transport.messageReceived'?",
    ], checked.stderr


def test_dlq_list_limit_must_be_at_least_one(tmp_path: Path) -> None:
    config = router_toml(tmp_path, listen=f"127.0.0.1:{free_port()}")
    result = run_cli("dlq", "list", "--limit", "0", "-c", str(config))
    assert result.returncode == 2
    assert "argument --limit: '0' is not a whole number of at least 1" in result.stderr


# --- 11. importer and doc slips ---------------------------------------------------------------------------


def test_docs_say_what_the_importer_and_connector_do() -> None:
    connector = (ROOT / "docs/connector.md").read_text()
    assert "MQTT (QoS 0) and Redis (PUBLISH), which lose them; config order on a tie" not in connector
    assert "then MQTT (QoS 0), then Redis (PUBLISH)" in connector
    assert "`event-router import` " not in (ROOT / "schemas/README.md").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "Connector 6.25 or newer" in readme and '"headers": {"x-api-key":' in readme


def test_the_importer_ranks_mqtt_above_redis_as_documented(tmp_path: Path) -> None:
    connector = tmp_path / "config.json"
    connector.write_text(
        json.dumps(
            {
                "modules": {
                    "messageBrokerPublisher": {
                        "enabled": True,
                        "brokers": [
                            {"type": "Redis", "configuration": {"url": "redis://127.0.0.1:6379"}},
                            {"type": "MQTT", "configuration": {"url": "mqtt://127.0.0.1:1883"}},
                        ],
                    }
                }
            }
        )
    )
    done = run_cli("import-connector-config", str(connector))
    assert done.returncode == 0, done.stderr
    inputs = tomllib.loads(done.stdout)["inputs"]
    assert [table["type"] for table in inputs.values()] == ["mqtt"]


def test_status_says_there_is_no_spool_without_creating_one(tmp_path: Path) -> None:
    config = router_toml(tmp_path, listen=f"127.0.0.1:{free_port()}")
    result = run_cli("status", "-c", str(config))
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.strip() == (
        f"error: no spool at {tmp_path}/var/spool.db (router.data_dir: has the router run with this router.toml?)"
    )
    assert not (tmp_path / "var").exists()
    with RouterProcess(config, env={**ENV, "FIRST_HOUR_CRM_TOKEN": "t"}):
        pass
    again = run_cli("status", "-c", str(config))
    assert again.returncode == 0 and "pending events: 0" in again.stdout
