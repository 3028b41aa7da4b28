"""Soak: every input at once at a fixed total rate, a flapping http output, then count that nothing was lost.

    .venv/bin/python bench/soak.py                      # 10 minutes at 500 events/s
    .venv/bin/python bench/soak.py --quick              # 60 s
    .venv/bin/python bench/soak.py --duration 300 --rate 200 --report /tmp/soak.json

One real `event-router run` receives, for `--duration` seconds, `--rate` events/s spread evenly over six inputs,
each fed exactly as the Connector publishes: webhook (POST {trigger, data}), AMQP (routing key = namespace,
body = data, no properties), MQTT (topic = namespace with `/`, QoS 0), Redis pub/sub (PUBLISH namespace data),
a Redis stream (XADD trigger/data entries) and Pub/Sub (data + attribute `namespace`, on the emulator). Every
event is one of the Connector's example events whose id is replaced by a unique one (`<prefix>SK<input><seq>`),
so it can be found again in any output or dead letter. 1 % are bad (malformed JSON, an unknown trigger,
schema-invalid data) and must end as dead letters. Every event goes to a `file` output and to an `http`
output whose receiver flaps (bench/_servers.py flaky: up 15-25 s, then 5-15 s of 503s, dropped connections
or hanging requests), so deliveries are retried, back off and some exhaust their attempts.

Then: stop sending, let the receiver stay up, wait until the router has taken in everything and its spool is
empty, and count per output: in = delivered + dead letters, lost = 0. The router's RSS is sampled every two
seconds; its slope over the second half of the sending phase must stay under --max-rss-slope MB/min (judged
in runs of 4 minutes or more: before that the second half is still warm-up).
Prints one JSON object, writes it to --report, exits 1 if anything was lost or RSS grew. Needs RabbitMQ on
127.0.0.1:5672, mosquitto and redis-server binaries (private instances are started) and gcloud's Pub/Sub
emulator. docs/benchmarks.md#soak describes the report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import orjson
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BENCH,
    PYTHON,
    child,
    cpu_seconds,
    emit,
    free_port,
    machine,
    router,
    rss_mb,
    status_kb,
    utc_now,
)
from amqp_to_file import declare, remove

from event_router.core.spool import DeadLetterFilter
from event_router.core.spool.sqlite import SQLiteSpool
from event_router.testing import RouterProcess, example_events, run_cli
from event_router_amqp.testing import AMQP_URL, ConnectorPublisher
from event_router_mqtt.testing import PrivateBroker
from event_router_pubsub.testing import PROJECT, PubSubAdmin, running_emulator
from event_router_redis.testing import PrivateRedis

API_KEY = "soak-key"
#: input name -> the letter its events carry in their ids
INPUTS = {"webhook": "W", "amqp": "A", "mqtt": "M", "redis_pubsub": "R", "redis_stream": "S", "pubsub": "P"}
#: the 17 characters after an id's 3-letter prefix: SK, the input's letter, 14 digits of sequence
TOKEN = re.compile(rb"SK[WAMRSP]\d{14}")
UNKNOWN_TRIGGER = "transport.soakUnknownEvent"
BAD_KINDS = ("malformed", "unknown_trigger", "invalid")
TICK = 0.05
RSS_EVERY = 2.0
#: seconds of sending before RSS may be expected flat; runs whose second half starts earlier are not judged
RSS_WARMUP = 120.0
TIMELINE_EVERY = 30.0


# --- events -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Template:
    """One of the Connector's example events, as the JSON text of its data with its primary id to replace."""

    trigger: str
    data: str
    #: the id to replace (every occurrence: a request's content repeats the request's id)
    old_id: str


def _first_id(node: Any) -> str | None:
    """The first `id` value in the data, depth first: the DTO's own id (a wrapper's inner DTO's id)."""
    if isinstance(node, dict):
        if isinstance(node.get("id"), str):
            return str(node["id"])
        for value in node.values():
            found = _first_id(value)
            if found:
                return found
    return None


