"""Order per key (#19): a route's or output's `ordering_key`, end to end against real router processes and a
real HTTP receiver, on both spool backends (`router_spool`), and two routers sharing one PostgreSQL spool.

The receiver fails a share of the requests at random and answers slowly; it records every attempt. Per key
the attempts must come one at a time (none while another of the key is in flight), each for the next event
not yet delivered, so the successful ones arrive exactly in the order the events were stored. Keys must not
wait for one another. The configuration's part (errors with their key, the route's key before the output's,
what a missing field does) is tested without a process."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import orjson
import pytest

from event_router.api.event import Event
from event_router.config import ConfigErrors, build_config
from event_router.core.kept import Selection, replay
from event_router.core.plan import plan_event
from event_router.core.routing import MAX_ORDERING_KEY
from event_router.core.spool import NewDelivery, Spool, StoreEvent
from event_router.core.validation import SchemaRegistry, builtin_schema_dir
from event_router.plugin_loader import load_plugins
from event_router.testing import (
    Recorded,
    RouterProcess,
    delivery_ids,
    example,
    free_port,
    http_receiver,
    post,
    router_table,
    run_cli,
    wait_for,
    webhook_input,
)

KEY = "ordering-test-key"


def peer(k: int) -> str:
    """The address of peer `k`: the events' `data.createdBy`, the key they are ordered by."""
    return f"did:e:backbone.example.org:dids:{k:022x}"


def message(k: int, i: int) -> dict[str, Any]:
    """Peer `k`'s `i`-th Mail (its subject says which), a valid `transport.messageReceived`."""
    event = example("transport.messageReceived")
    event["data"] = {**event["data"], "createdBy": peer(k)}
    event["data"]["content"] = {**event["data"]["content"], "subject": f"{k}:{i}"}
    return event


@dataclass
class Attempt:
    key: int
    index: int
    #: which router sent it (the path of its output's URL)
    sender: str
    at: float
    ok: bool


@dataclass
class Target:
    """What the receiver saw: every attempt, and violations of one-at-a-time per key as they happened."""

    fail_share: float
    delay: float
    attempts: list[Attempt] = field(default_factory=list)
    in_flight: dict[int, int] = field(default_factory=dict)
    #: attempts that arrived while another of their key was in flight: (key, index)
    overlaps: list[tuple[int, int]] = field(default_factory=list)
    #: answered 422 for good (a permanent failure): (key, index)
    refuse: set[tuple[int, int]] = field(default_factory=set)
    #: while this says so, key 0 is answered 503 (its target is down for it alone)
    refuse_until: Callable[[], bool] = lambda: False
    most_at_once: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    rng: random.Random = field(default_factory=lambda: random.Random(19))

    def delivered(self, key: int | None = None) -> list[Attempt]:
        with self.lock:
            return [a for a in self.attempts if a.ok and (key is None or a.key == key)]

    def handle(self, request: Recorded, handler: BaseHTTPRequestHandler) -> None:
        data = request.json()["data"]
        key, index = (int(part) for part in data["content"]["subject"].split(":"))
        with self.lock:
            if self.in_flight.get(key, 0):
                self.overlaps.append((key, index))
            self.in_flight[key] = self.in_flight.get(key, 0) + 1
            self.most_at_once = max(self.most_at_once, sum(self.in_flight.values()))
            ok = (key, index) not in self.refuse and self.rng.random() >= self.fail_share
        if key == 0 and self.refuse_until():
            ok = False
        time.sleep(self.delay)
        with self.lock:
            # the key's count is taken down before the answer goes out: its next attempt can only come after
            self.in_flight[key] -= 1
            self.attempts.append(Attempt(key, index, request.path, time.monotonic(), ok))
        status = 200 if ok else (422 if (key, index) in self.refuse else 503)
        try:
            handler.send_response(status)
            handler.send_header("Content-Length", "2")
            handler.end_headers()
            handler.wfile.write(b"{}")
        except (BrokenPipeError, ConnectionResetError):  # a router killed, or stopped, while it waited
            pass


@contextmanager
def target(fail_share: float, delay: float) -> Iterator[tuple[Target, str]]:
    seen = Target(fail_share, delay)
    with http_receiver(seen.handle) as receiver:
        yield seen, receiver.url


