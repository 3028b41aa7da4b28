"""The command line, run as a real subprocess the way a user runs it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from event_router.testing import ROOT, example, run_cli

ENV = {"ROUTER_WEBHOOK_API_KEY": "cli-test-key"}


@pytest.fixture
def shipped(tmp_path: Path) -> Path:
    """The repository's router.toml, copied so its ./var lands in tmp_path."""
    target = tmp_path / "router.toml"
    shutil.copy(ROOT / "router.toml", target)
    return target


def test_version_lists_itself() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("event-router 0.1.0")


def test_check_ok(shipped: Path) -> None:
    result = run_cli("check", "-c", str(shipped), env=ENV)
    assert result.returncode == 0, result.stderr
    assert "ok: 1 input(s), 2 output(s), 2 route(s), 60 event schemas" in result.stdout


def test_check_json(shipped: Path) -> None:
    result = run_cli("check", "-c", str(shipped), "--json", env=ENV)
    data = json.loads(result.stdout)
    assert data["ok"] is True and data["outputs"] == {"archive": "file", "crm": "http"}


def test_check_reports_every_error_and_fails(tmp_path: Path) -> None:
    bad = tmp_path / "router.toml"
    bad.write_text(
        '[inputs.a]\ntype = "webhook"\nlisten = "nowhere"\n[outputs.b]\ntype = "http"\nurl = "ftp://x"\n'
        '[[routes]]\nname = "r"\nto = ["c"]\n'
    )
    result = run_cli("check", "-c", str(bad))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert (
        "error: router.toml: inputs.a.listen: 'nowhere' is not host:port (e.g. 127.0.0.1:8787) (plugin webhook)"
        in lines
    )
    assert "error: router.toml: outputs.b.url: 'ftp://x' does not match '^https?://' (plugin http)" in lines
    assert "error: router.toml: routes[0].to[0]: no output named 'c' (outputs: b)" in lines
    assert "Traceback" not in result.stderr