def templates() -> list[Template]:
    """The example events that carry data with an id (runtime.modulesStarted's `{}` has nothing to count by)."""
    out = []
    for event in example_events():
        old = _first_id(event.get("data"))
        if old is not None:
            out.append(Template(event["trigger"], orjson.dumps(event["data"]).decode(), old))
    return out


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One event as a sender publishes it: trigger and the bytes of its data (webhook: of the whole body)."""

    token: str
    trigger: str
    data: bytes
    bad: str | None


class EventMaker:
    """Unique, realistic events for one input; every 100th is bad (the three kinds in turn)."""

    def __init__(self, letter: str, rng: random.Random, kinds: list[Template]):
        self.letter = letter
        self.rng = rng
        self.kinds = kinds
        self.mail = next(t for t in kinds if t.trigger == "transport.messageReceived")
        self.seq = 0

    def next(self) -> Outgoing:
        self.seq += 1
        token = f"SK{self.letter}{self.seq:014d}"
        bad = BAD_KINDS[(self.seq // 100) % 3] if self.seq % 100 == 37 else None
        template = self.mail if bad else self.rng.choice(self.kinds)
        data = template.data.replace(template.old_id, template.old_id[:3] + token)
        trigger = template.trigger
        if bad == "malformed":
            data = data[: data.index(token) + 40]  # cut inside the object, after the id
        elif bad == "unknown_trigger":
            trigger = UNKNOWN_TRIGGER
        elif bad == "invalid":
            data = data.replace('"isOwn":false', '"isOwn":"no"', 1)
        return Outgoing(token, trigger, data.encode(), bad)


def webhook_body(event: Outgoing) -> bytes:
    """What the Connector's webhooks module POSTs: {"data": ..., "trigger": ...} (a cut-off body stays cut off)."""
    return b'{"data":' + event.data + (b',"trigger":"' + event.trigger.encode() + b'"}' if not event.bad else b"")


# --- senders ------------------------------------------------------------------------------------------------


@dataclass
class SenderStats:
    """What one input's sender did: every token it handed over, and which the first hop took (`accepted`)."""

    name: str
    sent: int = 0
    accepted: set[str] = field(default_factory=set)
    bad: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)
    errors: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    lag_max: float = 0.0

    def took(self, event: Outgoing) -> None:
        self.accepted.add(event.token)
        if event.bad:
            self.bad.add(event.token)