def config_text(port: int, url: str, spool_line: str, *, extra_route: str = "") -> str:
    return (
        router_table(shutdown_timeout="2s", extra=spool_line)
        + webhook_input(port)
        + f"""
[outputs.crm]
type = "http"
url = "{url}"
concurrency = 64
retry = {{ initial_backoff = "50ms", max_backoff = "200ms", max_attempts = 1000 }}
[outputs.archive]
type = "file"
path = "./var/archive.jsonl"
[[routes]]
name = "mail per peer"
to = ["crm", "archive"]
ordering_key = "{{{{ data.createdBy }}}}"
{extra_route}"""
    )


def send(ports: list[int], keys: int, per_key: int, *, threads: int = 10) -> dict[tuple[int, int], float]:
    """Post every key's events in order (each acknowledged before its key's next is sent), keys in parallel;
    the i-th event of a key goes to router `ports[i % len(ports)]`. When each was acknowledged."""
    accepted: dict[tuple[int, int], float] = {}

    def run(first: int) -> None:
        for i in range(per_key):
            for k in range(first, keys, threads):
                status, body, _ = post(
                    f"http://127.0.0.1:{ports[i % len(ports)]}/events", message(k, i), {"x-api-key": KEY}
                )
                assert status == 202, body
                accepted[(k, i)] = time.monotonic()

    with ThreadPoolExecutor(threads) as pool:
        for done in [pool.submit(run, t) for t in range(min(threads, keys))]:
            done.result()
    return accepted


def assert_in_order(seen: Target, keys: int, per_key: int, *, repeats: bool = False) -> None:
    """Every key's events delivered once each, in order (`repeats`: a delivery may come twice in a row, as
    after a crash before its outcome was committed); attempts one at a time per key, each of the key's next."""
    with seen.lock:
        assert seen.overlaps == [], f"attempts while another of the key was in flight: {seen.overlaps[:10]}"
    for k in range(keys):
        got = [a.index for a in seen.delivered(k)]
        if repeats:
            got = [i for n, i in enumerate(got) if n == 0 or got[n - 1] != i]
        assert got == list(range(per_key)), f"key {k}: delivered {got}"
        tried = [a.index for a in seen.attempts if a.key == k]
        assert tried == sorted(tried), f"key {k}: attempted {tried}: an event before the one before it was delivered"


def measure(seen: Target, started: float, accepted: dict[tuple[int, int], float], keys: int) -> dict[str, float]:
    """events/s from the first POST to the last delivery; per-key lag: at each delivery, how many events the
    key furthest behind had delivered fewer than the key furthest ahead, the most over the run (20 would mean
    one key done before another began: head-of-line blocking); the longest wait from a 202 to the delivery."""
    delivered = seen.delivered()
    progress = dict.fromkeys(range(keys), 0)
    lag = 0
    for attempt in sorted(delivered, key=lambda a: a.at):
        progress[attempt.key] += 1
        lag = max(lag, max(progress.values()) - min(progress.values()))
    ends = {k: max(a.at for a in delivered if a.key == k) for k in range(keys)}
    done_at = {(a.key, a.index): a.at for a in delivered}
    return {
        "events_per_second": len(delivered) / (max(ends.values()) - started),
        "all_accepted_s": max(accepted.values()) - started,
        "max_per_key_lag_events": lag,
        "first_key_done_s": min(ends.values()) - started,
        "last_key_done_s": max(ends.values()) - started,
        "max_wait_after_202_s": max(done_at[i] - accepted[i] for i in accepted),
        "attempts": len(seen.attempts),
        "most_requests_at_once": seen.most_at_once,
    }


@pytest.mark.slow
def test_fifty_keys_reach_a_flaky_slow_target_in_order_and_side_by_side(
    tmp_path: Path, router_spool: tuple[str, dict[str, str]]
) -> None:
    spool_line, spool_env = router_spool
    keys, per_key = 50, 20
    port = free_port()
    with target(fail_share=0.3, delay=0.05) as (seen, url):
        config = tmp_path / "router.toml"
        config.write_text(config_text(port, f"{url}/crm", spool_line))
        with RouterProcess(config, env={"ROUTER_WEBHOOK_API_KEY": KEY, **spool_env}) as router:
            started = time.monotonic()
            accepted = send([port], keys, per_key)
            wait_for(lambda: len(seen.delivered()) >= keys * per_key, timeout=120, what="every event delivered")
            router.terminate()
        assert_in_order(seen, keys, per_key)
        figures = measure(seen, started, accepted, keys)
        print(f"\nordering figures ({'postgresql' if spool_env else 'sqlite'}): {json.dumps(figures)}")
        # keys progress side by side: no key is done before every other has begun, and the target had many keys'
        # requests at once. How far one key trails another is the luck of its failures (one key may fail ten
        # times as often as another): the figures say it; the next test shows a failing key holds up no other
        assert figures["max_per_key_lag_events"] < per_key, figures
        assert seen.most_at_once >= 20, seen.most_at_once
        assert figures["attempts"] > keys * per_key, "the target failed some attempts: retries were needed"


