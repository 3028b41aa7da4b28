"""Scenarios over real HTTP on loopback: webhook_to_file (throughput) and webhook_to_http_latency (end to end).

The load generator is `wrk` (C, epoll, one thread) when it is installed: on a 2-core machine a Python client
would need about as much CPU per request as the server it measures and would cap both figures. Without
`wrk` the aiohttp client in `_loadgen.py` is used and the result says so (`"loadgen": "aiohttp"`).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

from _common import (
    BENCH,
    PYTHON,
    child,
    example_body,
    free_port,
    percentile,
    rounded,
    router,
    rss_mb,
    tree_cpu_seconds,
)
from _nodered import NODE_RED_VERSION, Unavailable, node_version
from _nodered import install as install_node_red
from _nodered import running as node_red

API_KEY = "bench-key"
ROUTER_ENV = {"BENCH_API_KEY": API_KEY}

WRK_SCRIPT = """\
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-api-key"] = "{key}"
done = function(summary, latency, requests)
  io.write(string.format(
    'BENCH_JSON {{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d,'
    .. ' "timeout": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}}\\n',
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.status, summary.errors.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def webhook_toml(port: int, outputs: str, routes: str, router_extra: str = "") -> str:
    return f"""
[router]
data_dir = "var"
{router_extra}
{telemetry_table()}

[inputs.connector]
type = "webhook"
listen = "127.0.0.1:{port}"
path = "/events"
api_key = {{ env = "BENCH_API_KEY" }}
validation = "strict"

{outputs}

{routes}
"""


def telemetry_table() -> str:
    """`[router.telemetry]` for the routers measured, with `run.py --telemetry` (BENCH_TELEMETRY_ENDPOINT: the
    collector spans go to); nothing otherwise: telemetry off, as by default."""
    endpoint = os.environ.get("BENCH_TELEMETRY_ENDPOINT")
    return f'[router.telemetry]\nendpoint = "{endpoint}"\n' if endpoint else ""


def _router_config(
    work: Path, outputs: str, routes: str, *, name: str = "router", router_extra: str = ""
) -> tuple[int, Path]:
    """The port and config of a router measured, in `work/<name>`; `router_extra`: more `[router]` keys."""
    port = free_port()
    (work / name).mkdir()
    config = work / name / "router.toml"
    config.write_text(webhook_toml(port, outputs, routes, router_extra))
    return port, config


class Load:
    """Closed-loop load against one URL: wrk if installed, else the aiohttp client in _loadgen.py."""

    def __init__(self, body: bytes, workdir: Path):
        self.body_file = workdir / "body.json"
        self.body_file.write_bytes(body)
        self.wrk = shutil.which("wrk")
        self.script = workdir / "post.lua"
        self.script.write_text(WRK_SCRIPT.format(body=body.decode(), key=API_KEY))
        self.name = "wrk" if self.wrk else "aiohttp"

    def run(self, url: str, connections: int, seconds: float, server_pid: int) -> dict[str, Any]:
        """One measured run; adds the server's and the load generator's CPU use over it."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        server_cpu = tree_cpu_seconds(server_pid)
        started = time.monotonic()
        result = self._wrk(url, connections, seconds) if self.wrk else self._python(url, connections, seconds)
        wall = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        loadgen_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        result["server_cpu_pct"] = round(100 * (tree_cpu_seconds(server_pid) - server_cpu) / wall)
        result["loadgen_cpu_pct"] = round(100 * loadgen_cpu / wall)
        return result

    def _wrk(self, url: str, connections: int, seconds: float) -> dict[str, Any]:
        assert self.wrk is not None
        cmd = [self.wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(self.script), url]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout[-500:]} {proc.stderr[-500:]}")
        raw = json.loads(line.removeprefix("BENCH_JSON "))
        errors = raw["connect"] + raw["read"] + raw["write"] + raw["status"] + raw["timeout"]
        duration = raw["duration_us"] / 1e6
        return {
            "events_per_s": round((raw["requests"] - errors) / duration),
            "requests": raw["requests"],
            "errors": errors,
            "p50_ms": round(raw["p50_us"] / 1000, 3),
            "p99_ms": round(raw["p99_us"] / 1000, 3),
        }

    def _python(self, url: str, connections: int, seconds: float) -> dict[str, Any]:
        cmd = [PYTHON, str(BENCH / "_loadgen.py"), "closed", "--url", url, "--body-file", str(self.body_file)]
        cmd += ["--header", f"x-api-key: {API_KEY}", "--connections", str(connections), "--seconds", str(seconds)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True)
        raw = json.loads(proc.stdout.strip().splitlines()[-1])
        return {
            "events_per_s": round(raw["ok"] / raw["duration_s"]),
            "requests": raw["requests"],
            "errors": raw["errors"],
            "p50_ms": round(raw["p50_ms"], 3),
            "p99_ms": round(raw["p99_ms"], 3),
        }


def _median_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-metric median over rounds (each round alternates baseline and router, so both see the same noise)."""
    out: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "errors"}
    out["errors"] = sum(r["errors"] for r in runs)
    out["events_per_s_rounds"] = [r["events_per_s"] for r in runs]
    return out


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def _has_lines(path: Path, count: int) -> bool:
    return _count_lines(path) >= count


def _wait(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def _node_red_peer(stack: ExitStack, work: Path, body: bytes) -> tuple[tuple[str, int, Path] | None, dict[str, Any]]:
    """Node-RED started in `stack`: ((url, pid, its events file), facts) or (None, {"unavailable": why})."""
    try:
        red = install_node_red()
        port = free_port()
        events = work / "node-red.jsonl"
        proc = stack.enter_context(node_red(red, work / "node-red", port, events, body))
    except (Unavailable, OSError, subprocess.SubprocessError) as exc:
        return None, {"unavailable": str(exc)}
    return (f"http://127.0.0.1:{port}/events", proc.pid, events), {"version": NODE_RED_VERSION, "node": node_version()}


def _beats_node_red(router: dict[str, Any], peer: dict[str, Any]) -> bool:
    """The issue's target: >= 2x Node-RED's events/s at 64 senders, with a lower p99."""
    r, n = router["c64"], peer["c64"]
    return bool(n["events_per_s"]) and r["events_per_s"] / n["events_per_s"] >= 2 and r["p99_ms"] < n["p99_ms"]


#: what `webhook_to_file_controlled` sets on the benchmarked output (#19: no target may regress with them): a
#: key per event (each its own: the keyed path's cost, not a queue behind one key) and a limit far above the
#: load (the limiter's cost, not its pacing)
CONTROLLED_OUTPUT = 'ordering_key = "{{ id }}"\nrate_limit = { per_second = 1000000, burst = 100000 }'


def webhook_to_file_controlled(quick: bool) -> dict[str, Any]:
    """webhook_to_file with an `ordering_key` and a `rate_limit` on the file output, without the Node-RED peer."""
    result = webhook_to_file(quick, output_extra=CONTROLLED_OUTPUT, peers=False)
    result["output_settings"] = CONTROLLED_OUTPUT
    return result


def webhook_to_file(
    quick: bool, profile: Path | None = None, *, output_extra: str = "", peers: bool = True
) -> dict[str, Any]:
    seconds = 2.0 if quick else 8.0
    warmup = 1
    rounds = 1 if quick else 3
    body = example_body(1200)
    with tempfile.TemporaryDirectory(prefix="bench-w2f-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        load = Load(body, work)
        base_port = free_port()
        port, config = _router_config(
            work,
            '[outputs.archive]\ntype = "file"\npath = "events.jsonl"\n' + output_extra,
            '[[routes]]\nname = "archive everything"\nmatch = { trigger = ["**"] }\nto = ["archive"]',
        )
        base_cmd = [PYTHON, str(BENCH / "_servers.py"), "file", str(base_port), str(work / "baseline.jsonl")]
        base = stack.enter_context(child(base_cmd, port=base_port))
        rp = stack.enter_context(router(config, env=ROUTER_ENV))
        assert rp.proc is not None
        targets = {
            "baseline": (f"http://127.0.0.1:{base_port}/events", base.pid),
            "router": (f"http://127.0.0.1:{port}/events", rp.proc.pid),
        }
        node_red_facts: dict[str, Any] = {"unavailable": "not run"}
        peer = None
        if peers:
            peer, node_red_facts = _node_red_peer(stack, work, body)
        if peer is not None:
            targets["node-red"] = peer[:2]
        results: dict[str, dict[int, list[dict[str, Any]]]] = {name: {1: [], 64: []} for name in targets}
        warm = {name: load.run(url, 8, warmup, pid) for name, (url, pid) in targets.items()}
        for _ in range(rounds):
            for conns in (1, 64):
                for name, (url, pid) in targets.items():
                    results[name][conns].append(load.run(url, conns, seconds, pid))
        checked = {}
        files = {"router": config.parent / "events.jsonl"}
        if peer is not None:
            files["node-red"] = peer[2]
        for name, lines in files.items():
            runs = (warm[name], *results[name][1], *results[name][64])
            accepted = sum(r["requests"] - r["errors"] for r in runs)
            # every 2xx must reach the file; wrk's cut-off requests (and Node-RED's start-up probes) may add a few
            _wait(partial(_has_lines, lines, accepted), 120)
            checked[name] = (accepted, _count_lines(lines))
        rss = {"router_mb": rss_mb(rp.proc.pid)}
        if peer is not None:
            node_red_facts["rss_after_mb"] = rss_mb(peer[1])
        profile_top = _profile(load, targets["router"][0], rp.proc.pid, seconds, profile) if profile else None
    summary = {name: {f"c{c}": _median_runs(runs) for c, runs in by_c.items()} for name, by_c in results.items()}
    r64, b64 = summary["router"]["c64"]["events_per_s"], summary["baseline"]["c64"]["events_per_s"]
    r1, b1 = summary["router"]["c1"]["events_per_s"], summary["baseline"]["c1"]["events_per_s"]
    result: dict[str, Any] = {
        "loadgen": load.name,
        "body_bytes": len(body),
        "seconds_per_run": seconds,
        "rounds": rounds,
        "router": summary["router"],
        "baseline": summary["baseline"],
        "ratio": rounded(r64 / b64 if b64 else None, 3),
        "ratio_of": "router / baseline events/s at 64 concurrent senders",
        "ratio_c1": rounded(r1 / b1 if b1 else None, 3),
        "target": "ratio >= 0.5",
        "met": bool(b64) and r64 / b64 >= 0.5,
        "rss_after": rss,
        "router_accepted": checked["router"][0],
        "router_file_lines": checked["router"][1],
        "peers": {},
    }
    if peer is None:
        result["node_red"] = f"unavailable: {node_red_facts['unavailable']}"
    else:
        nr = {**node_red_facts, **summary["node-red"], "accepted": checked["node-red"][0]}
        nr["file_lines"] = checked["node-red"][1]
        result["peers"]["node-red"] = nr
        n64, n1 = nr["c64"]["events_per_s"], nr["c1"]["events_per_s"]
        result.update(
            ratio_to_node_red=rounded(r64 / n64 if n64 else None, 3),
            ratio_to_node_red_of="router / Node-RED events/s at 64 concurrent senders",
            ratio_to_node_red_c1=rounded(r1 / n1 if n1 else None, 3),
            node_red_target="router >= 2x Node-RED events/s at 64 senders, with a lower p99",
            node_red_met=_beats_node_red(summary["router"], nr),
        )
    if profile_top is not None:
        result["profile_top"] = profile_top
    return result


def _profile(
    load: Load, url: str, pid: int, seconds: float, out_dir: Path, scenario: str = "webhook_to_file"
) -> list[dict[str, Any]]:
    """An extra, unmeasured load run with py-spy sampling the router; returns where its CPU time goes."""
    from _profile import py_spy, summarise

    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / f"{scenario}.router.txt"
    with py_spy(pid, raw, seconds):
        load.run(url, 64, seconds, pid)
    return summarise(raw)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _send_at_rate(url: str, body_file: Path, seconds: float, id_from: str) -> dict[str, Any]:
    cmd = [PYTHON, str(BENCH / "_loadgen.py"), "rate", "--url", url, "--body-file", str(body_file)]
    cmd += ["--header", f"x-api-key: {API_KEY}", "--rate", "1000", "--seconds", str(seconds), "--id-from", id_from]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 90, check=True)
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _join(sent: dict[str, Any], target_port: int, wait_s: float) -> dict[str, Any]:
    accepted = {i: t for i, t, s in zip(sent["ids"], sent["sent_ns"], sent["statuses"], strict=True) if 200 <= s < 300}

    duplicates = 0

    def received() -> dict[str, int]:
        """Event id -> first arrival (delivery is at-least-once: a duplicate must not hide the first)."""
        nonlocal duplicates
        rec = _get_json(f"http://127.0.0.1:{target_port}/records")
        first: dict[str, int] = {}
        for key, at in zip(rec["keys"], rec["times"], strict=True):
            first.setdefault(key, at)
        duplicates = sum(1 for k in rec["keys"] if k in accepted) - sum(1 for k in first if k in accepted)
        return first

    _wait(lambda: accepted.keys() <= received().keys(), wait_s)
    got = received()
    latencies = [(got[i] - t) / 1e6 for i, t in accepted.items() if i in got]
    first, last = min(sent["sent_ns"]), max(sent["sent_ns"])
    # how fast events reached the target while the sender was still sending: below the send rate, a
    # queue builds up inside the router and the latency grows for as long as the load lasts
    while_sending = sum(1 for i in accepted if first <= got.get(i, 0) <= last)
    return {
        "sent": len(sent["ids"]),
        "accepted": len(accepted),
        "received": len(latencies),
        "duplicates": duplicates,
        "p50_ms": rounded(percentile(latencies, 50), 3),
        "p99_ms": rounded(percentile(latencies, 99), 3),
        "max_ms": rounded(max(latencies) if latencies else None, 3),
        "delivered_per_s_while_sending": round(while_sending / ((last - first) / 1e9)) if last > first else None,
        "send_seconds": round(sent["send_seconds"], 2),
        "schedule_lag_max_ms": sent["schedule_lag_max_ms"],
    }


def webhook_to_http_latency(quick: bool) -> dict[str, Any]:
    seconds = 3.0 if quick else 10.0
    body = example_body(1200)
    with tempfile.TemporaryDirectory(prefix="bench-lat-") as tmp:
        work = Path(tmp)
        body_file = work / "body.json"
        body_file.write_bytes(body)
        target_port = free_port()
        port, config = _router_config(
            work,
            f'[outputs.target]\ntype = "http"\nurl = "http://127.0.0.1:{target_port}/hook"',
            '[[routes]]\nname = "everything to the target"\nmatch = { trigger = ["**"] }\nto = ["target"]',
        )
        target_cmd = [PYTHON, str(BENCH / "_servers.py"), "target", str(target_port)]
        with (
            child(target_cmd, port=target_port),
            router(config, env=ROUTER_ENV),
        ):
            baseline = _join(
                _send_at_rate(f"http://127.0.0.1:{target_port}/hook", body_file, seconds, "header"), target_port, 30
            )
            routed = _join(
                _send_at_rate(f"http://127.0.0.1:{port}/events", body_file, seconds, "response"), target_port, 60
            )
    p99, base_p99 = routed["p99_ms"], baseline["p99_ms"]
    return {
        "rate_per_s": 1000,
        "seconds": seconds,
        "router": routed,
        "baseline": baseline,
        "ratio": rounded(p99 / base_p99 if p99 and base_p99 else None, 2),
        "ratio_of": "router p99 / direct-POST p99 (lower is better)",
        "target": "router p99 < 10 ms",
        "met": p99 is not None and p99 < 10 and routed["received"] == routed["accepted"],
    }