class Senders:
    """The six Connector-like publishers; each sends its share of the rate, a batch per tick (open loop)."""

    def __init__(self, work: Path, rate: float, seed: int, env: dict[str, Any]):
        self.rate = rate / len(INPUTS)
        self.env = env
        kinds = templates()
        self.makers = {
            name: EventMaker(letter, random.Random(f"{seed}-{name}"), kinds) for name, letter in INPUTS.items()
        }
        self.stats = {name: SenderStats(name) for name in INPUTS}
        self.work = work

    def sent_total(self) -> int:
        return sum(s.sent for s in self.stats.values())

    async def run(self, seconds: float) -> None:
        await asyncio.gather(
            self._paced("webhook", seconds, self._webhook),
            self._paced("amqp", seconds, self._amqp),
            self._paced("mqtt", seconds, self._mqtt),
            self._paced("redis_pubsub", seconds, self._redis_pubsub),
            self._paced("redis_stream", seconds, self._redis_stream),
            self._paced("pubsub", seconds, self._pubsub),
        )

    async def _paced(self, name: str, seconds: float, open_sender: Callable[[], Any]) -> None:
        """Call the sender with the events due so far, every TICK, until `seconds` have passed."""
        stats, maker = self.stats[name], self.makers[name]
        async with open_sender() as send:
            start = time.monotonic()
            while (now := time.monotonic()) - start < seconds:
                due = int((now - start) * self.rate) - stats.sent
                if due > 0:
                    batch = [maker.next() for _ in range(due)]
                    stats.sent += due
                    try:
                        await send(batch)
                    except Exception as exc:  # a broker hiccup: these events never left; keep sending
                        stats.errors[f"{type(exc).__name__}: {exc}"[:200]] += len(batch)
                        stats.refused.update(e.token for e in batch)
                stats.lag_max = max(stats.lag_max, time.monotonic() - now)
                await asyncio.sleep(max(0.0, TICK - (time.monotonic() - now)))
            await send([])  # let the sender finish what it has in flight

    @contextlib.asynccontextmanager
    async def _webhook(self) -> Any:
        stats = self.stats["webhook"]
        url = f"http://127.0.0.1:{self.env['webhook_port']}/events"
        in_flight: set[asyncio.Task[None]] = set()

        async def post(session: aiohttp.ClientSession, event: Outgoing) -> None:
            headers = {"Content-Type": "application/json", "x-api-key": API_KEY, "x-correlation-id": str(uuid.uuid4())}
            try:
                async with session.post(url, data=webhook_body(event), headers=headers) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                stats.errors[type(exc).__name__] += 1
                status = -1
            stats.statuses[str(status)] += 1
            # 202 stored; 422 and 400 stored as dead letters; anything else: the router did not take it
            if status in (202, 400, 422):
                stats.took(event)
            else:
                stats.refused.add(event.token)

        connector = aiohttp.TCPConnector(limit=32)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

            async def send(batch: list[Outgoing]) -> None:
                for event in batch:
                    task = asyncio.create_task(post(session, event))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                if not batch and in_flight:
                    await asyncio.gather(*in_flight)

            yield send

    @contextlib.asynccontextmanager
    async def _amqp(self) -> Any:
        stats = self.stats["amqp"]
        exchange = self.env["amqp_exchange"]
        # the broker is shared: another test may close every connection; a Connector would be restarted then
        # (it does not reconnect), so the sender opens a new connection for the next batch
        current: list[ConnectorPublisher] = []

        def publish(batch: list[Outgoing]) -> None:
            if not current:
                publisher = ConnectorPublisher(AMQP_URL)
                publisher.open()
                current.append(publisher)
            try:
                for event in batch:
                    current[0].publish(exchange, event.trigger, event.data)
                current[0].flush()  # returns once the broker has routed them into the queue
            except (OSError, RuntimeError):
                current.pop().close()
                raise

        async def send(batch: list[Outgoing]) -> None:
            if batch:
                await asyncio.to_thread(publish, batch)
                for event in batch:
                    stats.took(event)

        try:
            yield send
        finally:
            if current:
                await asyncio.to_thread(current[0].close)

    @contextlib.asynccontextmanager
    async def _mqtt(self) -> Any:
        stats = self.stats["mqtt"]
        async with aiomqtt.Client(
            "127.0.0.1", self.env["mqtt_port"], identifier=f"connector-{uuid.uuid4().hex[:8]}"
        ) as c:

            async def send(batch: list[Outgoing]) -> None:
                for event in batch:
                    await c.publish(event.trigger.replace(".", "/"), event.data, qos=0, retain=False)
                    stats.took(event)

            yield send

    @contextlib.asynccontextmanager
    async def _redis_pubsub(self) -> Any:
        stats = self.stats["redis_pubsub"]
        client = aioredis.Redis(host="127.0.0.1", port=self.env["redis_port"])
        try:

            async def send(batch: list[Outgoing]) -> None:
                if not batch:
                    return
                pipe = client.pipeline(transaction=False)
                for event in batch:
                    pipe.publish(event.trigger, event.data)
                receivers = await pipe.execute()
                for event, subscribers in zip(batch, receivers, strict=True):
                    # PUBLISH answers how many subscribers got it: 0 means the router was not subscribed
                    if subscribers:
                        stats.took(event)
                    else:
                        stats.refused.add(event.token)

            yield send
        finally:
            await client.aclose()

    @contextlib.asynccontextmanager
    async def _redis_stream(self) -> Any:
        stats = self.stats["redis_stream"]
        client = aioredis.Redis(host="127.0.0.1", port=self.env["redis_port"])
        try:

            async def send(batch: list[Outgoing]) -> None:
                if not batch:
                    return
                pipe = client.pipeline(transaction=False)
                for event in batch:
                    pipe.xadd(self.env["redis_stream"], {"trigger": event.trigger, "data": event.data})
                await pipe.execute()
                for event in batch:
                    stats.took(event)

            yield send
        finally:
            await client.aclose()

    @contextlib.asynccontextmanager
    async def _pubsub(self) -> Any:
        stats = self.stats["pubsub"]
        admin: PubSubAdmin = self.env["pubsub_admin"]
        async with admin.publisher() as client:

            async def send(batch: list[Outgoing]) -> None:
                if not batch:
                    return
                await client.publish(
                    self.env["pubsub_topic"], [admin.connector_message(e.trigger, e.data) for e in batch]
                )
                for event in batch:
                    stats.took(event)

            yield send