@pytest.mark.slow
def test_a_key_that_keeps_failing_holds_up_no_other_key(
    tmp_path: Path, router_spool: tuple[str, dict[str, str]]
) -> None:
    """Key 0's first event fails until every other key is done (its target is down for it alone): the other
    keys are delivered meanwhile, in order, and key 0 then follows, in order."""
    spool_line, spool_env = router_spool
    keys, per_key = 10, 5
    port = free_port()
    with target(fail_share=0.0, delay=0.01) as (seen, url):
        seen.refuse_until = lambda: len(seen.delivered()) < (keys - 1) * per_key
        config = tmp_path / "router.toml"
        config.write_text(config_text(port, f"{url}/crm", spool_line))
        with RouterProcess(config, env={"ROUTER_WEBHOOK_API_KEY": KEY, **spool_env}) as router:
            send([port], keys, per_key)
            wait_for(lambda: len(seen.delivered()) == keys * per_key, timeout=60, what="every event delivered")
            router.terminate()
    assert_in_order(seen, keys, per_key)
    first_of_0 = seen.delivered(0)[0].at
    assert all(a.at < first_of_0 for a in seen.delivered() if a.key != 0), "the others did not wait for key 0"
    assert sum(1 for a in seen.attempts if a.key == 0 and not a.ok) >= 2, "key 0 failed while the others went on"


