"""What the core's tests of real routers share beside the test kit (event_router.testing): router.toml pieces the
kit has no builder for, events told apart by their id, a webhook POST that must be taken, a scrape of one
metric, `status --json`, and the rows of a spool table on either backend.

conftest.py loads it as the module `router_helpers` before the test modules import it (with
--import-mode=importlib a sibling module is not on the path)."""

from __future__ import annotations

import json
import re
import sqlite3
import urllib.request
from pathlib import Path
from typing import Any

import psycopg

from event_router.testing import example, post, router_table, run_cli, webhook_input


def numbered_message(n: int) -> dict[str, Any]:
    """The Connector's example `transport.messageReceived` with the message id `MSG<n, 17 digits>`: events a test
    tells apart (and sorts) by their `data.id`."""
    body = example("transport.messageReceived")
    return {**body, "data": {**body["data"], "id": f"MSG{n:017d}"}}


def send_event(port: int, body: dict[str, Any], key: str) -> str:
    """POST `body` to the webhook input on loopback `port` with `key` in `x-api-key`; assert it is taken (202);
    the event id the router gave it."""
    status, answer, _ = post(f"http://127.0.0.1:{port}/events", body, {"x-api-key": key})
    assert status == 202, answer
    return str(answer["id"])


def keyless_webhook(tmp: Path, port: int, *, validation: str | None = None) -> str:
    """router.toml text: `[router]` with its data in `tmp`/var, and a webhook input `connector` on loopback `port`
    that takes events without a key, validating them as `validation` says when given."""
    extra = f'validation = "{validation}"' if validation else ""
    return router_table(data_dir=f"{tmp}/var") + webhook_input(port, api_key=None, extra=extra)


def http_output(name: str, url: str, extra: str = "") -> str:
    """router.toml text: `[outputs.<name>]`, an http output posting to `url`; `extra` lines go into the table."""
    return f'[outputs.{name}]\ntype = "http"\nurl = "{url}"\n{extra}\n'


def route(to: str, *, name: str = "all", extra: str = "") -> str:
    """router.toml text: a `[[routes]]` entry `name` sending every event (or what `extra`'s `match` selects) to
    `to`, a TOML value (an output's name in quotes, or a list of them)."""
    return f'[[routes]]\nname = "{name}"\nto = {to}\n{extra}\n'


#: a `[router.spool]` table on PostgreSQL, the DSN read from $ROUTER_PG_DSN (what `pg_dsn` gives); `lease` is
#: filled in with str.format
POSTGRESQL_SPOOL = '[router.spool]\nbackend = "postgresql"\ndsn = {{ env = "ROUTER_PG_DSN" }}\nlease = "{lease}"\n'


def postgresql_router(port: int, crm_url: str, *, lease: str, max_backoff: str, admin: int | None = None) -> str:
    """router.toml text: a router on the PostgreSQL spool (`POSTGRESQL_SPOOL`) taking webhooks on `port`, every
    event to the http output `crm` at `crm_url`/hooks, 4 at a time, retried without end at most `max_backoff`
    apart; an admin endpoint on `admin` when given."""
    retry = f'retry = {{ initial_backoff = "50ms", max_backoff = "{max_backoff}", max_attempts = 100000 }}'
    return (
        router_table(admin, shutdown_timeout="2s")
        + POSTGRESQL_SPOOL.format(lease=lease)
        + webhook_input(port)
        + http_output("crm", f"{crm_url}/hooks", f"concurrency = 4\n{retry}")
        + route('"crm"')
    )


def metric_values(admin: int, name: str, **labels: str) -> list[float]:
    """The values of the series of `event_router_<name>` whose labels include `labels`, from a real scrape of
    the admin endpoint on loopback `admin`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as response:
        text = response.read().decode()
    values = []
    for line in text.splitlines():
        found = re.fullmatch(rf"event_router_{name}(?:\{{(.*)\}})? (\S+)", line)
        if found is None:
            continue
        shown = dict(re.findall(r'(\w+)="([^"]*)"', found.group(1) or ""))
        if all(shown.get(k) == v for k, v in labels.items()):
            values.append(float(found.group(2)))
    return values


def metric(admin: int, name: str, **labels: str) -> float:
    """The sum of `metric_values` (0 when no such series is shown)."""
    return sum(metric_values(admin, name, **labels))


def status_json(config: Path, env: dict[str, str]) -> dict[str, Any]:
    """What `event-router status --json` says of the router `config` with `env` (over this process's), run as
    a separate process; asserts it exits 0."""
    shown = run_cli("status", "--json", "-c", str(config), env=env)
    assert shown.returncode == 0, shown.stderr
    result: dict[str, Any] = json.loads(shown.stdout)
    return result


def spool_rows(config: Path, env: dict[str, str], table: str, *, event_id: str | None = None) -> int:
    """The rows in the spool table `table` of the router `config` runs with `env`: in the PostgreSQL database
    of `$ROUTER_PG_DSN` when `env` has it (as `router_spool` gives it), else in the SQLite spool in the
    config's `./var`. With `event_id`: only the rows of that event (a table with an `id` column: `events`)."""
    where, args = ("", ()) if event_id is None else (" WHERE id = {mark}", (event_id,))
    if "ROUTER_PG_DSN" in env:
        with psycopg.connect(env["ROUTER_PG_DSN"]) as conn:
            sql = f"SELECT count(*) FROM event_router.{table}" + where.format(mark="%s")
            row = conn.execute(sql, args).fetchone()
            assert row is not None
            return int(row[0])
    lite = sqlite3.connect(config.parent / "var" / "spool.db")
    try:
        return int(lite.execute(f"SELECT COUNT(*) FROM {table}" + where.format(mark="?"), args).fetchone()[0])
    finally:
        lite.close()