# --- the router's side ----------------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^(event_router_[a-z_]+)(?:\{([^}]*)\})? ([0-9.eE+-]+|NaN)$")


def metrics(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The router's /metrics: name -> labels -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for line in text.splitlines():
        found = _SAMPLE.match(line)
        if found:
            labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', found[2] or "")))
            out.setdefault(found[1], {})[labels] = float(found[3])
    return out


def total(m: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, **match: str) -> float:
    """Sum of a metric's series whose labels include `match`."""
    return sum(v for labels, v in m.get(name, {}).items() if all((k, val) in labels for k, val in match.items()))


def by_label(m: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, *keys: str) -> dict[str, int]:
    out: dict[str, float] = {}
    for labels, value in m.get(name, {}).items():
        d = dict(labels)
        key = "/".join(d.get(k, "") for k in keys)
        out[key] = out.get(key, 0.0) + value
    return {k: round(v) for k, v in sorted(out.items())}


def router_toml(env: dict[str, Any]) -> str:
    return f"""
[router]
data_dir = "var"
unmatched = "dead-letter"

[router.admin]
listen = "127.0.0.1:{env["admin_port"]}"

[inputs.webhook]
type = "webhook"
listen = "127.0.0.1:{env["webhook_port"]}"
path = "/events"
api_key = {{ env = "SOAK_API_KEY" }}
unknown_triggers = "dead-letter"

[inputs.amqp]
type = "amqp"
url = "{AMQP_URL}"
exchange = ""
queue = "{env["amqp_queue"]}"
declare = false
unknown_triggers = "dead-letter"

[inputs.mqtt]
type = "mqtt"
url = "mqtt://127.0.0.1:{env["mqtt_port"]}"
client_id = "soak-{uuid.uuid4().hex[:8]}"
reconnect_max = "1s"
unknown_triggers = "dead-letter"

[inputs.redis_pubsub]
type = "redis"
url = "redis://127.0.0.1:{env["redis_port"]}/0"
reconnect_max = "1s"
unknown_triggers = "dead-letter"

[inputs.redis_stream]
type = "redis"
url = "redis://127.0.0.1:{env["redis_port"]}/0"
mode = "stream"
stream = "{env["redis_stream"]}"
reconnect_max = "1s"
unknown_triggers = "dead-letter"

[inputs.pubsub]
type = "pubsub"
project = "{PROJECT}"
subscription = "{env["pubsub_subscription"]}"
emulator_host = "{env["pubsub_host"]}"
ack_deadline = "30s"
reconnect_max = "1s"
unknown_triggers = "dead-letter"

[outputs.archive]
type = "file"
path = "events.jsonl"

[outputs.crm]
type = "http"
url = "http://127.0.0.1:{env["receiver_port"]}/hooks/{{{{trigger}}}}"
timeout = 2
# an outage lasts 5-15 s; the six waits between seven attempts are capped at 23.5 s in all and jittered to
# about half of that, so most deliveries ride an outage out and some, failing early in a long one, exhaust
# their attempts and are dead-lettered
retry = {{ max_attempts = 7, initial_backoff = "500ms", max_backoff = "8s", multiplier = 2, max_age = "10m" }}

[[routes]]
name = "everything"
match = {{ trigger = ["**"] }}
to = ["archive", "crm"]
"""


def get_json(url: str, timeout: float = 60) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return orjson.loads(response.read())


def slope_per_minute(points: list[tuple[float, float]]) -> float | None:
    """Least-squares MB per minute over (seconds, MB) points."""
    if len(points) < 3 or len({p[1] for p in points}) < 2:
        return 0.0 if len(points) >= 3 else None
    return statistics.linear_regression([t / 60 for t, _ in points], [mb for _, mb in points]).slope


# --- the run ----------------------------------------------------------------------------------------------------


@dataclass
class Watch:
    """RSS samples and a coarse timeline, taken while the soak runs."""

    rp: RouterProcess
    admin_port: int
    started: float = field(default_factory=time.monotonic)
    #: (seconds, MB): the router's VmRSS
    rss: list[tuple[float, float]] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def pid(self) -> int:
        assert self.rp.proc is not None
        return self.rp.proc.pid

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def sample(self) -> None:
        """One RSS sample; also reads the router's sd_notify datagrams, as systemd would: the socket holds
        only a few (net.unix.max_dgram_qlen, 10 by default), and a router whose notify socket is full blocks."""
        self.rp.poll_messages()
        value = rss_mb(self.pid)
        if value is None:
            raise RuntimeError("the router exited during the soak")
        self.rss.append((round(self.elapsed(), 1), value))

    async def sample_rss(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RSS_EVERY)

    def snapshot(self, phase: str, senders: Senders) -> dict[str, Any]:
        m = metrics(self.admin_port)
        row = {
            "t": round(self.elapsed()),
            "phase": phase,
            "sent": senders.sent_total(),
            "router_in": round(total(m, "event_router_events_received_total") + undecodable(m)),
            "delivered_archive": round(
                total(m, "event_router_deliveries_total", output="archive", outcome="delivered")
            ),
            "delivered_crm": round(total(m, "event_router_deliveries_total", output="crm", outcome="delivered")),
            "pending_events": round(total(m, "event_router_spool_pending_events")),
            "rss_mb": rss_mb(self.pid),
        }
        self.timeline.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        return row

    async def log_timeline(self, stop: asyncio.Event, senders: Senders) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TIMELINE_EVERY)
            if stop.is_set():
                return  # the drain's snapshot follows
            try:
                await asyncio.to_thread(self.snapshot, "sending", senders)
            except OSError as exc:
                self.errors[f"metrics: {exc}"] += 1