@pytest.mark.slow
def test_a_killed_router_goes_on_with_each_key_where_it_was(
    tmp_path: Path, router_spool: tuple[str, dict[str, str]]
) -> None:
    """SIGKILL mid-stream: after the restart every key goes on from its first undelivered event (one in
    flight at the kill may come again: at least once), in order."""
    spool_line, spool_env = router_spool
    keys, per_key = 10, 12
    port = free_port()
    env = {"ROUTER_WEBHOOK_API_KEY": KEY, **spool_env}
    with target(fail_share=0.3, delay=0.05) as (seen, url):
        config = tmp_path / "router.toml"
        config.write_text(config_text(port, f"{url}/crm", spool_line))
        router = RouterProcess(config, env=env).start()
        try:
            send([port], keys, per_key)
            wait_for(lambda: len(seen.delivered()) >= keys * per_key // 3, timeout=60, what="a third delivered")
        finally:
            router.kill()
        before = len(seen.delivered())
        assert before < keys * per_key, "the kill came before the end"
        with RouterProcess(config, env=env) as again:
            wait_for(
                lambda: {a.key for a in seen.delivered() if a.index == per_key - 1} == set(range(keys)), timeout=60
            )
            again.terminate()
    assert_in_order(seen, keys, per_key, repeats=True)


@pytest.mark.slow
def test_a_dead_letter_does_not_hold_its_key_and_its_replay_comes_last(
    tmp_path: Path, router_spool: tuple[str, dict[str, str]]
) -> None:
    """Key 0's event 2 is refused for good (422): dead-lettered, and events 3.. follow at once; replayed, it is
    delivered after the last of its key."""
    spool_line, spool_env = router_spool
    port = free_port()
    env = {"ROUTER_WEBHOOK_API_KEY": KEY, **spool_env}
    with target(fail_share=0.0, delay=0.01) as (seen, url):
        seen.refuse.add((0, 2))
        config = tmp_path / "router.toml"
        config.write_text(config_text(port, f"{url}/crm", spool_line))
        with RouterProcess(config, env=env) as router:
            send([port], 2, 6, threads=2)
            wait_for(lambda: len(seen.delivered()) == 11, timeout=30, what="all but the refused one delivered")
            assert [a.index for a in seen.delivered(0)] == [0, 1, 3, 4, 5], "the refused one did not hold the key"
            dead = dlq(config, "list", "--json", env=env)
            assert [(d["output"], d["reason"]) for d in dead] == [("crm", "permanent")], dead
            with seen.lock:
                seen.refuse.clear()  # the target takes it now
            replayed = dlq(config, "replay", "--output", "crm", env=env)
            assert replayed.startswith("replayed 1, "), replayed
            wait_for(lambda: len(seen.delivered(0)) == 6, timeout=30, what="the replay delivered")
            router.terminate()
    assert [a.index for a in seen.delivered(0)] == [0, 1, 3, 4, 5, 2], "the replay comes after the later ones"
    assert [a.index for a in seen.delivered(1)] == list(range(6))


@pytest.mark.slow
def test_an_event_without_the_keys_field_is_a_dead_letter_at_the_ordered_output_only(
    tmp_path: Path, router_spool: tuple[str, dict[str, str]]
) -> None:
    spool_line, spool_env = router_spool
    port = free_port()
    env = {"ROUTER_WEBHOOK_API_KEY": KEY, **spool_env}
    with target(fail_share=0.0, delay=0.0) as (seen, url):
        config = tmp_path / "router.toml"
        # the crm output (not the route, whose key would order the archive too) is ordered by a field only some
        # events have: the relationship of the first recipient
        text = config_text(port, f"{url}/crm", spool_line).replace('ordering_key = "{{ data.createdBy }}"\n', "")
        key = 'ordering_key = "{{ data.recipients.0.relationshipId }}"\n'
        config.write_text(text.replace("concurrency = 64\n", "concurrency = 64\n" + key))
        with RouterProcess(config, env=env) as router:
            keyed, bare = message(1, 0), message(2, 0)
            bare["data"]["recipients"] = [
                {k: v for k, v in r.items() if k != "relationshipId"} for r in bare["data"]["recipients"]
            ]
            for event in (keyed, bare):
                status, body, _ = post(f"http://127.0.0.1:{port}/events", event, {"x-api-key": KEY})
                assert status == 202 and body["status"] == "accepted", body
            archive = tmp_path / "var" / "archive.jsonl"
            wait_for(lambda: archive.exists() and len(archive.read_text().splitlines()) == 2, what="both archived")
            wait_for(lambda: len(seen.delivered()) == 1, what="the keyed one delivered")
            (dead,) = dlq(config, "list", "--json", env=env)
            assert (dead["output"], dead["route"], dead["reason"]) == ("crm", "mail per peer", "permanent")
            assert dead["error"] == (
                "ordering_key of output crm (route 'mail per peer'): data.recipients.0.relationshipId is missing "
                "(template '{{ data.recipients.0.relationshipId }}'): cannot be put in order"
            ), dead
            record = router.wait_log("delivery dead-lettered: its ordering key cannot be rendered")
            assert record["output"] == "crm" and record["dead_letter"] == dead["id"]
            # replayed under the same configuration it stays a dead letter, with the same reason
            replayed = dlq(config, "replay", "--output", "crm", env=env, status=1)
            assert replayed.startswith("replayed 0, still invalid or unrouted 1,"), replayed
            (still,) = dlq(config, "list", "--json", env=env)
            assert (still["id"], still["error"]) == (dead["id"], dead["error"])
            router.terminate()
    assert [a.key for a in seen.delivered()] == [1]


def dlq(config: Path, *args: str, env: dict[str, str], status: int = 0) -> Any:
    """`event-router dlq ARGS` as an operator runs it, beside the router: `list --json`'s dead letters, or what
    another action printed."""
    run = subprocess.run(
        [sys.executable, "-m", "event_router", "dlq", *args, "-c", str(config)],
        cwd=config.parent,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == status, run.stdout + run.stderr
    return json.loads(run.stdout) if "--json" in args else run.stdout


@pytest.mark.slow
def test_two_routers_on_one_postgresql_spool_keep_each_keys_order(tmp_path: Path, pg_dsn: str) -> None:
    """A key's events go alternately to two routers sharing the spool; either router delivers whatever of a
    key is due, and the target still sees each key one at a time, in order."""
    keys, per_key = 20, 10
    spool_line = 'spool = { backend = "postgresql", dsn = { env = "ROUTER_PG_DSN" }, lease = "5s" }'
    env = {"ROUTER_WEBHOOK_API_KEY": KEY, "ROUTER_PG_DSN": pg_dsn}
    ports = [free_port(), free_port()]
    with target(fail_share=0.3, delay=0.03) as (seen, url):
        routers = []
        for n, port in enumerate(ports):
            directory = tmp_path / f"r{n}"
            directory.mkdir()
            config = directory / "router.toml"
            config.write_text(config_text(port, f"{url}/router{n}", spool_line))
            routers.append(RouterProcess(config, env=env))
        with routers[0], routers[1]:
            send(ports, keys, per_key)
            wait_for(lambda: len(seen.delivered()) >= keys * per_key, timeout=120, what="every event delivered")
            for router in routers:
                router.terminate()
    assert_in_order(seen, keys, per_key)
    senders = {a.sender for a in seen.delivered()}
    assert senders == {"/router0", "/router1"}, senders
    shared = [k for k in range(keys) if len({a.sender for a in seen.delivered(k)}) == 2]
    assert shared, "some key was delivered by both routers"


# --- configuration and plan, without a process ------------------------------------------------------------

BASE = """
[inputs.connector]
type = "webhook"
listen = "127.0.0.1:8787"
[outputs.crm]
type = "http"
url = "http://127.0.0.1:9000/hooks"
ordering_key = "{{ data.createdBy }}"
[outputs.archive]
type = "file"
path = "./var/events.jsonl"
[[routes]]
name = "mail"
match = { trigger = "transport.messageReceived" }
to = ["crm", "archive"]
[[routes]]
name = "by relationship"
match = { trigger = "transport.messageReceived" }
to = ["crm"]
ordering_key = "{{ data.recipients.0.relationshipId }}"
"""


@pytest.fixture(scope="module")
def registry():  # type: ignore[no-untyped-def]
    return load_plugins(entry_points=False)


@pytest.fixture(scope="module")
def schemas() -> SchemaRegistry:
    return SchemaRegistry.load([builtin_schema_dir()])


def build(text: str, tmp_path: Path, registry: Any) -> Any:
    return build_config(tomllib.loads(text), path=tmp_path / "router.toml", registry=registry)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ('ordering_key = "{{ data.createdBy }}"', 'ordering_key = "{{ data.createdBy"'),
            "router.toml: outputs.crm.ordering_key: unclosed '{{' at position 0 of template '{{ data.createdBy'",
        ),
        (
            ('ordering_key = "{{ data.recipients', 'ordering_key = "{{ recipients'),
            "router.toml: routes[1].ordering_key: unknown field 'recipients.0.relationshipId' (paths start with "
            "one of: data, id, meta, received_at, source, trigger) at position 0",
        ),
        (
            ('ordering_key = "{{ data.createdBy }}"', 'ordering_key = "data.createdBy"'),
            "router.toml: outputs.crm.ordering_key: 'data.createdBy' has no {{ field }}: every delivery would have "
            "this same key and wait for the one before; to order by the field, write '{{ data.createdBy }}'",
        ),
        (
            ('ordering_key = "{{ data.createdBy }}"', "ordering_key = 5"),
            "router.toml: outputs.crm.ordering_key: must be a string, not an integer",
        ),
    ],
)
def test_a_wrong_ordering_key_is_reported_at_load_with_its_key(
    change: tuple[str, str], expected: str, tmp_path: Path, registry: Any
) -> None:
    with pytest.raises(ConfigErrors) as info:
        build(BASE.replace(*change), tmp_path, registry)
    messages = [str(e) for e in info.value.errors]
    assert any(expected in m for m in messages), messages


