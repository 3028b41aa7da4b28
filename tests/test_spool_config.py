"""`[router] spool`: the PostgreSQL spool chosen in router.toml through the one loader (key-path errors, its
connection string a secret reference), the commands that read it (`status`, `dlq` resolve that one secret
and no other), and `check --connect`, which tries the database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from event_router.config import ConfigErrors, build_config
from event_router.config.secrets import SecretsMode
from event_router.core.model import RouterConfig
from event_router.plugin_loader import PluginRegistry, load_plugins
from event_router.testing import (
    RouterProcess,
    archive_all,
    example,
    free_port,
    post,
    read_jsonl,
    readyz,
    router_table,
    run_cli,
    wait_for,
    webhook_input,
)

PASSWORD = "pg-secret-pw"


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    return load_plugins(entry_points=False)


def config_text(spool: str, *, data_dir: str = "./var") -> str:
    return f"""
[router]
data_dir = "{data_dir}"
spool = {spool}
[inputs.hook]
type = "webhook"
listen = "127.0.0.1:0"
api_key = {{ env = "HOOK_KEY" }}
[outputs.archive]
type = "file"
path = "./var/events.jsonl"
[[routes]]
name = "all"
to = "archive"
"""


def build(text: str, tmp_path: Path, registry: PluginRegistry, secrets: SecretsMode = "resolve") -> RouterConfig:
    return build_config(tomllib.loads(text), path=tmp_path / "router.toml", registry=registry, secrets=secrets)


def errors_of(text: str, tmp_path: Path, registry: PluginRegistry, secrets: SecretsMode = "resolve") -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        build(text, tmp_path, registry, secrets)
    return [str(e) for e in info.value.errors]


def test_the_sqlite_spool_needs_no_setting(
    tmp_path: Path, registry: PluginRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_KEY", "k")
    config = build(config_text('{ backend = "sqlite" }'), tmp_path, registry)
    assert (config.spool.backend, config.spool.dsn) == ("sqlite", None)
    without = build(config_text("{}").replace("spool = {}\n", ""), tmp_path, registry)
    assert without.spool == config.spool


def test_the_postgresql_spool_reads_its_dsn_from_a_reference(
    tmp_path: Path, registry: PluginRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_KEY", "k")
    monkeypatch.setenv("ROUTER_PG_DSN", f"postgresql://router:{PASSWORD}@db.example:5433/events")
    text = config_text('{ backend = "postgresql", dsn = { env = "ROUTER_PG_DSN" }, lease = "45s" }')
    config = build(text, tmp_path, registry)
    assert (config.spool.backend, config.spool.lease) == ("postgresql", 45.0)
    assert config.spool.dsn == f"postgresql://router:{PASSWORD}@db.example:5433/events"
    assert PASSWORD not in repr(config.spool), "the settings' repr hides the connection string"
    assert not config.warnings, "a reference is not plain text"


@pytest.mark.parametrize(
    ("spool", "expected"),
    [
        pytest.param(
            '{ backend = "postgresql" }',
            "router.toml: router.spool.dsn: missing: the PostgreSQL spool needs its connection string",
            id="no-dsn",
        ),
        pytest.param(
            '{ backend = "postgresql", dsn = { env = "NOT_SET_ANYWHERE" } }',
            "router.toml: router.spool.dsn: environment variable NOT_SET_ANYWHERE is not set",
            id="unset-variable",
        ),
        pytest.param(
            '{ backend = "postgresql", dsn = "host=db dbname" }',
            "router.toml: router.spool.dsn: not a PostgreSQL connection string (a postgresql://user@host/db URL or "
            'key=value pairs): missing "=" after "dbname"',
            id="unreadable-dsn",
        ),
        pytest.param(
            '{ backend = "postgresql", dsn = "postgresql://db.example/events", lease = "1s" }',
            "router.toml: router.spool.lease: 1s is shorter than 3s",
            id="lease-too-short",
        ),
        pytest.param(
            '{ backend = "sqlite", dsn = "postgresql://db.example/events" }',
            'router.toml: router.spool.dsn: only for backend = "postgresql"',
            id="dsn-on-sqlite",
        ),
        pytest.param(
            '{ backend = "mysql" }',
            "router.toml: router.spool.backend: 'mysql' is not one of",
            id="unknown-backend",
        ),
        pytest.param(
            '{ backend = "postgresql", dns = "postgresql://db.example/events" }',
            "router.toml: router.spool: unknown key 'dns' (allowed: backend, dsn, lease)",
            id="misspelt-key",
        ),
    ],
)
def test_a_broken_spool_table_names_the_key(
    spool: str, expected: str, tmp_path: Path, registry: PluginRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_KEY", "k")
    messages = errors_of(config_text(spool), tmp_path, registry)
    assert any(expected in m for m in messages), messages


def test_plain_text_dsn_warns_only_when_it_holds_a_password(
    tmp_path: Path, registry: PluginRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_KEY", "k")
    socket_dsn = build(
        config_text('{ backend = "postgresql", dsn = "dbname=events host=/run/postgresql" }'), tmp_path, registry
    )
    assert socket_dsn.warnings == ()
    with_password = build(
        config_text(f'{{ backend = "postgresql", dsn = "postgresql://router:{PASSWORD}@db/events" }}'),
        tmp_path,
        registry,
    )
    (warning,) = with_password.warnings
    assert "router.spool.dsn: secret written in plain text" in warning and PASSWORD not in warning


def test_commands_that_open_the_spool_read_its_dsn_and_no_other_secret(
    tmp_path: Path, registry: PluginRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "skip" (test, schemas, reload, check --no-secrets) reads no secret; "spool" (status, dlq) reads the
    connection string, the only secret they need, and leaves the inputs' and outputs' alone."""
    monkeypatch.delenv("HOOK_KEY", raising=False)
    monkeypatch.delenv("ROUTER_PG_DSN", raising=False)
    text = config_text('{ backend = "postgresql", dsn = { env = "ROUTER_PG_DSN" } }')
    skipped = build(text, tmp_path, registry, "skip")
    assert skipped.unresolved_secrets == ("router.spool.dsn", "inputs.hook.api_key")
    (missing,) = errors_of(text, tmp_path, registry, "spool")
    assert missing == (
        "router.toml: router.spool.dsn: environment variable ROUTER_PG_DSN is not set (status, dlq, replay, output "
        "and check --connect read the spool's database: of the secrets, they need this one)"
    )
    monkeypatch.setenv("ROUTER_PG_DSN", "postgresql://router@db.example/events")
    spool_only = build(text, tmp_path, registry, "spool")
    assert spool_only.spool.dsn == "postgresql://router@db.example/events"
    assert spool_only.unresolved_secrets == ("inputs.hook.api_key",)


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "router.toml"
    config.write_text(
        router_table()
        + webhook_input(free_port())
        + """
[router.spool]
backend = "postgresql"
dsn = { env = "ROUTER_PG_DSN" }

[outputs.archive]
type = "file"
path = "./var/events.jsonl"
[[routes]]
name = "all"
to = "archive"
"""
    )
    return config