def undecodable(m: dict[str, dict[tuple[tuple[str, str], ...], float]]) -> float:
    """Messages an input dead-lettered before they became events (not in events_received_total)."""
    return total(m, "event_router_dead_letters_total", reason="undecodable")


async def soak(senders: Senders, watch: Watch, seconds: float, drain_timeout: float) -> dict[str, Any]:
    stop = asyncio.Event()
    rss_task = asyncio.create_task(watch.sample_rss(stop))
    timeline_task = asyncio.create_task(watch.log_timeline(stop, senders))
    cpu0 = cpu_seconds(watch.pid)
    send_started = time.monotonic()
    await senders.run(seconds)
    send_seconds = time.monotonic() - send_started
    cpu_sending = cpu_seconds(watch.pid) - cpu0
    stop.set()
    await asyncio.gather(rss_task, timeline_task)
    sending_rss = list(watch.rss)

    # drain: the receiver stays up; wait until the router took in everything and its spool is empty
    await asyncio.to_thread(get_json, f"http://127.0.0.1:{senders.env['receiver_port']}/steady")
    expected = sum(len(s.accepted) for s in senders.stats.values())
    drain_started = time.monotonic()
    drained = False
    while time.monotonic() - drain_started < drain_timeout:
        watch.sample()
        try:
            m = await asyncio.to_thread(metrics, watch.admin_port)
        except OSError as exc:  # a router too busy to answer in time is what the soak is here to show
            watch.errors[f"metrics: {exc}"] += 1
        else:
            got = total(m, "event_router_events_received_total") + undecodable(m)
            busy = total(m, "event_router_spool_pending_events") + total(m, "event_router_deliveries_in_flight")
            if got >= expected and busy == 0:
                drained = True
                break
        await asyncio.sleep(RSS_EVERY)
    drain_seconds = time.monotonic() - drain_started
    try:
        await asyncio.to_thread(watch.snapshot, "drained" if drained else "drain timed out", senders)
    except OSError as exc:
        watch.errors[f"metrics: {exc}"] += 1
    return {
        "send_seconds": round(send_seconds, 1),
        "drain_seconds": round(drain_seconds, 1),
        "drained": drained,
        "router_cpu_pct_while_sending": round(100 * cpu_sending / send_seconds),
        "sending_rss": sending_rss,
    }


# --- counting ------------------------------------------------------------------------------------------------


def tokens_in(raw: bytes) -> set[str]:
    return {t.decode() for t in TOKEN.findall(raw)}