def test_check_missing_secret_env(shipped: Path) -> None:
    result = run_cli("check", "-c", str(shipped), env={"ROUTER_WEBHOOK_API_KEY": ""})
    assert result.returncode == 1  # set but empty would switch the key off: an error like unset
    assert (
        "error: router.toml: inputs.connector.api_key: "
        "the secret from environment variable ROUTER_WEBHOOK_API_KEY is empty (plugin webhook)"
    ) in result.stderr.splitlines()
    import os

    env = {k: v for k, v in os.environ.items() if k != "ROUTER_WEBHOOK_API_KEY"}
    import subprocess
    import sys

    unset = subprocess.run(
        [sys.executable, "-m", "event_router", "check", "-c", str(shipped)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert unset.returncode == 1
    assert "inputs.connector.api_key: environment variable ROUTER_WEBHOOK_API_KEY is not set" in unset.stderr


def test_check_warns_about_plain_secrets(tmp_path: Path) -> None:
    cfg = tmp_path / "router.toml"
    cfg.write_text('[inputs.a]\ntype = "webhook"\nlisten = "127.0.0.1:1"\napi_key = "plain"\n')
    result = run_cli("check", "-c", str(cfg))
    assert result.returncode == 0
    assert "warning: router.toml: inputs.a.api_key: secret written in plain text" in result.stderr
    assert 'plain"' not in result.stderr and "'plain'" not in result.stderr


def test_check_warns_about_credential_headers_only(tmp_path: Path) -> None:
    cfg = tmp_path / "router.toml"
    cfg.write_text(
        '[inputs.a]\ntype = "webhook"\nlisten = "127.0.0.1:1"\napi_key = { env = "K" }\n'
        '[outputs.crm]\ntype = "http"\nurl = "http://127.0.0.1:9/x"\n'
        'headers = { X-Tenant = "acme", Authorization = "Bearer abc123" }\n'
        '[[routes]]\nname = "all"\nto = "crm"\n'
    )
    result = run_cli("check", "-c", str(cfg), env={"K": "key"})
    assert result.returncode == 0, result.stderr
    assert "warning: router.toml: outputs.crm.headers.Authorization: secret written in plain text" in result.stderr
    assert "X-Tenant" not in result.stderr
    assert "abc123" not in result.stderr


def test_dry_run_shows_validation_routes_and_bodies(shipped: Path, tmp_path: Path) -> None:
    event_file = tmp_path / "mail.json"
    event_file.write_text(json.dumps(example("transport.messageReceived")))
    result = run_cli("test", "-c", str(shipped), str(event_file), env=ENV)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["validation"] == {"valid": True, "schema": "transport.messageReceived", "errors": []}
    assert report["routes"] == ["messages to CRM"]
    crm, archive = report["deliveries"]
    assert crm["output"] == "crm" and crm["url"] == "http://127.0.0.1:9000/hooks/transport.messageReceived"
    assert crm["body"]["data"]["content"]["@type"] == "Mail"
    assert archive["output"] == "archive" and archive["path"].endswith(".jsonl")
    assert not (tmp_path / "var").exists() or not any((tmp_path / "var").glob("*.jsonl")), "a dry run writes nothing"


def test_dry_run_invalid_event_and_list(shipped: Path, tmp_path: Path) -> None:
    broken = example("transport.relationshipChanged")
    broken["data"]["status"] = "Sleeping"
    event_file = tmp_path / "events.json"
    event_file.write_text(json.dumps([broken, example("runtime.modulesStarted")]))
    result = run_cli("test", "-c", str(shipped), str(event_file), env=ENV)
    assert result.returncode == 1, "an event that would be dead-lettered fails the dry run"
    bad, ok = json.loads(result.stdout)
    assert bad["validation"]["valid"] is False
    assert any("data.status" in e for e in bad["validation"]["errors"])
    assert bad["dead_letter"]["reason"] == "validation" and bad["deliveries"] == []
    assert ok["routes"] == ["archive everything"]


def test_dry_run_bad_file(shipped: Path, tmp_path: Path) -> None:
    event_file = tmp_path / "bad.json"
    event_file.write_text("{nope")
    result = run_cli("test", "-c", str(shipped), str(event_file), env=ENV)
    assert result.returncode == 1 and "is not valid JSON" in result.stderr


def test_plugins_json_lists_builtins() -> None:
    result = run_cli("plugins", "--json")
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert plugins["builtin.webhook"]["inputs"] == ["webhook"]
    assert plugins["builtin.file"]["outputs"] == ["file"]
    assert plugins["builtin.http"]["builtin"] is True
    assert plugins["builtin.http"]["distribution"] == "enmeshed-event-router"


def test_plugins_can_be_disabled() -> None:
    result = run_cli("plugins", "--json", env={"EVENT_ROUTER_DISABLE_PLUGINS": "builtin.http"})
    names = {p["name"] for p in json.loads(result.stdout)}
    assert "builtin.http" not in names and "builtin.webhook" in names


def test_init_writes_a_config_that_checks(tmp_path: Path) -> None:
    target = tmp_path / "router.toml"
    result = run_cli("init", "-o", str(target))
    assert result.returncode == 0, result.stderr
    assert run_cli("check", "-c", str(target), env=ENV).returncode == 0
    again = run_cli("init", "-o", str(target))
    assert again.returncode == 1 and "exists; use --force" in again.stderr


def test_schemas_lists_60_connector_events(shipped: Path) -> None:
    result = run_cli("schemas", "-c", str(shipped), "--json", env=ENV)
    assert result.returncode == 0, result.stderr
    triggers = {row["trigger"] for row in json.loads(result.stdout)}
    assert len(triggers) == 60  # the 41 of Connector 7.4 and 19 only older Connectors raise
    assert "consumption.relationshipEvent.*" in triggers


def test_status_and_dlq_without_a_spool(shipped: Path) -> None:
    """No router has run with this file: said as such, and nothing is created."""
    expected = f"error: no spool at {shipped.parent}/var/spool.db (router.data_dir: has the router run with this "
    commands = (["status"], ["status", "--json"], ["dlq", "list"], ["dlq", "show", "1"], ["dlq", "replay", "1"])
    for command in (*commands, ["output", "pause", "crm"]):
        result = run_cli(*command, "-c", str(shipped), env=ENV)
        assert result.returncode == 1, (command, result.stderr)
        assert result.stderr.startswith(expected), result.stderr
        assert result.stdout == ""
    assert not (shipped.parent / "var").exists(), "an operator command created the data_dir"
    refuse = run_cli("dlq", "purge", "-c", str(shipped), env=ENV)
    assert refuse.returncode == 2 and "needs ids, a filter, or --all" in refuse.stderr


def test_no_command_prints_help() -> None:
    result = run_cli()
    assert result.returncode == 2 and "COMMAND" in result.stdout
