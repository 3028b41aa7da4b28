"""Render the latest result of each scenario in a results file as the Markdown table of bench/RESULTS.md.

A peer measured in the same rounds (Node-RED in webhook_to_file) gets a row of its own below its scenario.

.venv/bin/python bench/report.py [bench/out/results.jsonl] [--quick | --full]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ORDER = [
    "webhook_to_file",
    "webhook_to_file_controlled",
    "amqp_to_file",
    "webhook_to_http_latency",
    "routing_validation",
    "memory",
    "startup",
    "spool_group_commit",
    "recovery",
    "pg_webhook_file",
    "pg_webhook_http_p99",
]


def _get(result: dict[str, Any], *path: str) -> Any:
    node: Any = result
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value >= 100:
        value = round(value)
    if isinstance(value, int) and value >= 10_000:
        return f"{value:,}{unit}"
    return f"{value}{unit}"


def _met(result: dict[str, Any]) -> str:
    met = result.get("met")
    return "-" if met is None else ("yes" if met else "**no**")


def row(r: dict[str, Any]) -> tuple[str, str, str, str, str, str]:
    """(scenario, router, baseline, ratio, target, met) cells."""
    name = r["scenario"]
    if "skipped" in r or "error" in r:
        return name, r.get("skipped") or f"error: {r['error']}", "", "", "", ""
    ratio = _fmt(r.get("ratio"))
    if name in ("webhook_to_file", "webhook_to_file_controlled"):
        rt, bl = r["router"], r["baseline"]
        router = (
            f"c64: {_fmt(rt['c64']['events_per_s'])} ev/s, p50 {rt['c64']['p50_ms']} / p99 {rt['c64']['p99_ms']} ms;"
            f" c1: {_fmt(rt['c1']['events_per_s'])} ev/s, p50 {rt['c1']['p50_ms']} / p99 {rt['c1']['p99_ms']} ms"
        )
        base = (
            f"c64: {_fmt(bl['c64']['events_per_s'])} ev/s, p50 {bl['c64']['p50_ms']} / p99 {bl['c64']['p99_ms']} ms;"
            f" c1: {_fmt(bl['c1']['events_per_s'])} ev/s, p50 {bl['c1']['p50_ms']} / p99 {bl['c1']['p99_ms']} ms"
        )
        ratio = f"{ratio} (c1: {_fmt(r.get('ratio_c1'))})"
        if "router_in_process" in r:  # results from before front processes were removed
            ip = r["router_in_process"]
            router = (
                f"processes = {r['processes']}: {router}; in-process: c64 {_fmt(ip['c64']['events_per_s'])} ev/s,"
                f" c1 {_fmt(ip['c1']['events_per_s'])} ev/s"
            )
            ratio = f"{ratio}; in-process {_fmt(r.get('ratio_in_process'))}"
    elif name == "amqp_to_file":
        router = f"{_fmt(r.get('router_msgs_per_s'))} msg/s"
        base = f"{_fmt(r.get('baseline_msgs_per_s'))} msg/s"
    elif name == "webhook_to_http_latency":
        rt, bl = r["router"], r["baseline"]
        router = (
            f"p50 {_fmt(rt['p50_ms'])} / p99 {_fmt(rt['p99_ms'])} ms at 1,000 ev/s"
            f" ({rt['received']}/{rt['accepted']} received)"
        )
        base = f"p50 {bl['p50_ms']} / p99 {bl['p99_ms']} ms"
        if "router_in_process" in r:
            ip = r["router_in_process"]
            router = (
                f"processes = {r['processes']}: {router}; in-process: p50 {_fmt(ip['p50_ms'])} /"
                f" p99 {_fmt(ip['p99_ms'])} ms"
            )
    elif name == "routing_validation":
        router = (
            f"{_fmt(r['router']['events_per_s'])} ev/s best, {_fmt(r['router']['events_per_s_median'])} median"
            f" ({r['router']['us_per_event']} µs/event, {r['routes']} routes)"
        )
        base = f"{_fmt(r['baseline']['events_per_s'])} ev/s JSON round-trip"
    elif name == "memory":
        idle, full = r["idle"], r["backlog"]
        router = (
            f"idle {idle['rss_mb']} MB; {full['events']:,} pending: {full['rss_mb']} MB after"
            f" {full['window_s']:g} s (slope {full.get('rss_slope_mb_per_s', '-')} MB/s), peak {full['peak_mb']} MB;"
            f" ready in {full['ready_seconds']} s"
        )
        base = ""
        ratio = ""
    elif name == "startup":
        s = r["router"]
        router = (
            f"{s['ready_seconds_median']} s median ({s['ready_seconds_min']}-{s['ready_seconds_max']});"
            f" {s['in_process_seconds_median']} s in-process"
        )
        base = ""
        ratio = ""
    elif name == "spool_group_commit":
        g, s = r["router"], r["baseline"]
        router = f"{_fmt(g['events_per_s'])} ev/s, 64 writers ({g['events_per_commit']} events/commit)"
        base = f"{_fmt(s['events_per_s'])} ev/s, one commit per event"
    elif name == "recovery":
        rt = r["router"]
        router = (
            f"{_fmt(r['events'])} missed events stored {rt['stored_seconds']} s after start (the look:"
            f" {rt['look_seconds']} s, {_fmt(rt['events_per_s'])} ev/s); a look that finds nothing:"
            f" {rt['idle_look_cpu_seconds']} s CPU"
        )
        base = ""
        ratio = ""
    elif name == "pg_webhook_file":
        router, base = f"PostgreSQL spool: {_c(r['router'])}", f"SQLite spool: {_c(r['baseline'])}"
        ratio = f"{ratio} (c1: {_fmt(r.get('ratio_c1'))})"
    elif name == "pg_webhook_http_p99":
        rt, bl = r["router"], r["baseline"]
        router = (
            f"PostgreSQL spool: p50 {_fmt(rt['p50_ms'])} / p99 {_fmt(rt['p99_ms'])} ms at 1,000 ev/s"
            f" ({rt['received']}/{rt['accepted']} received)"
        )
        base = f"direct POST: p50 {bl['p50_ms']} / p99 {bl['p99_ms']} ms"
    else:
        router, base = json.dumps(r.get("router")), json.dumps(r.get("baseline"))
    return name, router, base, ratio, r.get("target", ""), _met(r)


def _c(fig: dict[str, Any]) -> str:
    return (
        f"c64: {_fmt(fig['c64']['events_per_s'])} ev/s, p50 {fig['c64']['p50_ms']} / p99 {fig['c64']['p99_ms']} ms;"
        f" c1: {_fmt(fig['c1']['events_per_s'])} ev/s, p50 {fig['c1']['p50_ms']} / p99 {fig['c1']['p99_ms']} ms"
    )


def _pg_peer_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """pg_webhook_file's bare insert loops and pg_webhook_http_p99's SQLite router, each in a row of its own."""
    name = r["scenario"]
    if "skipped" in r or "error" in r:
        return []
    if name == "pg_webhook_http_p99":
        sq = r["peers"]["sqlite_router"]
        rt = r["router"]
        return [
            (
                f"{name} vs SQLite spool",
                f"PostgreSQL spool: p99 {_fmt(rt['p99_ms'])} ms",
                f"SQLite spool: p50 {_fmt(sq['p50_ms'])} / p99 {_fmt(sq['p99_ms'])} ms"
                f" ({sq['received']}/{sq['accepted']} received)",
                _fmt(r.get("ratio_to_sqlite")),
                "",
                "-",
            )
        ]
    bare = r["bare_insert"]
    cells = []
    for driver in ("psycopg", "asyncpg"):
        fig = bare.get(driver)
        if isinstance(fig, dict):
            cells.append(
                f"{driver}: {_fmt(fig['events_per_s'])} ev/s ({_fmt(fig['group'])} events/commit,"
                f" p50 {fig['group_ms_p50']} ms per commit)"
            )
        elif fig is not None:
            cells.append(f"{driver}: {fig}")
    spool = r["spool"]
    router = f"c64 {_fmt(r['router']['c64']['events_per_s'])} ev/s ({_fmt(spool['events_per_store'])} events/commit)"
    ratio = _fmt(r.get("ratio_to_bare"))
    if r.get("asyncpg_to_psycopg") is not None:
        ratio += f"; asyncpg / psycopg {_fmt(r['asyncpg_to_psycopg'])}"
    return [(f"{name} vs bare insert loop", router, "; ".join(cells), ratio, "", "-")]


def peer_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """Rows of the peers measured in the same rounds as a scenario (webhook_to_file: Node-RED), after its own."""
    name = r["scenario"]
    if name.startswith("pg_"):
        return _pg_peer_rows(r)
    if "node_red" in r:  # not measured: say why
        return [(f"{name} vs Node-RED", str(r["node_red"]), "", "", "", "")]
    nr = _get(r, "peers", "node-red")
    if not isinstance(nr, dict):
        return []
    rt = r["router"]["c64"]
    router = f"c64 {_fmt(rt['events_per_s'])} ev/s, p99 {rt['p99_ms']} ms"
    ratio = f"{_fmt(r.get('ratio_to_node_red'))} (c1: {_fmt(r.get('ratio_to_node_red_c1'))})"
    if "router_in_process" in r:  # results from before front processes were removed
        ip = r["router_in_process"]["c64"]
        router = (
            f"processes = {r['processes']}: {router}; in-process: c64 {_fmt(ip['events_per_s'])} ev/s,"
            f" p99 {ip['p99_ms']} ms"
        )
        ratio = f"{ratio}; in-process {_fmt(r.get('ratio_to_node_red_in_process'))}"
    peer = f"Node-RED {nr['version']} (no fsync): {_c(nr)}"
    met = r.get("node_red_met")
    met_cell = "-" if met is None else ("yes" if met else "**no**")
    met_ip = r.get("node_red_met_in_process")
    if met_ip is not None:
        met_cell += f"; in-process {'yes' if met_ip else '**no**'}"
    return [(f"{name} vs Node-RED", router, peer, ratio, r.get("node_red_target", ""), met_cell)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("results", nargs="?", type=Path, default=Path(__file__).parent / "out" / "results.jsonl")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="only --quick results")
    mode.add_argument("--full", action="store_true", help="only full results")
    args = parser.parse_args()
    latest: dict[str, dict[str, Any]] = {}
    for line in args.results.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        if (args.quick and not r.get("quick")) or (args.full and r.get("quick")):
            continue
        latest[r["scenario"]] = r
    results = [latest[n] for n in ORDER if n in latest]
    if not results:
        raise SystemExit("no results")
    first = results[0]
    m = first["machine"]
    print(f"Run of {first['date']} ({'quick' if first['quick'] else 'full'}), {m['cores']} cores,")
    print(f"Python {m['python']}, {m['platform']}.\n")
    print("| scenario | router | baseline (same run) | ratio | target | met |")
    print("|---|---|---|---|---|---|")
    for r in results:
        for cells in (row(r), *peer_rows(r)):
            print("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")


if __name__ == "__main__":
    main()
