"""Scenarios of the PostgreSQL spool (#18): pg_webhook_file (throughput) and pg_webhook_http_p99 (end to end).

Each runs two routers side by side with the same config but for `[router] spool`: one on the default SQLite
spool, one on a PostgreSQL spool in a scratch database made for the run on the server `ROUTER_PG_DSN` names
(default postgresql://postgres@127.0.0.1:5432/postgres) and dropped after it. Without psycopg or without
a reachable server both are skipped, saying why.

pg_webhook_file also runs a bare insert loop (`_pg_insert.py`, its own process) with psycopg and, when it
is installed, asyncpg: the spool's statements with the group size the PostgreSQL router made in the same
round, in a second scratch database.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from _common import BENCH, PYTHON, child, cpu_seconds, example_body, free_port, rounded, router, rss_mb
from _webhook import (
    ROUTER_ENV,
    Load,
    _count_lines,
    _has_lines,
    _join,
    _median_runs,
    _router_config,
    _send_at_rate,
    _wait,
)

#: the server the scratch databases are made on (as bench/pg_driver.py)
ADMIN_DSN = os.environ.get("ROUTER_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
#: the PostgreSQL router's `[router]` line; its DSN comes from the environment, as in the tests
PG_SPOOL = 'spool = { backend = "postgresql", dsn = { env = "BENCH_PG_DSN" } }'
FILE_OUTPUT = '[outputs.archive]\ntype = "file"\npath = "events.jsonl"'
FILE_ROUTE = '[[routes]]\nname = "archive everything"\nmatch = { trigger = ["**"] }\nto = ["archive"]'
#: how long a backend may keep its statistics before they are visible: one flush per second at most, and the
#: spool's connections end a transaction about every second even when idle (its count, its poll)
STATS_SETTLE = 2.5
#: the bare loop's group when the router's could not be measured (one event per sender at 64 senders)
DEFAULT_GROUP = 64


def unavailable() -> str | None:
    """Why the PostgreSQL scenarios cannot run here (None when they can)."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (the `postgresql` extra: .venv/bin/pip install -e '.[postgresql]')"
    try:
        psycopg.connect(ADMIN_DSN, connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"PostgreSQL is not reachable at {_where(ADMIN_DSN)}: {str(exc).strip()}"
    return None


def _where(dsn: str) -> str:
    from event_router.core.spool.postgresql import describe

    return describe(dsn)


@contextmanager
def scratch_database(tag: str) -> Iterator[str]:
    """A database of its own for one scenario (its DSN), dropped after it whatever happens."""
    import psycopg

    name = f"bench_{tag}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        # a URL: asyncpg reads no key=value string
        yield urllib.parse.urlsplit(ADMIN_DSN)._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def server_facts() -> dict[str, Any]:
    """The settings a commit's cost depends on."""
    import psycopg

    names = ("server_version", "synchronous_commit", "fsync", "wal_sync_method", "commit_delay", "shared_buffers")
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        return {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in names}  # type: ignore[index]


def _spool_schema(dsn: str) -> None:
    """The spool's tables, as its migrations make them (for the bare loop, which has no router to make them)."""
    import psycopg

    from event_router.core.spool.postgresql import MIGRATIONS, NAMESPACE

    with psycopg.connect(dsn) as conn:
        conn.execute(f"CREATE SCHEMA {NAMESPACE}")
        conn.execute(f"SET search_path = {NAMESPACE}")
        for step in sorted(MIGRATIONS):
            conn.execute(MIGRATIONS[step])


class SpoolWatch:
    """What the PostgreSQL router's spool did over a load run, from its database's statistics.

    Storing transactions are counted by the scans of `announced`'s primary key: each group commit that stores
    events inserts their announced keys in one statement (`_write_announcements`), and the benchmark's events
    all announce the same key, so each such statement checks that key once (an index scan of the conflict
    check) and inserts nothing. Events stored are the inserts into `events`.
    """

    def __init__(self, dsn: str):
        import psycopg

        self.conn = psycopg.connect(dsn, autocommit=True)

    def close(self) -> None:
        self.conn.close()

    def read(self) -> dict[str, int]:
        row = self.conn.execute(
            "SELECT (SELECT n_tup_ins FROM pg_stat_user_tables WHERE schemaname = 'event_router' "
            "AND relname = 'events'), (SELECT idx_scan FROM pg_stat_user_indexes WHERE schemaname = 'event_router' "
            "AND indexrelname = 'announced_pkey'), (SELECT xact_commit FROM pg_stat_database "
            "WHERE datname = current_database())"
        ).fetchone()
        assert row is not None
        return {"events": int(row[0] or 0), "stores": int(row[1] or 0), "commits": int(row[2] or 0)}

    def backends(self) -> list[int]:
        """The server processes of the router's connections (its writer and its reader)."""
        rows = self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
        return [int(pid) for (pid,) in rows]


def _backends_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def _watched_run(load: Load, url: str, pid: int, seconds: float, watch: SpoolWatch) -> tuple[dict[str, Any], Any]:
    """One c64 load run of the PostgreSQL router with what its spool did meanwhile (events per storing commit,
    the server processes' CPU)."""
    time.sleep(STATS_SETTLE)  # the previous run's statistics in
    backends = watch.backends()
    before, server_cpu = watch.read(), _backends_cpu(backends)
    started = time.monotonic()
    run = load.run(url, 64, seconds, pid)
    postgres_cpu = _backends_cpu(backends) - server_cpu
    wall = time.monotonic() - started
    time.sleep(STATS_SETTLE)
    after = watch.read()
    events, stores = after["events"] - before["events"], after["stores"] - before["stores"]
    run["postgres_cpu_pct"] = round(100 * postgres_cpu / wall)
    spool = {
        "events": events,
        "storing_commits": stores,
        "commits": after["commits"] - before["commits"],
        "events_per_store": round(events / stores, 1) if stores else None,
    }
    return run, spool


def _bare(driver: str, dsn: str, group: int, seconds: float) -> dict[str, Any]:
    cmd = [PYTHON, str(BENCH / "_pg_insert.py"), driver, dsn, str(group), str(seconds)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the bare {driver} loop failed ({proc.returncode}): {proc.stderr[-800:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _bare_drivers() -> dict[str, str | None]:
    """The drivers of the bare loop: name -> None, or why it is not measured."""
    try:
        import asyncpg  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        return {"psycopg": None, "asyncpg": "not installed (.venv/bin/pip install asyncpg)"}
    return {"psycopg": None, "asyncpg": None}


def _median_bare(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "driver"}
    out["events_per_s_rounds"] = [r["events_per_s"] for r in runs]
    out["group_rounds"] = [r["group"] for r in runs]
    return out


def pg_webhook_file(quick: bool, profile: Path | None = None) -> dict[str, Any]:
    why = unavailable()
    if why is not None:
        return {"skipped": why}
    seconds = 2.0 if quick else 8.0
    warmup = 1
    rounds = 1 if quick else 3
    body = example_body(1200)
    drivers = _bare_drivers()
    with tempfile.TemporaryDirectory(prefix="bench-pgw2f-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        load = Load(body, work)
        dsn = stack.enter_context(scratch_database("spool"))
        bare_dsn = stack.enter_context(scratch_database("bare"))
        _spool_schema(bare_dsn)
        # each router started before the next port is picked: a port picked and not yet bound may be picked again
        sqlite_port, sqlite_config = _router_config(work, FILE_OUTPUT, FILE_ROUTE, name="router-sqlite")
        sq = stack.enter_context(router(sqlite_config, env=ROUTER_ENV))
        pg_port, pg_config = _router_config(work, FILE_OUTPUT, FILE_ROUTE, name="router-pg", router_extra=PG_SPOOL)
        pg = stack.enter_context(router(pg_config, env={**ROUTER_ENV, "BENCH_PG_DSN": dsn}))
        assert sq.proc is not None and pg.proc is not None
        watch = stack.enter_context(closing(SpoolWatch(dsn)))
        targets = {
            "sqlite": (f"http://127.0.0.1:{sqlite_port}/events", sq.proc.pid),
            "postgresql": (f"http://127.0.0.1:{pg_port}/events", pg.proc.pid),
        }
        results: dict[str, dict[int, list[dict[str, Any]]]] = {name: {1: [], 64: []} for name in targets}
        spool_rounds: list[dict[str, Any]] = []
        bare: dict[str, list[dict[str, Any]]] = {d: [] for d, why_not in drivers.items() if why_not is None}
        warm = {name: load.run(url, 8, warmup, pid) for name, (url, pid) in targets.items()}
        for round_no in range(rounds):
            for conns in (1, 64):
                for name, (url, pid) in targets.items():
                    if name == "postgresql" and conns == 64:
                        run, spool = _watched_run(load, url, pid, seconds, watch)
                        spool_rounds.append(spool)
                    else:
                        run = load.run(url, conns, seconds, pid)
                    results[name][conns].append(run)
            measured = spool_rounds[-1]["events_per_store"]
            group = max(1, round(measured)) if measured else DEFAULT_GROUP
            # the drivers' order alternates: a round's second loop finds the first one's rows in the tables
            for driver in list(bare)[:: 1 if round_no % 2 == 0 else -1]:
                bare[driver].append(_bare(driver, bare_dsn, group, seconds))
        checked = {}
        for name, config in (("sqlite", sqlite_config), ("postgresql", pg_config)):
            runs = (warm[name], *results[name][1], *results[name][64])
            accepted = sum(r["requests"] - r["errors"] for r in runs)
            lines = config.parent / "events.jsonl"
            _wait(partial(_has_lines, lines, accepted), 120)
            checked[name] = {"accepted": accepted, "file_lines": _count_lines(lines)}
        rss = {"sqlite_router_mb": rss_mb(sq.proc.pid), "postgresql_router_mb": rss_mb(pg.proc.pid)}
        profile_top = None
        if profile is not None:
            from _webhook import _profile

            profile_top = _profile(load, targets["postgresql"][0], pg.proc.pid, seconds, profile, "pg_webhook_file")
        facts = server_facts()
    summary = {name: {f"c{c}": _median_runs(runs) for c, runs in by_c.items()} for name, by_c in results.items()}
    p64, s64 = summary["postgresql"]["c64"]["events_per_s"], summary["sqlite"]["c64"]["events_per_s"]
    p1, s1 = summary["postgresql"]["c1"]["events_per_s"], summary["sqlite"]["c1"]["events_per_s"]
    stores = [s["events_per_store"] for s in spool_rounds if s["events_per_store"]]
    bare_summary: dict[str, Any] = {d: _median_bare(runs) for d, runs in bare.items()}
    for driver, why_not in drivers.items():
        if why_not is not None:
            bare_summary[driver] = f"unavailable: {why_not}"
    psy = bare_summary["psycopg"]["events_per_s"]
    result: dict[str, Any] = {
        "loadgen": load.name,
        "body_bytes": len(body),
        "seconds_per_run": seconds,
        "rounds": rounds,
        "postgresql": facts,
        "router": summary["postgresql"],
        "baseline": {"what": "the same router on the SQLite spool, same run", **summary["sqlite"]},
        "ratio": rounded(p64 / s64 if s64 else None, 3),
        "ratio_of": "router on PostgreSQL / router on SQLite, events/s at 64 concurrent senders",
        "ratio_c1": rounded(p1 / s1 if s1 else None, 3),
        "target": "ratio >= 0.5",
        "met": bool(s64) and p64 / s64 >= 0.5,
        "spool": {
            "events_per_store": statistics.median(stores) if stores else None,
            "rounds": spool_rounds,
        },
        "bare_insert": bare_summary,
        "ratio_to_bare": rounded(p64 / psy if psy else None, 3),
        "ratio_to_bare_of": "router on PostgreSQL at 64 senders / bare psycopg insert loop at its group size, events/s",
        "checked": checked,
        "rss_after": rss,
    }
    if isinstance(bare_summary.get("asyncpg"), dict) and psy:
        result["asyncpg_to_psycopg"] = rounded(bare_summary["asyncpg"]["events_per_s"] / psy, 3)
    if profile_top is not None:
        result["profile_top"] = profile_top
    return result


HTTP_ROUTE = '[[routes]]\nname = "everything to the target"\nmatch = { trigger = ["**"] }\nto = ["target"]'


def pg_webhook_http_p99(quick: bool) -> dict[str, Any]:
    why = unavailable()
    if why is not None:
        return {"skipped": why}
    seconds = 3.0 if quick else 10.0
    body = example_body(1200)
    with tempfile.TemporaryDirectory(prefix="bench-pglat-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        body_file = work / "body.json"
        body_file.write_bytes(body)
        dsn = stack.enter_context(scratch_database("lat"))
        # each server started before the next port is picked: a port picked and not yet bound may be picked again
        target_port = free_port()
        stack.enter_context(child([PYTHON, str(BENCH / "_servers.py"), "target", str(target_port)], port=target_port))
        output = f'[outputs.target]\ntype = "http"\nurl = "http://127.0.0.1:{target_port}/hook"'
        sqlite_port, sqlite_config = _router_config(work, output, HTTP_ROUTE, name="router-sqlite")
        stack.enter_context(router(sqlite_config, env=ROUTER_ENV))
        pg_port, pg_config = _router_config(work, output, HTTP_ROUTE, name="router-pg", router_extra=PG_SPOOL)
        stack.enter_context(router(pg_config, env={**ROUTER_ENV, "BENCH_PG_DSN": dsn}))
        direct = _join(
            _send_at_rate(f"http://127.0.0.1:{target_port}/hook", body_file, seconds, "header"), target_port, 30
        )
        on_sqlite = _join(
            _send_at_rate(f"http://127.0.0.1:{sqlite_port}/events", body_file, seconds, "response"), target_port, 60
        )
        on_pg = _join(
            _send_at_rate(f"http://127.0.0.1:{pg_port}/events", body_file, seconds, "response"), target_port, 60
        )
        facts = server_facts()
    p99, base_p99, sqlite_p99 = on_pg["p99_ms"], direct["p99_ms"], on_sqlite["p99_ms"]
    return {
        "rate_per_s": 1000,
        "seconds": seconds,
        "postgresql": facts,
        "router": on_pg,
        "baseline": direct,
        "ratio": rounded(p99 / base_p99 if p99 and base_p99 else None, 2),
        "ratio_of": "router on PostgreSQL p99 / direct-POST p99 (lower is better)",
        "peers": {"sqlite_router": on_sqlite},
        "ratio_to_sqlite": rounded(p99 / sqlite_p99 if p99 and sqlite_p99 else None, 2),
        "ratio_to_sqlite_of": "router on PostgreSQL p99 / the same router on SQLite p99, same run",
        "target": "router on PostgreSQL p99 < 20 ms",
        "met": p99 is not None and p99 < 20 and on_pg["received"] == on_pg["accepted"],
    }
