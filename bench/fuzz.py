"""Coverage-guided fuzzing (atheris) of the router's input paths: the webhook decoder, each broker input's
decoding, validation and routing (`plan_event`), and the router.toml loader.

    .venv/bin/pip install atheris
    .venv/bin/python bench/fuzz.py CORPUS_DIR -atheris_runs=200000          # or -max_total_time=600

The first byte of an input picks the path; the rest is split at NUL bytes into the transport's fields:

    T<router.toml>                        the config loader
    A<routing key>\\0<header>\\0<body>      AMQP: a basic.deliver decoded by pamqp, `header` as header `h`
    M<topic>\\0<payload>                   MQTT, as an input without and one with topic_prefix "site-a"
    R<channel>\\0<message>                 Redis pub/sub, the dict redis-py yields
    S<name>\\0<value>\\0<name>\\0<value>...   a Redis stream entry's fields
    P<namespace>\\0<data>                  a pulled Pub/Sub message
    anything else                         a webhook body (the whole input)

Every decoded message must pass the checks of `event_router.testing.decoding` (what the inputs' property
tests assert): an event that plans and stores, or a rejection with a reason and the bytes unchanged. A
failed check is a crash like any other. `seed()` starts the corpus from the Connector's example events in
each transport's form. A crash prints the input that caused it and writes it to ./crash-<sha1>
(-artifact_prefix=DIR/ to put it elsewhere); add it as a regression case to the property tests of that
path (tests/test_fuzz.py, plugins/*/tests/test_*_decode*.py).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# third-party code the fuzzer need not see into: imported before instrumentation starts
import aio_pika  # noqa: F401
import aiomqtt  # noqa: F401
import atheris
import gcloud.aio.pubsub
import redis.asyncio  # noqa: F401

with atheris.instrument_imports():
    from event_router.api.batching import BatchStore, Rejected
    from event_router.api.plugin import PluginContext
    from event_router.config import ConfigErrors, build_config
    from event_router.core.plan import plan_event
    from event_router.inputs.webhook import WebhookInput
    from event_router.plugin_loader import load_plugins
    from event_router.testing.decoding import RecordingSink, check_event, check_rejection, shipped_router
    from event_router_amqp.input import AmqpInput
    from event_router_amqp.testing import delivered
    from event_router_mqtt.input import MqttInput
    from event_router_mqtt.testing import received
    from event_router_pubsub.decode import decode as pubsub_decode
    from event_router_redis.pubsub import PubSubReader
    from event_router_redis.settings import parse_settings
    from event_router_redis.stream import StreamReader

REGISTRY = load_plugins(entry_points=False)
ROUTER_TOML = Path(__file__).resolve().parents[1] / "router.toml"
CONFIG, SCHEMAS = shipped_router()
LOG = logging.getLogger("fuzz")
CONTEXT = PluginContext("fuzz", Path("/tmp"), LOG, Path("/tmp"))
WEBHOOK = WebhookInput({"listen": "127.0.0.1:1"}, CONTEXT)
AMQP = AmqpInput({"url": "amqp://guest:guest@127.0.0.1/"}, CONTEXT)
MQTT = [MqttInput({"url": "mqtt://127.0.0.1", "topic_prefix": prefix}, CONTEXT) for prefix in ("", "site-a")]
STORE = BatchStore(RecordingSink(), LOG, 10)  # decoding never stores
REDIS_PUBSUB = PubSubReader(parse_settings({"url": "redis://127.0.0.1"}, "fuzz"), "fuzz", STORE)
REDIS_STREAM = StreamReader(
    parse_settings({"url": "redis://127.0.0.1", "mode": "stream", "stream": "s"}, "fuzz"), "fuzz", STORE, LOG
)
PUBLISHED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def fields(data: bytes, count: int) -> list[bytes]:
    """`count` fields split at NUL bytes; the last keeps any further NULs, missing ones are empty."""
    parts = data.split(b"\0", count - 1)
    return parts + [b""] * (count - len(parts))


def check(item: Any, raw: bytes | None) -> None:
    """An input's decoding result must be a plannable, storable event or a rejection that keeps `raw`."""
    if isinstance(item, Rejected):
        check_rejection(item.payload, item.reason, item.trigger, item.meta, raw=raw or b"")
    else:
        check_event(item, raw, config=CONFIG, schemas=SCHEMAS)


