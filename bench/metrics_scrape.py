"""What a `/metrics` scrape costs a router holding a large backlog, and what scraping costs its webhook.

    python bench/metrics_scrape.py [--pending 500000] [--dead 20000] [--rounds 40]

Fills a spool directly with SQL (PENDING events with one delivery each to an output router.toml does not
configure, so they stay pending, and DEAD dead letters), starts `event-router run` on it and measures from
the client side: GET /healthz and GET /metrics (median and p90 of ROUNDS each), then the webhook's
latency (one request at a time) without and with another thread scraping /metrics in a loop. Prints one
JSON line.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import example_body, free_port, percentile, router

from event_router.core.spool.sqlite import SQLiteSpool

API_KEY = "bench-metrics-key"


def fill(db: Path, pending: int, dead: int) -> float:
    started = time.monotonic()
    spool = SQLiteSpool(db)
    spool.open()  # creates the schema
    spool.close()
    body = example_body(1200)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN")
    now = time.time() - 60
    conn.executemany(
        "INSERT INTO events (seq, id, trigger, stored_at, body) VALUES (?, ?, 'transport.messageReceived', ?, ?)",
        ((seq, f"ev-{seq}", now, body) for seq in range(1, pending + 1)),
    )
    conn.executemany(
        "INSERT INTO deliveries (seq, output, route, due, first_at) VALUES (?, 'held', 'r', ?, ?)",
        ((seq, now + 86400, now) for seq in range(1, pending + 1)),
    )
    conn.executemany(
        "INSERT INTO dead_letters (event_id, trigger, output, route, reason, error, created_at, body) "
        "VALUES (?, 'transport.messageReceived', 'held', 'r', 'permanent', 'HTTP 400', ?, ?)",
        ((f"dl-{i}", now, body) for i in range(dead)),
    )
    conn.execute("COMMIT")
    conn.close()
    return time.monotonic() - started


def get(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as response:
        response.read()
    return (time.perf_counter() - started) * 1000


def post(url: str, body: bytes) -> float:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", "X-API-KEY": API_KEY}
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()
    return (time.perf_counter() - started) * 1000


def summary(values: list[float]) -> dict[str, float | None]:
    p90 = percentile(values, 90)
    return {"p50_ms": round(statistics.median(values), 3), "p90_ms": None if p90 is None else round(p90, 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pending", type=int, default=500_000)
    parser.add_argument("--dead", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        fill_seconds = fill(base / "var" / "spool.db", args.pending, args.dead)
        port, admin = free_port(), free_port()
        config = base / "router.toml"
        config.write_text(f"""
[router]
data_dir = "{base}/var"
[router.admin]
listen = "127.0.0.1:{admin}"
[inputs.connector]
type = "webhook"
listen = "127.0.0.1:{port}"
api_key = "{API_KEY}"
[outputs.archive]
type = "file"
path = "{base}/events.jsonl"
# above the backlog filled in: what the webhook posts meanwhile is stored for it, not parked
max_pending = {args.pending * 2}
[[routes]]
name = "all"
match = {{ trigger = ["**"] }}
to = ["archive"]
""")
        result: dict[str, object] = {"pending": args.pending, "dead_letters": args.dead}
        result["fill_s"] = round(fill_seconds, 1)
        with router(config):
            base_url = f"http://127.0.0.1:{admin}"
            time.sleep(3)  # start-up work (integrity check) done
            for _ in range(5):
                get(base_url + "/metrics")
            healthz = [get(base_url + "/healthz") for _ in range(args.rounds)]
            metrics = [get(base_url + "/metrics") for _ in range(args.rounds)]
            result["healthz"] = summary(healthz)
            result["metrics"] = summary(metrics)
            body = example_body(1200)
            hook = f"http://127.0.0.1:{port}/events"
            quiet = [post(hook, body) for _ in range(200)]
            stop = threading.Event()
            scrapes = [0]

            def scrape() -> None:
                while not stop.is_set():
                    get(base_url + "/metrics")
                    scrapes[0] += 1

            scraper = threading.Thread(target=scrape)
            scraper.start()
            try:
                scraped = [post(hook, body) for _ in range(200)]
            finally:
                stop.set()
                scraper.join()
            result["webhook_quiet"] = summary(quiet)
            result["webhook_while_scraping"] = summary(scraped)
            result["scrapes_during"] = scrapes[0]
        print(json.dumps(result))


if __name__ == "__main__":
    main()
