"""AMQP → file: the router's amqp input against a bare aio-pika consumer, in the same run.

    .venv/bin/python bench/amqp_to_file.py [--count 100000] [--rounds 3] [--size 1200] [--url amqp://...] [--out FILE]

Publishes N Connector-format transport.messageReceived events (routing key = namespace, body = the data's
JSON with the Mail body padded to about --size bytes, no properties, exactly as the Connector's amqplib
publisher sends them) through a topic exchange into two fresh quorum queues, then drains them:

(a) baseline: a bare aio-pika consumer, prefetch 1000, manual ack of every message, parses each body and
    appends it to a file (no fsync). Timed from basic.consume until the N-th message is written.
(b) router: `event-router run` with the amqp input (defaults: prefetch 1000, batch 500) and the file output
    (fsync per batch). Timed from READY=1 until the output file has N lines.

Each round drains a fresh pair of queues, the two consumers back to back in alternating order; prints one
JSON object: {"scenario": "amqp_to_file", "count", "rounds": [...], "baseline_msgs_per_s",
"router_msgs_per_s", "ratio"}, the figures being medians over the rounds.
Needs RabbitMQ on 127.0.0.1:5672 and the event-router-amqp plugin installed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_seconds, emit, router

from event_router.testing import example
from event_router_amqp.testing import ConnectorPublisher

TRIGGER = "transport.messageReceived"


def padded_data(size: int) -> bytes:
    """The example event's data with its Mail body padded so the compact JSON is about `size` bytes."""
    data = example(TRIGGER)["data"]
    base = len(orjson.dumps(data))
    filler = ("Lorem ipsum dolor sit amet. " * (max(0, size - base) // 28 + 1))[: max(0, size - base)]
    data["content"]["body"] += filler
    return orjson.dumps(data)


async def declare(url: str, exchange: str, queues: list[str]) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        ex = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        for name in queues:
            queue = await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
            await queue.bind(ex, "#")


async def remove(url: str, exchange: str, queues: list[str]) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for name in queues:
            await channel.queue_delete(name)
        await channel.exchange_delete(exchange)


async def wait_depth(url: str, queue: str, count: int, timeout: float = 300) -> None:
    """Until the broker reports `count` ready messages (quorum queues apply publishes asynchronously)."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        deadline = time.monotonic() + timeout
        while True:
            q = await channel.declare_queue(queue, passive=True)
            if (q.declaration_result.message_count or 0) >= count:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"queue {queue} holds {q.declaration_result.message_count} of {count} messages")
            await asyncio.sleep(0.1)


async def baseline(url: str, queue: str, count: int, path: Path) -> tuple[float, float]:
    """Seconds a bare manual-ack consumer takes for `count` messages, and the CPU seconds it used."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=1000)
        q = await channel.get_queue(queue)
        done = asyncio.get_running_loop().create_future()
        seen = 0
        with path.open("ab") as out:

            async def handle(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                nonlocal seen
                body = orjson.loads(message.body)
                out.write(orjson.dumps(body) + b"\n")
                await message.ack()
                seen += 1
                if seen == count and not done.done():
                    done.set_result(None)

            started, cpu = time.perf_counter(), time.process_time()
            await q.consume(handle, no_ack=False)
            await done
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return elapsed, cpu


def lines_in(path: Path, state: dict[str, int]) -> int:
    """Newlines in `path`, reading only what was appended since the last call."""
    if not path.exists():
        return 0
    with path.open("rb") as f:
        f.seek(state.get("offset", 0))
        chunk = f.read()
    state["offset"] = state.get("offset", 0) + len(chunk)
    state["lines"] = state.get("lines", 0) + chunk.count(b"\n")
    return state["lines"]


def through_router(url: str, queue: str, count: int, work: Path, tuning: str = "") -> tuple[float, float]:
    """Seconds the router takes from READY=1 until its file output has `count` lines, and its CPU seconds."""
    out = work / "router-events.jsonl"
    config = work / "router.toml"
    config.write_text(
        f"""
[router]
data_dir = "./var"
log_level = "warning"
[inputs.connector]
type = "amqp"
url = "{url}"
queue = "{queue}"
exchange = ""
declare = false
{tuning}
[outputs.archive]
type = "file"
path = "{out.name}"
[[routes]]
name = "everything"
to = ["archive"]
"""
    )
    state: dict[str, int] = {}
    with router(config) as proc:
        pid = proc.proc.pid
        started, cpu = time.perf_counter(), cpu_seconds(pid)
        deadline = started + max(120.0, count / 200)
        while lines_in(out, state) < count:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"the router wrote {state.get('lines', 0)} of {count} lines in time")
            time.sleep(0.02)
        return time.perf_counter() - started, cpu_seconds(pid) - cpu


def one_round(args: argparse.Namespace, body: bytes, tuning: str, *, router_first: bool) -> dict[str, Any]:
    """Publish --count events into two fresh queues, drain one with each consumer; rates and CPU per message."""
    token = uuid.uuid4().hex[:8]
    exchange = f"bench-connector-{token}"
    queues = [f"bench-baseline-{token}", f"bench-router-{token}"]
    asyncio.run(declare(args.url, exchange, queues))
    try:
        started = time.perf_counter()
        with ConnectorPublisher(args.url) as publisher:
            publisher.publish_many(exchange, ((TRIGGER, body) for _ in range(args.count)))
        for queue in queues:
            asyncio.run(wait_depth(args.url, queue, args.count))
        out: dict[str, Any] = {"publish_seconds": round(time.perf_counter() - started, 2)}
        with tempfile.TemporaryDirectory(prefix="bench-amqp-") as tmp:
            work = Path(tmp)
            if router_first:
                routed, routed_cpu = through_router(args.url, queues[1], args.count, work, tuning)
            base, base_cpu = asyncio.run(baseline(args.url, queues[0], args.count, work / "baseline.jsonl"))
            if not router_first:
                routed, routed_cpu = through_router(args.url, queues[1], args.count, work, tuning)
    finally:
        asyncio.run(remove(args.url, exchange, queues))
    out["baseline_msgs_per_s"] = round(args.count / base, 1)
    out["router_msgs_per_s"] = round(args.count / routed, 1)
    out["ratio"] = round(base / routed, 3)
    # CPU per message moves less than wall time when other work shares the machine; the router's
    # figure adds up all its threads (spool writer, file writes), the baseline's is one thread
    out["baseline_cpu_us_per_msg"] = round(base_cpu / args.count * 1e6, 1)
    out["router_cpu_us_per_msg"] = round(routed_cpu / args.count * 1e6, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=1200, help="approximate body size in bytes")
    parser.add_argument("--url", default=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"))
    parser.add_argument("--out", type=Path, help="also append the JSON result to this file")
    parser.add_argument("--prefetch", type=int, help="the router input's prefetch (default: the input's default)")
    parser.add_argument("--batch-size", type=int, help="the router input's batch_size (default: the input's)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each draining a fresh pair of queues")
    args = parser.parse_args()
    body = padded_data(args.size)
    result: dict[str, Any] = {"scenario": "amqp_to_file", "count": args.count, "body_bytes": len(body)}
    if args.prefetch or args.batch_size:
        result["router_input"] = {"prefetch": args.prefetch, "batch_size": args.batch_size}
    tuning = "".join(
        f"{key} = {value}\n"
        for key, value in (("prefetch", args.prefetch), ("batch_size", args.batch_size))
        if value is not None
    )
    # this machine's speed drifts by tens of percent within minutes: several rounds, each with the two
    # consumers back to back (in alternating order), and the median of the per-round ratios
    rounds = [one_round(args, body, tuning, router_first=i % 2 == 1) for i in range(args.rounds)]
    result["rounds"] = rounds
    result["publish_seconds"] = statistics.median(r["publish_seconds"] for r in rounds)
    for key in ("baseline_msgs_per_s", "router_msgs_per_s", "baseline_cpu_us_per_msg", "router_cpu_us_per_msg"):
        result[key] = round(statistics.median(r[key] for r in rounds), 1)
    result["ratio"] = round(statistics.median(r["ratio"] for r in rounds), 3)
    emit(result, args.out)


if __name__ == "__main__":
    main()
