"""Scenarios on whole router processes: memory, startup, and amqp_to_file (another engineer's script)."""

from __future__ import annotations

import json
import re
import sqlite3
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import BENCH, PYTHON, free_port, router, rss_mb, status_kb
from _webhook import ROUTER_ENV, webhook_toml

OUTPUTS = """
[outputs.archive]
type = "file"
path = "events.jsonl"

[outputs.crm]
type = "http"
url = "http://127.0.0.1:{crm_port}/hooks/{{{{trigger}}}}"
retry = {{ initial_backoff = "1h", max_backoff = "1h", max_attempts = 100, max_age = "7d" }}
"""
ROUTES = """
[[routes]]
name = "messages to CRM"
match = { trigger = ["transport.messageReceived"], "data.content.@type" = ["Mail"] }
to = ["crm"]

[[routes]]
name = "archive everything"
match = { trigger = ["**"] }
to = ["archive"]
"""
_PENDING = re.compile(r"(\d+) events pending")


def _config(work: Path, router_extra: str = "") -> Path:
    """webhook input + file and http outputs; the http output points at a port nothing listens on. The
    webhook runs in the router process (the default): memory and start-up are those of one process."""
    config = work / "router.toml"
    text = webhook_toml(free_port(), OUTPUTS.format(crm_port=free_port()), ROUTES, router_extra)
    config.write_text(text)
    return config


def _plugins() -> list[str]:
    from event_router.plugin_loader import load_plugins

    return [p.name for p in load_plugins().plugins]


def _settle(pid: int, window: float) -> dict[str, Any]:
    """Sample RSS every 0.25 s for `window` seconds; settled = median of the last two seconds.

    `rss_slope_mb_per_s` (least squares over the window) tells a settled process (about 0) from one
    whose memory still grows.
    """
    times: list[float] = []
    samples: list[float] = []
    start = time.monotonic()
    while time.monotonic() - start < window:
        value = rss_mb(pid)
        if value is None:
            raise RuntimeError("the router exited while its memory was measured")
        times.append(time.monotonic() - start)
        samples.append(value)
        time.sleep(0.25)
    hwm = status_kb(pid, "VmHWM")
    slope = statistics.linear_regression(times, samples).slope if len(set(samples)) > 1 else 0.0
    return {
        "rss_mb": round(statistics.median(samples[-8:]), 1),
        "rss_first_mb": samples[0],
        "rss_max_sampled_mb": max(samples),
        "rss_slope_mb_per_s": round(slope, 2),
        "peak_mb": round(hwm / 1024, 1) if hwm else None,
        "window_s": window,
    }


def _pending(messages: list[str]) -> int | None:
    """The pending count of the STATUS= the router sent with READY=1 (proof that it saw the backlog)."""
    for m in messages:
        found = _PENDING.search(m) if m.startswith("STATUS=") else None
        if found:
            return int(found[1])
    return None


def memory(quick: bool) -> dict[str, Any]:
    backlog = 100_000 if quick else 1_000_000
    window = 5.0 if quick else 15.0
    plugins = _plugins()  # what the router will load: a broken plugin fails here, before minutes of work
    with tempfile.TemporaryDirectory(prefix="bench-mem-") as tmp:
        work = Path(tmp)
        idle_dir = work / "idle"
        idle_dir.mkdir()
        with router(_config(idle_dir), env=ROUTER_ENV) as rp:
            assert rp.proc is not None
            idle = _settle(rp.proc.pid, 3.0)

        full_dir = work / "backlog"
        full_dir.mkdir()
        # the deliveries are pending for crm (nothing listens there), so they stay in the spool; retries
        # back off for an hour; warning level keeps the log from growing by one line per failed attempt
        config = _config(full_dir, 'log_level = "warning"\nmax_pending_events = 2000000')
        fill_cmd = [PYTHON, str(BENCH / "_fill_spool.py"), str(full_dir / "var" / "spool.db"), str(backlog)]
        fill_cmd += ["crm", "messages to CRM"]
        filled = subprocess.run(fill_cmd, capture_output=True, text=True, timeout=900, check=True)
        fill = json.loads(filled.stdout.strip().splitlines()[-1])
        db = full_dir / "var" / "spool.db"
        spool_mb = round(sum(p.stat().st_size for p in db.parent.glob("spool.db*")) / 2**20)
        started = time.monotonic()
        with router(config, env=ROUTER_ENV, timeout=300) as rp:
            assert rp.proc is not None
            ready_s = time.monotonic() - started
            loaded = _settle(rp.proc.pid, window)
            pending = _pending(rp.messages)
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            attempted = conn.execute("SELECT COUNT(*) FROM deliveries WHERE attempts > 0").fetchone()[0]
            left = conn.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0]
    return {
        "plugins": plugins,
        "idle": idle,
        "backlog": {
            "events": backlog,
            "fill_seconds": fill["seconds"],
            "spool_mb_on_disk": spool_mb,
            "pending_at_ready": pending,
            "ready_seconds": round(ready_s, 2),
            "deliveries_attempted_in_window": attempted,
            "deliveries_left": left,
            **loaded,
        },
        "target": "idle < 80 MB, backlog < 150 MB",
        "met": idle["rss_mb"] < 80
        and loaded["rss_mb"] < 150
        and loaded["peak_mb"] < 150
        and loaded["rss_slope_mb_per_s"] < 1,
    }


def startup(quick: bool) -> dict[str, Any]:
    runs = 5
    wall: list[float] = []
    internal: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-start-") as tmp:
        for i in range(runs):
            work = Path(tmp) / str(i)
            work.mkdir()
            config = _config(work)
            started = time.perf_counter()
            with router(config, env=ROUTER_ENV) as rp:
                wall.append(time.perf_counter() - started)
                # the log record is written just before READY=1; wait until it is flushed
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    ready = [r for r in rp.log_records() if r.get("msg") == "router ready"]
                    if ready:
                        internal.append(float(ready[0].get("startup_seconds", 0)))
                        break
                    time.sleep(0.05)
    return {
        "runs": runs,
        "router": {
            "ready_seconds_median": round(statistics.median(wall), 3),
            "ready_seconds_min": round(min(wall), 3),
            "ready_seconds_max": round(max(wall), 3),
            "in_process_seconds_median": round(statistics.median(internal), 3) if internal else None,
        },
        "what": "process start (Popen) to READY=1 on a real NOTIFY_SOCKET; fresh data dir each run",
    }


def amqp_to_file(quick: bool) -> dict[str, Any]:
    script = BENCH / "amqp_to_file.py"
    if not script.exists():
        return {"skipped": "bench/amqp_to_file.py missing"}
    count = 5_000 if quick else 50_000
    timeout = 80 if quick else 400
    try:
        proc = subprocess.run(
            [PYTHON, str(script), "--count", str(count)], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"bench/amqp_to_file.py --count {count} did not finish within {timeout}s"}
    for line in reversed(proc.stdout.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            value.setdefault("count", count)
            value.setdefault("target", "ratio >= 1.0")
            if "ratio" in value and "met" not in value:
                value["met"] = value["ratio"] is not None and value["ratio"] >= 1.0
            return value
    return {"error": f"no JSON object in its output (exit {proc.returncode})", "stderr": proc.stderr[-800:]}