def test_the_routes_key_comes_before_the_outputs_and_a_missing_field_refuses_one_delivery(
    tmp_path: Path, registry: Any, schemas: SchemaRegistry
) -> None:
    config = build(BASE, tmp_path, registry)
    data = message(3, 0)["data"]
    plan = plan_event(
        Event(trigger="transport.messageReceived", data=data, source="connector"), config=config, schemas=schemas
    )
    keys = [(d.route, d.output, d.ordering_key, d.key_error) for d in plan.deliveries]
    assert keys == [
        ("mail", "crm", peer(3), None),
        ("mail", "archive", None, None),
        ("by relationship", "crm", "REL1YBBHLUEC51CGTOYD", None),
    ]
    bare = {**data, "recipients": []}
    plan = plan_event(
        Event(trigger="transport.messageReceived", data=bare, source="connector"), config=config, schemas=schemas
    )
    assert plan.deliveries[2].ordering_key is None
    assert plan.deliveries[2].key_error == (
        "ordering_key of output crm (route 'by relationship'): data.recipients.0.relationshipId is missing "
        "(template '{{ data.recipients.0.relationshipId }}'): cannot be put in order"
    )
    assert plan.deliveries[0].ordering_key == peer(3), "the other deliveries keep their keys"


def test_a_long_key_is_kept_as_its_digest(tmp_path: Path, registry: Any, schemas: SchemaRegistry) -> None:
    config = build(BASE, tmp_path, registry)
    long = {**message(1, 0)["data"], "createdBy": "x" * 5000}
    plan = plan_event(
        Event(trigger="transport.messageReceived", data=long, source="connector"),
        config=config,
        schemas=schemas,
        validation="off",
    )
    key = plan.deliveries[0].ordering_key
    assert key is not None and key.startswith("sha256:") and len(key) <= MAX_ORDERING_KEY
    again = plan_event(
        Event(trigger="transport.messageReceived", data=long, source="connector"),
        config=config,
        schemas=schemas,
        validation="off",
    )
    assert again.deliveries[0].ordering_key == key


