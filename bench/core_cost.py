"""CPU per event of the router's own path from a decoded request to a line in a file, per thread, without HTTP.

    python bench/core_cost.py [--events 30000] [--rounds 3] [--trees DIR,DIR...]

Runs the router in process (`App`, the webhook_to_file configuration: one file output, fsync on, a SQLite
spool) and feeds its webhook input's sink directly: two submitters, each handing over 29 events at a time
(the size of a store batch at 64 closed-loop senders), each event decoded from its own bytes as the
webhook does. Two variants alternate in each round:

- `routed`: every event is validated, planned, stored, delivered to the file and forgotten;
- `unrouted`: the route matches nothing: validated and planned, nothing stored or delivered.

For each, the CPU each thread spent per event (`/proc/self/task/*/stat`, user + system; threads by name:
the event loop `MainThread`, `spool-writer`, `file-...`) and events/s. `routed - unrouted` on the loop is
what storing and delivering costs the event loop. With `--trees`, each round runs every tree in turn (its
`router/` first on PYTHONPATH, in a process of its own): an A/B of source trees whose figures come minutes
apart, on the same machine, with no HTTP server, load generator or peer to add noise. Prints one JSON line
per run and a summary of medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PYTHON, example_body, stat_cpu_seconds
from _webhook import ROUTER_ENV, webhook_toml

#: events per submit: what the webhook's store batches held at 64 closed-loop senders (bench/RESULTS.md)
BATCH = 29

#: the output of webhook_to_file; its route, `archive everything`, matches nothing in the `unrouted` variant
OUTPUT = '[outputs.archive]\ntype = "file"\npath = "events.jsonl"\n'
ROUTE = '[[routes]]\nname = "archive everything"\nmatch = {{ trigger = [{trigger}] }}\nto = ["archive"]'


def thread_cpu() -> dict[str, float]:
    """CPU seconds per thread name (threads of one name summed), of this process's live threads."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            seconds = stat_cpu_seconds(task / "stat")
        except FileNotFoundError:  # ended meanwhile
            continue
        name = names.get(int(task.name), "other")
        out[name] = out.get(name, 0.0) + seconds
    return out


def measure(events: int, variant: str) -> dict[str, Any]:
    """One run in this process: start the app, warm up, feed `events`, wait for every line, stop."""
    import anyio
    import orjson

    from event_router import runtime
    from event_router.api.event import Event
    from event_router.app import App
    from event_router.config import build_config
    from event_router.plugin_loader import load_plugins

    raw = example_body(1200)
    meta = {"headers": {"content-type": "application/json"}, "remote": "127.0.0.1", "path": "/events"}
    # webhook_to_file's router (its listen port never used: events go to the input's sink)
    text = webhook_toml(0, OUTPUT, ROUTE.format(trigger='"**"' if variant == "routed" else '"nothing.matches"'))
    os.environ.update(ROUTER_ENV)  # the webhook's api_key
    result: dict[str, Any] = {}

    async def main() -> None:
        runtime.tune_for_router_process()
        with tempfile.TemporaryDirectory(prefix="bench-core-") as tmp:
            path = Path(tmp) / "router.toml"
            path.write_text(text)
            registry = load_plugins()
            app = App(build_config(tomllib.loads(text), path=path, registry=registry), registry)
            lines = Path(tmp) / "events.jsonl"
            #: (bytes read, lines counted) of the output file: each look reads only what was appended since
            seen = [0, 0]

            def written() -> int:
                if lines.exists():
                    with lines.open("rb") as f:
                        f.seek(seen[0])
                        new = f.read()
                    seen[0] += len(new)
                    seen[1] += new.count(b"\n")
                return seen[1]

            async with anyio.create_task_group() as tg:
                await tg.start(lambda task_status: app.run(handle_signals=False, task_status=task_status))
                runtime.freeze_startup_heap()
                sink = app.pipeline.sink_for(app.config.inputs["connector"])

                async def submitter(batches: int) -> None:
                    for _ in range(batches):
                        batch = []
                        for _ in range(BATCH):
                            body = orjson.loads(raw)
                            batch.append(
                                Event(body["trigger"], body.get("data"), "connector", meta=dict(meta), raw=raw)
                            )
                        await sink.submit(batch)

                async def feed(batches: int) -> None:
                    async with anyio.create_task_group() as feeders:
                        feeders.start_soon(submitter, batches)
                        feeders.start_soon(submitter, batches)

                async def lines_at_least(count: int) -> None:
                    while variant == "routed" and written() < count:
                        await anyio.sleep(0.005)

                warm = 50
                await feed(warm)
                await lines_at_least(2 * warm * BATCH)
                per_feeder = max(1, events // (2 * BATCH))
                before, started = thread_cpu(), time.perf_counter()
                await feed(per_feeder)
                await lines_at_least(2 * (warm + per_feeder) * BATCH)
                wall = time.perf_counter() - started
                after = thread_cpu()
                fed = 2 * per_feeder * BATCH
                per_thread = {
                    name: round((after[name] - before.get(name, 0.0)) * 1e6 / fed, 1)
                    for name in after
                    if after[name] - before.get(name, 0.0) > 0
                }
                result.update(
                    variant=variant,
                    events=fed,
                    events_per_s=round(fed / wall),
                    cpu_us_per_event=per_thread,
                    cpu_us_per_event_all=round(sum(per_thread.values()), 1),
                )
                app.request_stop()

    anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True})
    return result


def run_tree(tree: Path | None, events: int, variant: str) -> dict[str, Any]:
    """`measure` in a child process, with `tree`'s router/ first on PYTHONPATH (None: this interpreter's)."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree / "router"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [PYTHON, __file__, "--child", variant, "--events", str(events)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["tree"] = str(tree) if tree is not None else "installed"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--trees", default="", help="comma-separated source checkouts to alternate (A/B)")
    parser.add_argument("--child", choices=("routed", "unrouted"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.events, args.child)), flush=True)
        return
    trees: list[Path | None] = [Path(t).resolve() for t in args.trees.split(",") if t] or [None]
    runs: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        for tree in trees:
            for variant in ("routed", "unrouted"):
                run = run_tree(tree, args.events, variant)
                runs.append(run)
                print(json.dumps(run), flush=True)
    for tree in trees:
        name = str(tree) if tree is not None else "installed"
        for variant in ("routed", "unrouted"):
            mine = [r for r in runs if r["tree"] == name and r["variant"] == variant]
            threads = sorted({t for r in mine for t in r["cpu_us_per_event"]})
            medians = {t: statistics.median(r["cpu_us_per_event"].get(t, 0.0) for r in mine) for t in threads}
            print(
                f"{name} {variant}: {statistics.median(r['events_per_s'] for r in mine):,.0f} ev/s; µs/event "
                + ", ".join(f"{t} {v:.1f}" for t, v in medians.items())
                + f"; all {statistics.median(r['cpu_us_per_event_all'] for r in mine):.1f}"
            )


if __name__ == "__main__":
    main()