@dataclass
class Counted:
    """What the outputs and the dead letters hold, by token."""

    file_lines: int = 0
    file_tokens: Counter[str] = field(default_factory=Counter)
    #: router event id -> token, from the file and the dead letters
    event_token: dict[str, str] = field(default_factory=dict)
    crm_tokens: Counter[str] = field(default_factory=Counter)
    crm_unknown_keys: int = 0
    dead_input: dict[str, str] = field(default_factory=dict)
    dead_output: dict[str, dict[str, str]] = field(default_factory=dict)
    dead_letters: int = 0
    dead_reasons: Counter[str] = field(default_factory=Counter)
    odd_lines: int = 0
    #: the receiver's own account: answers by mode, and its up/down schedule as it happened
    receiver: dict[str, Any] = field(default_factory=dict)


def count(work: Path, receiver_port: int) -> Counted:
    c = Counted()
    with (work / "events.jsonl").open("rb") as f:
        for line in f:
            c.file_lines += 1
            found = tokens_in(line)
            if len(found) != 1:
                c.odd_lines += 1
                continue
            (token,) = found
            c.file_tokens[token] += 1
            c.event_token[orjson.loads(line)["id"]] = token
    spool = SQLiteSpool(work / "var" / "spool.db")
    spool.open("readonly")
    try:
        letters = spool.dead_letters(DeadLetterFilter())
    finally:
        spool.close()
    for dl in letters:
        c.dead_letters += 1
        c.dead_reasons[f"{dl.output or '(input)'}/{dl.reason}"] += 1
        found = tokens_in(dl.body)
        if len(found) != 1:
            c.odd_lines += 1
            continue
        (token,) = found
        if dl.event_id:
            c.event_token.setdefault(dl.event_id, token)
        if dl.output is None:
            c.dead_input[token] = dl.reason
        else:
            c.dead_output.setdefault(dl.output, {})[token] = dl.reason
    received = get_json(f"http://127.0.0.1:{receiver_port}/records")
    for key in received["keys"]:
        known = c.event_token.get(key)
        if known is None:
            c.crm_unknown_keys += 1
        else:
            c.crm_tokens[known] += 1
    c.receiver = {"answers": received["answers"], "phases": received["phases"]}
    return c


def account(senders: Senders, c: Counted) -> dict[str, Any]:
    """in = delivered + dead letters for each output, overall and per input; lost must be 0."""
    accepted = set().union(*(s.accepted for s in senders.stats.values()))
    bad = set().union(*(s.bad for s in senders.stats.values()))
    refused = set().union(*(s.refused for s in senders.stats.values()))
    dead_input = set(c.dead_input)
    outputs: dict[str, Any] = {}
    for name, delivered_counts in (("archive", c.file_tokens), ("crm", c.crm_tokens)):
        delivered = set(delivered_counts)
        dead_here = set(c.dead_output.get(name, {}))
        dead = dead_input | dead_here
        accounted = delivered | dead
        lost = accepted - accounted
        per_input = {}
        for input_name, s in senders.stats.items():
            mine = s.accepted
            per_input[input_name] = {
                "in": len(mine),
                "delivered": len(mine & delivered),
                "dead_letters": len(mine & dead),
                "lost": len(mine - accounted),
            }
        outputs[name] = {
            "in": len(accepted),
            "delivered": len(delivered & accepted),
            "dead_letters": len(dead & accepted),
            "dead_letters_at_input": len(dead_input & accepted),
            "dead_letters_at_output": len(dead_here & accepted),
            "delivered_and_dead": len(delivered & dead & accepted),
            "in_equals_delivered_plus_dead": len(accepted) == len(accounted & accepted),
            "lost": len(lost),
            "lost_sample": sorted(lost)[:10],
            "duplicates": sum(n - 1 for n in delivered_counts.values() if n > 1),
            "unexpected": len(accounted - accepted - refused),
            "delivered_though_refused": len(delivered & refused),
            "per_input": per_input,
        }
    outputs["crm"]["receiver_keys_unmatched"] = c.crm_unknown_keys
    return {
        "outputs": outputs,
        "bad_events": {
            "sent": len(bad),
            "dead_lettered": len(bad & dead_input),
            "delivered_anywhere": len(bad & (set(c.file_tokens) | set(c.crm_tokens))),
            "reasons": dict(Counter(c.dead_input[t] for t in bad & dead_input)),
        },
        "good_events_dead_lettered_at_input": len((accepted - bad) & dead_input),
    }


