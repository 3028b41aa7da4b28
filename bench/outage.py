"""Outage: the router is down for N seconds while the Connector keeps emitting; count what gap recovery got back.

    .venv/bin/python bench/outage.py                          # 60 s at 50 changes/s, SIGKILL at 20 s, down 15 s
    .venv/bin/python bench/outage.py --sigterm                # a graceful stop instead
    .venv/bin/python bench/outage.py --rate 100 --down 30 --report /tmp/outage.json

The fake Connector of the tests (tests/fake_connector.py, loaded by path as bench/_recovery.py does) runs in
this process on loopback and makes a steady mix of changes, `--rate` per second for `--duration` seconds:
messages received and sent, incoming requests, completed outgoing requests, relationships created or moved
on (Pending -> Active -> Terminated), attributes created or succeeded. Each change updates its REST state
and raises the event as the Connector does: one POST to the webhook, no retry, lost when it fails.

One real `event-router run`: a `webhook` input `connector` (API key, strict validation), a `connector`
recovery input covering it (`settle = "2s"`, `interval = "5s"`, `slack = "1m"`, strict validation) and
a route to a `file` output. At `--down-at` seconds it is SIGKILLed (or sent SIGTERM and waited for), and
`--down` seconds later started again on the same data directory. After the last change, the harness waits
for a look that began `settle` after it and deferred nothing, then reads the file output and the dead
letters and counts, per change the Connector emitted (its key: trigger, DTO id, state, as the spool keeps
it, `event_router.core.announced`):

- `live`: its POST was answered 2xx; `lost_at_connector`: the POST failed (the Connector's `lost`);
  `lost_but_stored`: failed at the Connector, yet in the file as a live event (the router committed it,
  the answer did not get out before the kill);
- `recovered`: lost and in the file as rebuilt (`meta.recovered`); `recovered_exact`: with the data the
  Connector sent (otherwise the DTO as it is now: a later change of the same thing came meanwhile);
- `superseded`: lost, not in the file, and the same relationship's later state is: `by_lost` when that
  state was lost too, `by_live` when it came live. Recovery rebuilds every audit-log step (docs/recovery.md),
  so these should be none; reported apart from `missing`, as a step recovery left out;
- `missing`: none of these; `unexpected`: in the file with a key no change had;
- `duplicates`: keys the file holds more than once, split into repeated event ids (the file output
  delivering the same stored event again after the kill: at least once) and distinct events with the same
  key (stored twice: a rebuilt twin of a live event);
- `recovery_seconds`: from starting the router again to the moment the file held every lost change that
  can come back (`recovered` + `lost_but_stored`), polled every 0.1 s; the looks after the restart.

Prints one JSON line (also appended to --report); exits 1 if anything is missing, stored twice, unexpected
or dead-lettered. docs/benchmarks.md#outage describes it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BENCH, emit, free_port, machine, utc_now
from _recovery import _connector

from event_router.core.announced import announced_text
from event_router.testing import RouterProcess, dead_letters

HOOK_KEY = "outage-hook-key"
#: the changes' mix, by weight
MIX = {
    "message_received": 30,
    "message_sent": 15,
    "incoming_request": 10,
    "outgoing_completed": 10,
    "relationship_created": 10,
    "relationship_moved": 10,
    "attribute_created": 10,
    "attribute_succeeded": 5,
}
#: a relationship's next status; Terminated is the last this bench moves one to
NEXT_STATUS = {"Pending": "Active", "Active": "Terminated"}
SETTLE = 2.0
INTERVAL = 5.0


def router_toml(hook_port: int, connector_url: str) -> str:
    return f"""
[router]
data_dir = "var"
log_level = "info"

[inputs.connector]
type = "webhook"
listen = "127.0.0.1:{hook_port}"
api_key = "{HOOK_KEY}"
validation = "strict"

[inputs.recovery]
type = "connector"
base_url = "{connector_url}"
api_key = "connector-key"
covers = "connector"
interval = "{INTERVAL:g}s"
settle = "{SETTLE:g}s"
slack = "1m"
validation = "strict"

[outputs.archive]
type = "file"
path = "./var/events.jsonl"

