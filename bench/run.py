"""The benchmark suite: real processes on loopback, each figure next to a baseline measured in the same run.

    .venv/bin/python bench/run.py [--quick] [--only NAME ...] [--out bench/out/results.jsonl] [--profile DIR]
                                  [--telemetry [URL]]

Prints one JSON object per scenario (one line each) and appends it to --out. What each scenario measures,
and its target: docs/benchmarks.md. A scenario that fails reports {"scenario": ..., "error": ...} and the
others still run; a scenario that runs longer than its time limit is stopped.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BENCH, PYTHON, child, emit, free_port, machine, utc_now


class ScenarioTimeout(Exception):
    """The scenario ran past its time limit; its `finally` blocks stop its processes."""


def _scenarios() -> dict[str, tuple[Callable[..., dict[str, Any]], float, float]]:
    """name -> (function, time limit quick, time limit full) in seconds."""
    from _core import routing_validation, spool_group_commit
    from _postgresql import pg_webhook_file, pg_webhook_http_p99
    from _process import amqp_to_file, memory, startup
    from _recovery import recovery
    from _webhook import webhook_to_file, webhook_to_file_controlled, webhook_to_http_latency

    return {
        "webhook_to_file": (webhook_to_file, 150, 500),
        "webhook_to_file_controlled": (webhook_to_file_controlled, 120, 400),
        "amqp_to_file": (amqp_to_file, 100, 450),
        "webhook_to_http_latency": (webhook_to_http_latency, 90, 180),
        "routing_validation": (routing_validation, 60, 180),
        "memory": (memory, 90, 1200),
        "startup": (startup, 90, 120),
        "spool_group_commit": (spool_group_commit, 60, 120),
        "recovery": (recovery, 180, 300),
        "pg_webhook_file": (pg_webhook_file, 150, 600),
        "pg_webhook_http_p99": (pg_webhook_http_p99, 120, 240),
    }


#: the scenarios `--profile` samples the router of (an extra load run after the measured ones)
PROFILED = ("webhook_to_file", "pg_webhook_file")


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise ScenarioTimeout


def run_one(
    name: str, fn: Callable[..., dict[str, Any]], limit: float, quick: bool, profile: Path | None
) -> dict[str, Any]:
    head: dict[str, Any] = {"scenario": name, "date": utc_now(), "machine": machine(), "quick": quick}
    if os.environ.get("BENCH_TELEMETRY_ENDPOINT"):  # `--telemetry`: the routers traced, spans sent there
        head["telemetry"] = os.environ["BENCH_TELEMETRY_ENDPOINT"]
    started = time.monotonic()
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(int(limit))
    try:
        body = fn(quick, profile) if (profile is not None and name in PROFILED) else fn(quick)
    except ScenarioTimeout:
        body = {"error": f"timed out after {limit:g}s"}
    except Exception as exc:  # one broken scenario must not hide the others' figures
        body = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=-3)}
    finally:
        signal.alarm(0)
    return {**head, **body, "wall_seconds": round(time.monotonic() - started, 1)}


def main() -> int:
    scenarios = _scenarios()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs: all scenarios in under two minutes")
    parser.add_argument("--only", nargs="+", choices=sorted(scenarios), metavar="NAME", help="run only these")
    parser.add_argument("--out", type=Path, default=BENCH / "out" / "results.jsonl", help="JSON Lines to append to")
    parser.add_argument("--profile", type=Path, help="also sample the router with py-spy under load, into DIR")
    parser.add_argument(
        "--telemetry",
        nargs="?",
        const="sink",
        metavar="URL",
        help="run the webhook routers with [router.telemetry], spans to the OTLP/HTTP collector at URL "
        "(without URL: to a sink this run starts, bench/_servers.py otlp); needs the otel extra",
    )
    args = parser.parse_args()
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1` shows where a stuck run is
    with ExitStack() as stack:
        if args.telemetry == "sink":
            port = free_port()
            stack.enter_context(child([PYTHON, str(BENCH / "_servers.py"), "otlp", str(port)], port=port))
            os.environ["BENCH_TELEMETRY_ENDPOINT"] = f"http://127.0.0.1:{port}"
        elif args.telemetry is not None:
            os.environ["BENCH_TELEMETRY_ENDPOINT"] = args.telemetry
        return _run(scenarios, args)


def _run(scenarios: dict[str, tuple[Callable[..., dict[str, Any]], float, float]], args: argparse.Namespace) -> int:
    failed = 0
    for name, (fn, quick_limit, full_limit) in scenarios.items():
        if args.only and name not in args.only:
            continue
        result = run_one(name, fn, quick_limit if args.quick else full_limit, args.quick, args.profile)
        failed += "error" in result
        emit(result, args.out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