# --- setup and main ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def services(work: Path) -> Iterator[dict[str, Any]]:
    """Private Redis and Mosquitto, the Pub/Sub emulator, a fresh AMQP exchange and queue; all removed after."""
    env: dict[str, Any] = {}
    token = uuid.uuid4().hex[:8]
    env["amqp_exchange"], env["amqp_queue"] = f"soak-connector-{token}", f"soak-router-{token}"
    asyncio.run(declare(AMQP_URL, env["amqp_exchange"], [env["amqp_queue"]]))
    redis_server = PrivateRedis(free_port())
    mqtt_conf = work / "mosquitto.conf"
    mqtt = PrivateBroker(free_port(), conf=mqtt_conf)
    mqtt_conf.write_text(f"listener {mqtt.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    try:
        env["redis_port"] = redis_server.start().port
        env["redis_stream"] = f"soak-{token}"
        env["mqtt_port"] = mqtt.start().port
        with running_emulator(work / "pubsub-emulator.log") as host:
            admin = PubSubAdmin(host)
            env["pubsub_host"], env["pubsub_admin"] = host, admin

            async def topic_and_subscription() -> tuple[str, str]:
                topic = await admin.create_topic()
                return topic, await admin.create_subscription(topic, ack_deadline=30)

            env["pubsub_topic"], env["pubsub_subscription"] = asyncio.run(topic_and_subscription())
            yield env
    finally:
        mqtt.stop()
        redis_server.stop()
        asyncio.run(remove(AMQP_URL, env["amqp_exchange"], [env["amqp_queue"]]))


def code_version() -> dict[str, Any]:
    """The commit under test, and the files of the router and plugins that differ from it (a shared checkout)."""

    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], capture_output=True, text=True, cwd=BENCH.parent, check=False)
        return done.stdout

    changed = git("status", "--porcelain", "--", "router", "plugins").splitlines()
    return {"commit": git("rev-parse", "--short", "HEAD").strip(), "uncommitted": [line[3:] for line in changed]}