def with_password(dsn: str) -> str:
    """`dsn` with a password (trust authentication ignores it): the tests see that no output shows it."""
    return dsn.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@")


def test_check_connect_tries_the_database(tmp_path: Path, pg_dsn: str) -> None:
    config = write_config(tmp_path)
    env = {"ROUTER_PG_DSN": with_password(pg_dsn), "ROUTER_WEBHOOK_API_KEY": "k"}
    plain = run_cli("check", "-c", str(config), env=env)
    assert plain.returncode == 0, plain.stderr
    where = pg_dsn  # as the router shows it: the password left out
    assert f"spool (postgresql): {where} (not tried: --connect tries it)" in plain.stdout
    tried = run_cli("check", "--connect", "-c", str(config), env=env)
    assert tried.returncode == 0, tried.stderr
    assert f"spool (postgresql): {where}: reachable; no spool yet" in tried.stdout
    as_json = run_cli("check", "--connect", "--json", "-c", str(config), env=env)
    assert json.loads(as_json.stdout)["spool"]["connected"] is True
    # --no-secrets --connect: the connection string is the one secret read (the webhook's key is not set)
    only_dsn = run_cli("check", "--no-secrets", "--connect", "-c", str(config), env={"ROUTER_PG_DSN": pg_dsn})
    assert only_dsn.returncode == 0, only_dsn.stderr
    assert "reachable" in only_dsn.stdout
    for run in (plain, tried, as_json, only_dsn):
        assert PASSWORD not in run.stdout + run.stderr
    # without it, the error says which commands need it and the hint does not suggest --no-secrets, given already
    env_without = {k: v for k, v in os.environ.items() if k not in ("ROUTER_PG_DSN", "ROUTER_WEBHOOK_API_KEY")}
    without = subprocess.run(
        [sys.executable, "-m", "event_router", "check", "--no-secrets", "--connect", "-c", str(config)],
        env=env_without,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert without.returncode == 1
    assert without.stderr.splitlines() == [
        "error: router.toml: router.spool.dsn: environment variable ROUTER_PG_DSN is not set (status, dlq, replay, "
        "output and check --connect read the spool's database: of the secrets, they need this one)",
        "hint: --connect reads the spool's connection string, also with --no-secrets: set it, or leave out --connect",
    ]


def test_check_connect_says_why_the_database_cannot_be_reached(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    dsn = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/events?connect_timeout=3"
    config = write_config(tmp_path)
    env = {"ROUTER_PG_DSN": dsn, "ROUTER_WEBHOOK_API_KEY": "k"}
    refused = run_cli("check", "--connect", "-c", str(config), env=env)
    assert refused.returncode == 1
    assert refused.stderr.startswith(
        f"error: router.toml: router.spool.dsn: cannot connect to the spool database postgresql://postgres@127.0.0.1:{port}/events"
    ), refused.stderr
    assert PASSWORD not in refused.stdout + refused.stderr
    assert run_cli("check", "-c", str(config), env=env).returncode == 0, "without --connect nothing is tried"
    # `run` names the same key, on its `error:` line and in its `router failed to start` record
    run = run_cli("run", "-c", str(config), env=env)
    assert run.returncode == 1
    lines = run.stderr.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == [
        f"error: router.toml: router.spool.dsn: cannot connect to the spool database postgresql://postgres@127.0.0.1:{port}/events"
        f': connection failed: connection to server at "127.0.0.1", port {port} failed: '
        "Connection refused"
    ], run.stderr
    failed = [json.loads(line) for line in lines if line.startswith("{")]
    assert [r["key"] for r in failed if r["msg"] == "router failed to start"] == ["router.spool.dsn"], run.stderr
    assert PASSWORD not in run.stdout + run.stderr


def test_a_router_without_the_driver_names_the_extra(tmp_path: Path) -> None:
    """The `postgresql` extra missing: the config is refused at `router.spool.backend`, saying what to install
    (psycopg hidden from the import system in a subprocess)."""
    config = write_config(tmp_path)
    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        "from event_router.ops.cli import main\n"
        f"sys.exit(main(['check', '-c', {str(config)!r}]))\n"
    )
    import subprocess

    env = {**os.environ, "ROUTER_PG_DSN": "postgresql://db.example/events", "ROUTER_WEBHOOK_API_KEY": "k"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 1
    assert "router.spool.backend: the PostgreSQL spool needs its driver: install enmeshed-event-router[postgresql]" in (
        run.stderr
    )


@pytest.mark.slow
def test_a_reload_that_changes_the_spool_keeps_the_running_one_and_says_so(
    tmp_path: Path, router_spool: tuple[str, dict[str, str]]
) -> None:
    """A reload (the admin endpoint, then SIGHUP) whose file names another spool: the rest of the file is
    applied, the router goes on storing in the spool it started with, and the log, `event-router reload` and
    the reload's answer say the spool changes at the next restart. The other spool is one the router could
    not use, so a switch would show: SQLite's data_dir for a router on PostgreSQL (no spool.db appears), a
    database nobody made for a router on SQLite (the webhook would answer 503)."""
    spool, env = router_spool
    other = (
        'spool = { backend = "postgresql", dsn = "postgresql://postgres@127.0.0.1:5432/no_such_spool" }'
        if not spool
        else ""
    )
    port, admin = free_port(), free_port()
    env = {**env, "ROUTER_WEBHOOK_API_KEY": "k"}
    outputs = archive_all("./var/events.jsonl")
    extra = archive_all("./var/extra.jsonl", name="extra").replace('name = "all"', 'name = "extra"')
    config = tmp_path / "router.toml"
    config.write_text(router_table(admin, extra=spool) + webhook_input(port) + outputs)
    with RouterProcess(config, env=env) as router:

        def send() -> str:
            status, body, _ = post(
                f"http://127.0.0.1:{port}/events", example("transport.messageReceived"), {"x-api-key": "k"}
            )
            assert status == 202, body
            event_id: str = body["id"]
            return event_id

        first = send()
        config.write_text(router_table(admin, extra=other) + webhook_input(port) + outputs + extra)
        reloaded = run_cli("reload", "-c", str(config), env=env)
        assert reloaded.returncode == 0, reloaded.stderr
        assert reloaded.stdout.strip() == "reloaded"
        sqlite_file = str(tmp_path / "var" / "spool.db")
        running, configured = (pg_location(env), sqlite_file) if spool else (sqlite_file, "no_such_spool")
        said = (
            "router.spool changed: it takes effect at the next restart; until then the router keeps its running "
            f"spool ({running})"
        )
        assert reloaded.stderr.strip() == f"warning: {said}", reloaded.stderr
        warned = router.wait_log("router.spool changed")
        assert warned["level"] == "warning" and warned["msg"] == said
        assert warned["running"] == running and configured in warned["configured"], warned
        router.reload()  # SIGHUP: the same
        router.wait_log("router.spool changed", count=2)
        router.wait_log("configuration reloaded", count=2)
        statuses = [m for m in router.poll_messages() if m.startswith("STATUS=") and said in m]
        assert len(statuses) == 2, router.messages  # systemctl status shows it after each reload
        second = send()
        wait_for(lambda: [e["id"] for e in read_jsonl_or_none(tmp_path / "var" / "extra.jsonl")] == [second])
        wait_for(lambda: [e["id"] for e in read_jsonl_or_none(tmp_path / "var" / "events.jsonl")] == [first, second])
        if spool:  # still on PostgreSQL: no SQLite spool was made in data_dir
            assert not (tmp_path / "var" / "spool.db").exists()
        status, body = readyz(admin)
        assert status == 200 and body["spool"]["writable"] is True, body
        assert router.terminate() == 0


def pg_location(env: dict[str, str]) -> str:
    from event_router.core.spool.postgresql import describe

    return describe(env["ROUTER_PG_DSN"])


def read_jsonl_or_none(path: Path) -> list[dict[str, object]]:
    return read_jsonl(path) if path.exists() else []


@pytest.mark.slow
def test_a_reload_that_changes_data_dir_keeps_the_running_one_and_says_so(
    tmp_path: Path, router_spool: tuple[str, dict[str, str]]
) -> None:
    """A changed `data_dir` is not applied either: on SQLite it is the spool's place (the spool warning says
    so); on PostgreSQL the router says data_dir itself waits for the next restart. The new directory is not
    made, and the router goes on."""
    spool, env = router_spool
    port, admin = free_port(), free_port()
    env = {**env, "ROUTER_WEBHOOK_API_KEY": "k"}
    config = tmp_path / "router.toml"
    config.write_text(router_table(admin, extra=spool) + webhook_input(port) + archive_all("./events.jsonl"))
    with RouterProcess(config, env=env) as router:
        config.write_text(
            router_table(admin, data_dir="./elsewhere", extra=spool)
            + webhook_input(port)
            + archive_all("./events.jsonl")
        )
        reloaded = run_cli("reload", "-c", str(config), env=env)
        assert reloaded.returncode == 0, reloaded.stderr
        var = tmp_path / "var"
        said = (
            f"router.data_dir changed: it takes effect at the next restart; until then the router keeps {var}"
            if spool
            else "router.spool changed: it takes effect at the next restart; until then the router keeps its "
            f"running spool ({var / 'spool.db'})"
        )
        assert reloaded.stderr.strip() == f"warning: {said}", reloaded.stderr
        assert router.wait_log("configuration reloaded")["warnings"] == [said]
        status, body, _ = post(
            f"http://127.0.0.1:{port}/events", example("transport.messageReceived"), {"x-api-key": "k"}
        )
        assert status == 202, body
        wait_for(lambda: [e["id"] for e in read_jsonl_or_none(tmp_path / "events.jsonl")] == [body["id"]])
        assert not (tmp_path / "elsewhere").exists()
        assert router.terminate() == 0