[[routes]]
name = "from the Connector"
match.source = ["connector"]
to = "archive"
"""


# --- the Connector's side -----------------------------------------------------------------------------------


class Changes:
    """Makes `rate` changes per second on the fake Connector (each raises its event as the Connector does),
    open loop: a change is started when it is due, whatever its POST does."""

    def __init__(self, fake: Any, rate: float, seed: int):
        self.fake = fake
        self.rate = rate
        self.rng = random.Random(seed)
        self.kinds = list(MIX)
        self.weights = [MIX[k] for k in self.kinds]
        self.made: Counter[str] = Counter()
        #: relationships that can still move on, attributes not yet succeeded
        self.open_relationships: list[str] = []
        self.attributes: list[str] = []
        self.lag_max = 0.0

    async def run(self, seconds: float) -> None:
        tasks: set[asyncio.Task[Any]] = set()
        loop = asyncio.get_running_loop()
        start = loop.time()
        started = 0
        while (now := loop.time()) - start < seconds:
            due = int((now - start) * self.rate) - started
            for _ in range(max(0, due)):
                task = asyncio.create_task(self._one())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            started += max(0, due)
            self.lag_max = max(self.lag_max, loop.time() - now)
            await asyncio.sleep(0.02)
        if tasks:  # every POST answered or failed: the Connector's webhook has no timeout
            await asyncio.gather(*tasks)

    async def _one(self) -> None:
        kind = self.rng.choices(self.kinds, self.weights)[0]
        if kind == "relationship_moved" and not self.open_relationships:
            kind = "relationship_created"
        if kind == "attribute_succeeded" and not self.attributes:
            kind = "attribute_created"
        self.made[kind] += 1
        fake = self.fake
        # each method changes the state before its first await: the REST state is never behind the event
        if kind == "message_received":
            await fake.receive_message()
        elif kind == "message_sent":
            await fake.receive_message(own=True)
        elif kind == "incoming_request":
            await fake.receive_request()
        elif kind == "outgoing_completed":
            await fake.complete_outgoing_request()
        elif kind == "relationship_created":
            # movable once its creation was raised, as a peer answers a relationship it knows of
            self.open_relationships.append((await fake.change_relationship())["id"])
        elif kind == "relationship_moved":
            rid = self.rng.choice(self.open_relationships)
            current = next(r for r in fake.state["getRelationships"] if r["id"] == rid)["status"]
            status = NEXT_STATUS[current]
            if status not in NEXT_STATUS:
                self.open_relationships.remove(rid)
            # no await before the change: two moves of one relationship never pick the same status
            await fake.change_relationship(rid, status)
        elif kind == "attribute_created":
            self.attributes.append((await fake.create_attribute(self.rng.choice(["Alice", "Bob", "Carol"])))["id"])
        else:
            predecessor = self.attributes.pop(self.rng.randrange(len(self.attributes)))
            successor = await fake.succeed_attribute(predecessor, self.rng.choice(["Dan", "Eve"]))
            self.attributes.append(successor["id"])


# --- counting -----------------------------------------------------------------------------------------------


def key_of(trigger: str, data: Any) -> str | None:
    """The change an event announced (trigger, DTO id, state), as the spool keys it."""
    found = announced_text(trigger, data)
    return None if found is None else found[1]


class FileWatch:
    """Reads the file output as it grows and notes when each key was first in it (monotonic time)."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.lines: list[dict[str, Any]] = []
        self.first_seen: dict[str, float] = {}

    def poll(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        now = time.monotonic()
        for line in data[:end].splitlines():
            if line.strip():
                event = json.loads(line)
                self.lines.append(event)
                key = key_of(event["trigger"], event["data"])
                if key is not None:
                    self.first_seen.setdefault(key, now)


def _relationship_state(key: str) -> tuple[str, int] | None:
    trigger, ident, state = key.split("\x1f")
    if trigger != "transport.relationshipChanged":
        return None
    return ident, int(state)


def count(emitted: list[tuple[str, Any]], lost: list[tuple[str, Any]], lines: list[dict[str, Any]]) -> dict[str, Any]:
    """What became of each change the Connector emitted (see the module docstring)."""
    emitted_keys = {key_of(t, d): (t, d) for t, d in emitted}
    lost_keys = {key_of(t, d) for t, d in lost}
    by_key: dict[str, list[dict[str, Any]]] = {}
    unkeyed = 0
    for event in lines:
        key = key_of(event["trigger"], event["data"])
        if key is None:
            unkeyed += 1
            continue
        by_key.setdefault(key, []).append(event)
    # the latest audit-log length of each relationship the file holds
    latest: dict[str, int] = {}
    for key in by_key:
        state = _relationship_state(key)
        if state is not None:
            latest[state[0]] = max(latest.get(state[0], 0), state[1])

    live_missing: list[str] = []
    lost_but_stored = recovered = recovered_exact = 0
    superseded: Counter[str] = Counter()
    missing: list[str] = []
    recovered_by_trigger: Counter[str] = Counter()
    not_exact: Counter[str] = Counter()
    for key, (trigger, data) in emitted_keys.items():
        assert key is not None, trigger
        stored = by_key.get(key, [])
        if key not in lost_keys:
            if not stored:
                live_missing.append(key)
            continue
        if any(not e["meta"].get("recovered") for e in stored):
            lost_but_stored += 1
        elif stored:
            recovered += 1
            recovered_by_trigger[trigger] += 1
            if stored[0]["data"] == data:
                recovered_exact += 1
            else:
                not_exact[trigger] += 1
        else:
            state = _relationship_state(key)
            if state is not None and latest.get(state[0], 0) > state[1]:
                # by a later change that was lost too (two changes in the gap), or that came live after it
                later = f"{trigger}\x1f{state[0]}\x1f{latest[state[0]]}"
                superseded["by_lost" if later in lost_keys else "by_live"] += 1
            else:
                missing.append(key)
    ids = Counter(e["id"] for e in lines)
    repeated_ids = {i: n for i, n in ids.items() if n > 1}
    twice = {k: v for k, v in by_key.items() if len(v) > 1}
    stored_twice = {k: v for k, v in twice.items() if len({e["id"] for e in v}) > 1}
    return {
        "emitted": len(emitted),
        "live": len(emitted) - len(lost),
        "lost_at_connector": len(lost),
        "lost_but_stored": lost_but_stored,
        "recovered": recovered,
        "recovered_by_trigger": dict(sorted(recovered_by_trigger.items())),
        "recovered_exact": recovered_exact,
        "recovered_not_exact": dict(sorted(not_exact.items())),
        "superseded": dict(sorted(superseded.items())),
        "missing": len(missing) + len(live_missing),
        "missing_lost": [k.replace("\x1f", " ") for k in missing[:20]],
        "missing_live": [k.replace("\x1f", " ") for k in live_missing[:20]],
        "unexpected": len([k for k in by_key if k not in emitted_keys]) + unkeyed,
        "file_lines": len(lines),
        "duplicates": {
            "keys_more_than_once": len(twice),
            "lines_beyond_first": sum(len(v) - 1 for v in twice.values()),
            "event_ids_repeated": len(repeated_ids),
            "lines_of_repeated_ids": sum(n - 1 for n in repeated_ids.values()),
            "stored_twice": len(stored_twice),
            "stored_twice_keys": [k.replace("\x1f", " ") for k in list(stored_twice)[:20]],
        },
    }


# --- the run ------------------------------------------------------------------------------------------------


def _looks(rp: RouterProcess, after: int) -> list[dict[str, Any]]:
    return [r for r in rp.log_records()[after:] if str(r.get("msg", "")).startswith("recovery look")]


def _wall(record: dict[str, Any]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(str(record["ts"]).replace("Z", "+00:00")).timestamp()


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=BENCH,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def outage(args: argparse.Namespace) -> dict[str, Any]:
    import os

    how = "sigterm" if args.sigterm else "sigkill"
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-outage-") as tmp, _connector() as (fake, loop):
        work = Path(tmp)
        hook = free_port()
        fake.webhooks = [f"http://127.0.0.1:{hook}/events"]
        fake.webhook_headers = {"x-api-key": HOOK_KEY}
        config = work / "router.toml"
        config.write_text(router_toml(hook, fake.url))
        (work / "var").mkdir()
        watch = FileWatch(work / "var" / "events.jsonl")
        rp = RouterProcess(config).start(timeout=60)
        changes = Changes(fake, args.rate, args.seed)
        t0 = time.monotonic()
        sending = asyncio.run_coroutine_threadsafe(changes.run(args.duration), loop)
        stop_at, start_at = t0 + args.down_at, t0 + args.down_at + args.down
        stopped_s = ready_s = None
        log_mark = 0
        timeline: list[dict[str, Any]] = []

        def mark(what: str) -> None:
            """A moment of the run: seconds since the first change, changes emitted and lost so far."""
            at = round(time.monotonic() - t0, 2)
            timeline.append({"at": at, "what": what, "emitted": len(fake.emitted), "lost": len(fake.lost)})

        try:
            while time.monotonic() < stop_at:
                watch.poll()
                time.sleep(0.1)
            assert rp.proc is not None
            first = rp.proc
            if args.sigterm:
                first.send_signal(signal.SIGTERM)
            else:
                first.send_signal(signal.SIGKILL)
            signalled = time.monotonic()
            mark(how)
            while time.monotonic() < start_at or first.poll() is None:
                if first.poll() is not None and stopped_s is None:
                    stopped_s = round(time.monotonic() - signalled, 2)
                    mark("exited")
                watch.poll()
                time.sleep(0.05)
            if stopped_s is None:
                stopped_s = round(time.monotonic() - signalled, 2)
                mark("exited")
            rp.close()
            log_mark = len(rp.log_records())
            rp = RouterProcess(config)
            restart = time.monotonic()
            mark("start again")
            restart_wall = time.time()
            rp.start(timeout=60)
            ready_s = round(time.monotonic() - restart, 2)
            mark("ready")
            while not sending.done():
                watch.poll()
                time.sleep(0.1)
            sending.result()
            end_wall = time.time()
            mark("last change")
            # the looks after the last change: one that began `settle` after it and left nothing to settle
            deadline = time.monotonic() + 3 * INTERVAL + 30
            while time.monotonic() < deadline:
                watch.poll()
                done = [
                    r for r in _looks(rp, log_mark) if _wall(r) - r["took"] >= end_wall + SETTLE and r["deferred"] == 0
                ]
                if done:
                    break
                time.sleep(0.2)
            else:
                raise RuntimeError("no look without deferred changes after the last change")
            # what the last look stored reaches the file
            steady = time.monotonic()
            size = watch.offset
            while time.monotonic() - steady < 2:
                watch.poll()
                if watch.offset != size:
                    size, steady = watch.offset, time.monotonic()
                time.sleep(0.1)
            looks = _looks(rp, log_mark)
        finally:
            if rp.proc is not None and rp.proc.poll() is None:
                rp.terminate(timeout=30)
            rp.close()
        if not sending.done():
            sending.cancel()
        watch.poll()
        letters = dead_letters(work / "var")
        emitted, lost = list(fake.emitted), list(fake.lost)
        if args.keep:
            keep = Path(tempfile.mkdtemp(prefix="bench-outage-kept-"))
            subprocess.run(["cp", "-a", f"{work}/.", str(keep)], check=True)
            print(f"kept in {keep}", file=sys.stderr)
    figures = count(emitted, lost, watch.lines)
    # every lost change the file holds (rebuilt, or committed just before the kill): when the last came
    back = [watch.first_seen[k] for t, d in lost if (k := key_of(t, d)) in watch.first_seen]
    recovery_s = round(max(back) - restart, 2) if back else None
    stored_looks = [r for r in looks if r.get("recovered")]
    figures.update(
        {
            "recovery_seconds": recovery_s,
            "ready_seconds": ready_s,
            "stop_seconds": stopped_s,
            "first_recovering_look_end_seconds": round(_wall(stored_looks[0]) - restart_wall, 2)
            if stored_looks
            else None,
            "looks_after_restart": [
                {k: r.get(k) for k in ("why", "found", "announced", "deferred", "recovered", "duplicates", "took")}
                | {"end_seconds": round(_wall(r) - restart_wall, 2)}
                for r in looks
            ],
            "dead_letters": len(letters),
            "dead_letter_reasons": dict(Counter(d.reason for d in letters)),
        }
    )
    problems = (
        figures["missing"] + figures["unexpected"] + figures["duplicates"]["stored_twice"] + figures["dead_letters"]
    )
    return {
        "scenario": "outage",
        "date": utc_now(),
        "commit": _commit(),
        "machine": machine(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "stop": how,
        "rate": args.rate,
        "duration": args.duration,
        "down_at": args.down_at,
        "down": args.down,
        "settle": SETTLE,
        "interval": INTERVAL,
        "made": dict(sorted(changes.made.items())),
        "schedule_lag_max_s": round(changes.lag_max, 3),
        "timeline": timeline,
        **figures,
        "ok": problems == 0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=50.0, help="changes per second (default 50)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of changes (default 60)")
    parser.add_argument("--down-at", type=float, default=20.0, help="second the router is stopped at (default 20)")
    parser.add_argument("--down", type=float, default=15.0, help="seconds until it is started again (default 15)")
    parser.add_argument("--sigterm", action="store_true", help="stop it with SIGTERM (graceful) instead of SIGKILL")
    parser.add_argument("--seed", type=int, default=1, help="the mix of changes (default 1)")
    parser.add_argument("--report", type=Path, default=None, help="JSON Lines file the result is appended to")
    parser.add_argument("--keep", action="store_true", help="copy the working directory somewhere kept")
    args = parser.parse_args()
    if args.down_at + args.down >= args.duration:
        parser.error("--down-at + --down must end before --duration")
    result = outage(args)
    emit(result, args.report)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