def log_summary(records: list[dict[str, Any]]) -> dict[str, int]:
    """How often the router logged each warning and error (retries, reconnects, dead letters)."""
    seen = Counter(f"{r.get('level')}: {r.get('msg')}" for r in records if r.get("level") in ("warning", "error"))
    return dict(seen.most_common())


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    report: dict[str, Any] = {
        "scenario": "soak",
        "date": utc_now(),
        "machine": machine(),
        "quick": args.quick,
        "duration_s": args.duration,
        "rate_per_s": args.rate,
        "seed": args.seed,
        "code": code_version(),
    }
    with services(work) as env:
        env["webhook_port"], env["admin_port"], env["receiver_port"] = free_port(), free_port(), free_port()
        config = work / "router.toml"
        config.write_text(router_toml(env))
        receiver_cmd = [PYTHON, str(BENCH / "_servers.py"), "flaky", str(env["receiver_port"]), str(args.seed)]
        senders = Senders(work, args.rate, args.seed, env)
        with (
            child(receiver_cmd, port=env["receiver_port"], log=work / "receiver.log"),
            router(config, env={"SOAK_API_KEY": API_KEY}) as rp,
        ):
            assert rp.proc is not None
            pid = rp.proc.pid
            watch = Watch(rp, env["admin_port"])
            ran = asyncio.run(soak(senders, watch, args.duration, args.drain_timeout))
            counted = count(work, env["receiver_port"])
            cli_env = {"SOAK_API_KEY": API_KEY}
            status = run_cli("status", "-c", str(config), "--json", cwd=work, env=cli_env)
            dlq = run_cli("dlq", "list", "-c", str(config), "--json", "--limit", "100000000", cwd=work, env=cli_env)
            m = metrics(env["admin_port"])
            hwm = status_kb(pid, "VmHWM")
            exit_code = rp.terminate(timeout=60)
    sending_rss = ran.pop("sending_rss")
    second_half = [(t, mb) for t, mb in sending_rss if t >= ran["send_seconds"] / 2]
    slope = slope_per_minute(second_half)
    # the router's caches and connection pools fill during the first minutes: a shorter run's second half
    # is still warm-up, so its slope is reported but not judged
    judged = ran["send_seconds"] / 2 >= RSS_WARMUP
    rss = {
        "first_mb": watch.rss[0][1],
        "last_mb": watch.rss[-1][1],
        "max_mb": max(mb for _, mb in watch.rss),
        "peak_hwm_mb": round(hwm / 1024, 1) if hwm else None,
        "second_half_slope_mb_per_min": None if slope is None else round(slope, 3),
        "slope_judged": judged,
        "max_slope_mb_per_min": args.max_rss_slope,
        "second_half_first_last_mb": [second_half[0][1], second_half[-1][1]] if second_half else None,
        "samples": len(watch.rss),
        "every_s": RSS_EVERY,
    }
    accounting = account(senders, counted)
    spool = json.loads(status.stdout) if status.returncode == 0 else {"error": status.stderr[-500:]}
    report.update(ran)
    report["inputs"] = {
        name: {
            "sent": s.sent,
            "in": len(s.accepted),
            "bad": len(s.bad),
            "refused": len(s.refused),
            "send_errors": dict(s.errors),
            **({"statuses": dict(s.statuses)} if s.statuses else {}),
            "router_received": round(total(m, "event_router_events_received_total", input=name)),
            "schedule_lag_max_ms": round(s.lag_max * 1000, 1),
        }
        for name, s in senders.stats.items()
    }
    report.update(accounting)
    report["router_metrics"] = {
        "deliveries": by_label(m, "event_router_deliveries_total", "output", "outcome"),
        "dead_letters": by_label(m, "event_router_dead_letters_total", "reason", "output"),
        "events_received": round(total(m, "event_router_events_received_total")),
    }
    report["dead_letters"] = {
        "stored": counted.dead_letters,
        "by_output_reason": dict(counted.dead_reasons),
        "dlq_list_count": len(json.loads(dlq.stdout)) if dlq.returncode == 0 else None,
        "lines_without_one_token": counted.odd_lines,
    }
    report["spool_after_drain"] = {
        "pending_events": spool.get("pending_events"),
        "pending_deliveries": {name: o["pending"] for name, o in spool.get("outputs", {}).items() if o["pending"]},
        "dead_letters_total": spool.get("dead_letters", {}).get("total"),
    }
    report["receiver"] = counted.receiver
    report["file_lines"] = counted.file_lines
    report["rss"] = rss
    report["router_log"] = log_summary(rp.log_records())
    report["timeline"] = watch.timeline
    report["metrics_errors"] = dict(watch.errors)
    report["router_exit_code"] = exit_code
    lost = sum(report["outputs"][o]["lost"] for o in ("archive", "crm"))
    problems = []
    if lost:
        problems.append(f"{lost} events lost")
    if not ran["drained"]:
        problems.append(f"the router did not drain within {args.drain_timeout:g} s")
    if accounting["bad_events"]["delivered_anywhere"] or accounting["good_events_dead_lettered_at_input"]:
        problems.append("bad events delivered or good events dead-lettered at an input")
    if judged and (slope is None or slope > args.max_rss_slope):
        problems.append(f"RSS slope over the second half {slope} MB/min > {args.max_rss_slope}")
    if exit_code != 0:
        problems.append(f"the router exited with {exit_code} on SIGTERM")
    report["problems"] = problems
    report["ok"] = not problems
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600, help="seconds of sending (default 600)")
    parser.add_argument("--rate", type=float, default=500, help="events per second over all inputs (default 500)")
    parser.add_argument("--quick", action="store_true", help="a 60 s run (overrides --duration)")
    parser.add_argument("--report", type=Path, default=BENCH / "out" / "soak.json", help="where the JSON goes")
    parser.add_argument("--seed", type=int, default=1, help="the receiver's flapping and the events' mix")
    parser.add_argument("--drain-timeout", type=float, help="seconds to wait for the drain (default: the duration)")
    parser.add_argument("--max-rss-slope", type=float, default=1.0, help="MB/min allowed over the second half")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (router log, spool, file)")
    args = parser.parse_args()
    if args.quick:
        args.duration = 60.0
    if args.drain_timeout is None:
        args.drain_timeout = max(120.0, args.duration)
    work = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    try:
        report = run(args, work)
    finally:
        if args.keep:
            print(f"working directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    emit(report, None)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