@pytest.mark.anyio
async def test_a_replay_of_kept_events_puts_each_delivery_behind_its_key(
    tmp_path: Path, registry: Any, schemas: SchemaRegistry, spool_at: Callable[[], Spool]
) -> None:
    """`event-router replay` (retention, `core.kept.replay`) gives each replayed delivery the key the current
    routes give it and stores it after what of its key is pending, on both backends; a delivery whose key
    names a field the event lacks is left out and counted, the event's other deliveries replayed."""
    config = build(BASE, tmp_path, registry)
    data = [message(1, i)["data"] for i in range(3)]
    data[2]["recipients"] = []  # no relationship: route "by relationship" cannot key its delivery
    events = [Event(trigger="transport.messageReceived", data=d, source="connector") for d in data]
    spool = spool_at()
    spool.open("exclusive")
    try:
        stored = await spool.store(
            [
                StoreEvent(e.id, e.trigger, e.to_json(), [NewDelivery("crm", "mail", None, peer(1))], received=n + 1.0)
                for n, e in enumerate(events)
            ]
        )
        first = delivery_ids(stored)[0]
        assert [row.did for row in spool.fetch_due("crm", spool.clock.now() + 1, 100, ())] == first
        await spool.settle(done=first)  # events 1 and 2 stay pending, in their key's order
        report = replay(spool, config, schemas, Selection(0.0, math.inf, output="crm"))
        assert (report.replayed, report.unkeyed, report.unrouted) == (3, 1, 0)
        assert report.deliveries == {"crm": 5}
        handed: list[tuple[str | None, str]] = []
        while rows := spool.fetch_due("crm", spool.clock.now() + 1, 100, ()):
            handed.extend((row.ordering_key, row.event_id) for row in rows)
            await spool.settle(done=[row.did for row in rows])
        ids = [e.id for e in events]
        assert [event for key, event in handed if key == peer(1)] == [ids[1], ids[2], ids[0], ids[1], ids[2]], (
            "the pending ones of the key first, then the replays in the order they were stored"
        )
        assert [event for key, event in handed if key == "REL1YBBHLUEC51CGTOYD"] == [ids[0], ids[1]]
        assert len(handed) == 7
    finally:
        spool.close()


def test_event_router_test_shows_each_deliverys_key(tmp_path: Path) -> None:
    config = tmp_path / "router.toml"
    config.write_text(BASE)
    events = tmp_path / "events.json"
    bare = message(4, 0)
    bare["data"]["recipients"] = []
    events.write_text(orjson.dumps([message(4, 0), bare]).decode())
    run = subprocess.run(
        [sys.executable, "-m", "event_router", "test", "-c", str(config), str(events)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 1, run.stderr
    report = json.loads(run.stdout)
    assert [d.get("ordering_key") for d in report[0]["deliveries"]] == [peer(4), None, "REL1YBBHLUEC51CGTOYD"]
    assert "ordering_key of output crm (route 'by relationship')" in report[1]["deliveries"][2]["error"]
    assert (
        f"error: {events}[1] (transport.messageReceived) would be dead-lettered: ordering_key of output crm"
        in run.stderr
    )
    # explain says the same of each delivery
    explained = run_cli("explain", "-c", str(config), str(events), "--json")
    assert explained.returncode == 0, explained.stderr
    keyed, bare_report = json.loads(explained.stdout)
    assert [d.get("ordering_key") for r in keyed["routes"] for d in r["deliveries"]] == [
        peer(4),
        None,
        "REL1YBBHLUEC51CGTOYD",
    ]
    (unkeyed,) = bare_report["routes"][1]["deliveries"]
    assert "ordering_key of output crm (route 'by relationship')" in unkeyed["key_error"]
    text = run_cli("explain", "-c", str(config), str(events)).stdout
    assert f'       ordering_key: "{peer(4)}"' in text
    assert "       a dead letter when stored, its ordering key not rendered: ordering_key of output crm" in text