def amqp(data: bytes) -> None:
    routing_key, header, body = fields(data, 3)
    # a routing key that is not UTF-8 too: the input's tolerant decoders hand it over, as delivered() does
    message = delivered(routing_key[:255], body, headers={b"h": header} if header else None)
    check(AMQP._decode(message), body)


def mqtt(data: bytes) -> None:
    topic, payload = fields(data, 2)
    try:
        message = received(topic, payload, qos=1)
    except (UnicodeDecodeError, ValueError):
        return  # aiomqtt refuses it (not UTF-8, a wildcard, empty); a broker would not deliver it anyway
    for inp in MQTT:
        check(inp._decode(message), payload)


def redis_pubsub(data: bytes) -> None:
    channel, message = fields(data, 2)
    check(REDIS_PUBSUB.decode({"type": "pmessage", "pattern": b"*", "channel": channel, "data": message}), message)


def redis_stream(data: bytes) -> None:
    parts = data.split(b"\0")
    entry = dict(zip(parts[::2], parts[1::2], strict=False))
    item = REDIS_STREAM._decode(b"1-0", entry, 1)
    # raw is the JSON of the fields; that it keeps every field is a property the tests check
    check(item, item.payload if isinstance(item, Rejected) else item.raw)


def pubsub(data: bytes) -> None:
    namespace, payload = fields(data, 2)
    try:
        # the REST API's JSON may escape lone surrogates; surrogatepass lets them through as JSON would
        attributes = {"namespace": namespace.decode("utf-8", "surrogatepass")} if namespace else None
    except UnicodeDecodeError:
        return  # JSON text cannot carry it
    message = gcloud.aio.pubsub.SubscriberMessage("ack", "1", PUBLISHED, payload or None, attributes)
    check(pubsub_decode(message, source="fuzz", subscription="projects/p/subscriptions/s"), payload or None)


def config(data: bytes) -> None:
    try:
        document = tomllib.loads(data.decode("utf-8", "replace"))
    except tomllib.TOMLDecodeError:
        return
    with contextlib.suppress(ConfigErrors):
        build_config(document, path=ROUTER_TOML, registry=REGISTRY)


def webhook(data: bytes) -> None:
    try:
        event = WEBHOOK._decode(data, None, {})
    except ValueError:
        return
    for validation in ("strict", "off"):
        plan_event(event, config=CONFIG, schemas=SCHEMAS, validation=validation)


PATHS = {b"T": config, b"A": amqp, b"M": mqtt, b"R": redis_pubsub, b"S": redis_stream, b"P": pubsub}


def one_input(data: bytes) -> None:
    path = PATHS.get(data[:1])
    if path is None:
        webhook(data)
    else:
        path(data[1:])


def seed(corpus: Path) -> None:
    """Start from real Connector messages in each transport's form: orjson is C the fuzzer cannot see into,
    so from random bytes it would almost never reach validation and routing. Adds what is missing."""
    import orjson

    from event_router.testing import example_events

    seeds = {"config": b"T" + ROUTER_TOML.read_bytes()}
    for index, event in enumerate(example_events()):
        trigger = event["trigger"].encode()
        body = orjson.dumps(event.get("data", {}))  # brokers carry the data only, `{}` for none
        seeds[f"example-{index}"] = orjson.dumps(event)  # the webhook body
        seeds[f"amqp-{index}"] = b"A" + trigger + b"\0\0" + body
        seeds[f"mqtt-{index}"] = b"M" + trigger.replace(b".", b"/") + b"\0" + body
        seeds[f"mqtt-prefix-{index}"] = b"Msite-a/" + trigger.replace(b".", b"/") + b"\0" + body
        seeds[f"redis-{index}"] = b"R" + trigger + b"\0" + body
        seeds[f"stream-{index}"] = b"Strigger\0" + trigger + b"\0data\0" + body
        seeds[f"pubsub-{index}"] = b"P" + trigger + b"\0" + body
    seeds["amqp-header"] = b"Atransport.messageReceived\0not UTF-8: \xff\0{}"
    corpus.mkdir(parents=True, exist_ok=True)
    for name, content in seeds.items():
        path = corpus / name
        if not path.exists():
            path.write_bytes(content)


if __name__ == "__main__":
    dirs = [Path(a) for a in sys.argv[1:] if not a.startswith("-")]
    if dirs:
        seed(dirs[0])
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
