"""`event-router check` says each route's delivery guarantee, from where an event is published to each output, as
every input and output plugin describes its own (`guarantee()` of the plugin API), run as a real subprocess."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from anyio.abc import TaskStatus

from event_router.api import Delivery, EventSink, Input, Output, PluginContext
from event_router.testing import ROOT, run_cli

CONFIG = """
[router]
data_dir = "./var"

[inputs.hooks]
type = "webhook"
listen = "127.0.0.1:0"

[inputs.recovery]
type = "connector"
base_url = "http://127.0.0.1:8080"
api_key = "a-key-for-the-test"
covers = "hooks"

[inputs.limited]
type = "webhook"
listen = "127.0.0.1:0"
rate_limit = { per_second = 100 }

[inputs.rabbit]
type = "amqp"
url = "amqp://guest:guest@127.0.0.1:5672/"
exchange = "enmeshed"

[inputs.rabbit_classic]
type = "amqp"
url = "amqp://guest:guest@127.0.0.1:5672/"
exchange = "enmeshed"
queue = "classic"
queue_type = "classic"

[inputs.mqtt0]
type = "mqtt"
url = "mqtt://127.0.0.1:1883"
qos = 0

[inputs.mqtt1]
type = "mqtt"
url = "mqtt://127.0.0.1:1883"

[inputs.mqtt_clean]
type = "mqtt"
url = "mqtt://127.0.0.1:1883"
clean_session = true

[inputs.channels]
type = "redis"
url = "redis://127.0.0.1:6379/0"

[inputs.stream]
type = "redis"
url = "redis://127.0.0.1:6379/0"
mode = "stream"
stream = "enmeshed-events"

[inputs.gcp]
type = "pubsub"
project = "test-project"
subscription = "enmeshed-events"

[outputs.archive]
type = "file"
path = "./var/events.jsonl"

[outputs.scratch]
type = "file"
path = "./var/scratch.jsonl"
fsync = false

[outputs.crm]
type = "http"
url = "http://127.0.0.1:9000/hooks"

[outputs.connector]
type = "connector"
base_url = "http://127.0.0.1:8080"
api_key = "a-key-for-the-test"

[[routes]]
name = "mail to CRM"
match = { source = ["hooks"], trigger = ["transport.messageReceived"] }
to = ["crm"]

[[routes]]
name = "mqtt to files"
match = { source = [{ prefix = "mqtt" }] }
to = ["archive", "scratch"]

[[routes]]
name = "accept requests"
match.source = ["rabbit", "rabbit_classic", "channels", "stream", "gcp", "limited"]
match.trigger = ["consumption.incomingRequestReceived"]
to = ["connector"]
action = { name = "accept_request", id = "{{ data.id }}", items = [{ accept = true }] }
"""

WEBHOOK = (
    "lost while the router is unreachable or refuses, as during a restart without the systemd socket unit or when "
    "the spool cannot write: the Connector does not retry"
)
WEBHOOK_LIMITED = (
    "lost while the router is unreachable or refuses, as during a restart without the systemd socket unit, when "
    "the spool cannot write or past rate_limit: the Connector does not retry"
)
AMQP_TAIL = (
    "+ ack after storing: at least once from the broker; but the Connector publishes without confirms and never "
    "reconnects"
)
AMQP = f"durable quorum queue {AMQP_TAIL}"
AMQP_CLASSIC = f"durable classic queue, which loses transient messages on a broker restart, {AMQP_TAIL}"
MQTT_AWAY = "lost while the router is not connected unless the broker queues QoS 0"
MQTT0 = f"QoS 0: at most once in transit; {MQTT_AWAY}"
MQTT1 = f"QoS 1, persistent session: at least once for QoS 1 publishes, but the Connector's are QoS 0: {MQTT_AWAY}"
MQTT_CLEAN = "QoS 1, clean session: at most once; lost while the router is not connected"
REDIS_PUBSUB = "Redis pub/sub: at most once; lost while the router is not subscribed or too slow"
REDIS_STREAM = (
    "Redis stream + XACK after storing: at least once from the stream; the Connector only PUBLISHes, what writes "
    "the stream decides what is in it"
)
PUBSUB = (
    "subscription + ack after storing: at least once from the subscription, which keeps events while the router "
    "is away once it exists; the Connector drops a publish that fails after its client's retries"
)
FILE = "at least once, fsynced; a line written again after a crash carries the same id"
FILE_NO_FSYNC = "at least once while the host stays up: fsync = false, a power loss can undo lines delivered"
RECOVERED = f"{WEBHOOK}; recovered from the Connector every 5m"
HTTP = "at least once: retried until a 2xx; repeats carry the same Idempotency-Key"
CONNECTOR = "at least once, with no idempotency key: a repeated send_message or create_* makes a second one"


def test_check_says_each_routes_guarantee_from_every_source_to_every_output(tmp_path: Path) -> None:
    config = tmp_path / "router.toml"
    config.write_text(CONFIG)
    checked = run_cli("check", "-c", str(config))
    assert checked.returncode == 0, checked.stderr
    lines = checked.stdout.splitlines()
    assert lines[0] == f"{config}: ok: 11 input(s), 4 output(s), 3 route(s), 60 event schemas"
    assert lines[1] == f"spool (sqlite): {tmp_path / 'var' / 'spool.db'} (not tried: --connect tries it)"
    # only the inputs a route's `source` admits, each to each of its outputs, in the order of router.toml; the
    # recovery input has no lines of its own: its guarantee is added to the webhook's it covers
    assert lines[2:] == [
        f'route "mail to CRM": webhook "hooks" ({RECOVERED}) -> http "crm" ({HTTP})',
        f'route "mqtt to files": mqtt "mqtt0" ({MQTT0}) -> file "archive" ({FILE})',
        f'route "mqtt to files": mqtt "mqtt0" ({MQTT0}) -> file "scratch" ({FILE_NO_FSYNC})',
        f'route "mqtt to files": mqtt "mqtt1" ({MQTT1}) -> file "archive" ({FILE})',
        f'route "mqtt to files": mqtt "mqtt1" ({MQTT1}) -> file "scratch" ({FILE_NO_FSYNC})',
        f'route "mqtt to files": mqtt "mqtt_clean" ({MQTT_CLEAN}) -> file "archive" ({FILE})',
        f'route "mqtt to files": mqtt "mqtt_clean" ({MQTT_CLEAN}) -> file "scratch" ({FILE_NO_FSYNC})',
        f'route "accept requests": webhook "limited" ({WEBHOOK_LIMITED}) -> connector "connector" ({CONNECTOR})',
        f'route "accept requests": amqp "rabbit" ({AMQP}) -> connector "connector" ({CONNECTOR})',
        f'route "accept requests": amqp "rabbit_classic" ({AMQP_CLASSIC}) -> connector "connector" ({CONNECTOR})',
        f'route "accept requests": redis "channels" ({REDIS_PUBSUB}) -> connector "connector" ({CONNECTOR})',
        f'route "accept requests": redis "stream" ({REDIS_STREAM}) -> connector "connector" ({CONNECTOR})',
        f'route "accept requests": pubsub "gcp" ({PUBSUB}) -> connector "connector" ({CONNECTOR})',
    ]


def test_check_json_has_the_guarantees(tmp_path: Path) -> None:
    config = tmp_path / "router.toml"
    config.write_text(CONFIG)
    checked = run_cli("check", "-c", str(config), "--json")
    assert checked.returncode == 0, checked.stderr
    rows = json.loads(checked.stdout)["guarantees"]
    assert len(rows) == 13
    assert rows[0] == {
        "route": "mail to CRM",
        "input": "hooks",
        "input_type": "webhook",
        "input_guarantee": RECOVERED,
        "output": "crm",
        "output_type": "http",
        "output_guarantee": HTTP,
        "recovered_by": "recovery",
    }
    assert {(r["input"], r["input_guarantee"]) for r in rows if r["route"] == "mqtt to files"} == {
        ("mqtt0", MQTT0),
        ("mqtt1", MQTT1),
        ("mqtt_clean", MQTT_CLEAN),
    }


def test_a_route_without_a_source_condition_is_fed_by_every_input(tmp_path: Path) -> None:
    config = tmp_path / "router.toml"
    config.write_text(
        '[router]\ndata_dir = "./var"\n'
        '[inputs.hooks]\ntype = "webhook"\nlisten = "127.0.0.1:0"\n'
        '[inputs.signed]\ntype = "webhook"\nlisten = "127.0.0.1:0"\n'
        'signing_secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]\n'
        '[outputs.archive]\ntype = "file"\npath = "./var/events.jsonl"\n'
        '[[routes]]\nname = "everything"\nto = ["archive"]\n'
    )
    checked = run_cli("check", "-c", str(config))
    assert checked.returncode == 0, checked.stderr
    signed = "at least once from a sender that retries on non-2xx; stored once per webhook-id"
    assert checked.stdout.splitlines()[2:] == [
        f'route "everything": webhook "hooks" ({WEBHOOK}) -> file "archive" ({FILE})',
        f'route "everything": webhook "signed" ({signed}) -> file "archive" ({FILE})',
    ]


class _SaysNothingInput(Input):
    type_name = "says-nothing-in"

    async def run(self, sink: EventSink, *, task_status: TaskStatus[None]) -> None:
        task_status.started()


class _SaysNothingOutput(Output):
    type_name = "says-nothing-out"

    async def deliver(self, delivery: Delivery) -> None:
        return


def test_a_plugin_that_does_not_describe_its_guarantee_says_so(tmp_path: Path) -> None:
    """A third-party plugin written before `guarantee()` existed still works, and `check` does not invent a
    promise for it."""
    context = PluginContext(name="x", data_dir=tmp_path, logger=logging.getLogger("x"), config_dir=tmp_path)
    table: Mapping[str, Any] = {}
    assert _SaysNothingInput(table, context).guarantee() == "unknown: the plugin does not say"
    assert _SaysNothingOutput(table, context).guarantee() == "unknown: the plugin does not say"


DOCS_CONFIG = """
[router]
data_dir = "./var"
[inputs.connector]
type = "webhook"
listen = "127.0.0.1:0"
[inputs.recovery]
type = "connector"
base_url = "http://127.0.0.1:8080"
api_key = { env = "CONNECTOR_API_KEY" }
covers = "connector"
[inputs.broker]
type = "mqtt"
url = "mqtt://127.0.0.1:1883"
qos = 0
[outputs.crm]
type = "http"
url = "http://127.0.0.1:9000/hooks"
[outputs.archive]
type = "file"
path = "./var/events.jsonl"
[[routes]]
name = "mail to CRM"
match = { source = ["connector"] }
to = ["crm"]
[[routes]]
name = "archive mqtt"
match = { source = ["broker"] }
to = ["archive"]
"""


def test_the_docs_quote_what_check_prints(tmp_path: Path) -> None:
    """README's and docs/configuration.md's examples are check's output for the shipped router.toml,
    docs/plugins.md's for DOCS_CONFIG."""
    shipped = tmp_path / "router.toml"
    shipped.write_text((ROOT / "router.toml").read_text())
    documented = tmp_path / "docs.toml"
    documented.write_text(DOCS_CONFIG)
    printed = set()
    for config in (shipped, documented):
        checked = run_cli("check", "-c", str(config), "--no-secrets")
        assert checked.returncode == 0, checked.stderr
        printed |= set(checked.stdout.splitlines()[2:])
    for doc in (ROOT / "README.md", ROOT / "docs" / "plugins.md", ROOT / "docs" / "configuration.md"):
        quoted = [line for line in doc.read_text().splitlines() if line.startswith('route "')]
        assert quoted, f"{doc.name} quotes no line of check"
        assert [line for line in quoted if line not in printed] == [], f"{doc.name} quotes what check does not say"


def test_a_webhook_on_systemds_socket_loses_only_what_a_killed_router_was_answering(tmp_path: Path) -> None:
    """With `socket = "systemd"` a restart keeps connections waiting in systemd's queue: the phrase says so."""
    config = tmp_path / "router.toml"
    config.write_text(
        '[router]\ndata_dir = "./var"\n[inputs.connector]\ntype = "webhook"\nlisten = "127.0.0.1:8787"\n'
        'socket = "systemd"\n[outputs.archive]\ntype = "file"\npath = "./var/events.jsonl"\n'
        '[[routes]]\nname = "all"\nto = ["archive"]\n'
    )
    checked = run_cli("check", "-c", str(config))
    assert checked.returncode == 0, checked.stderr
    line = checked.stdout.splitlines()[2]  # line 1 says where the spool is
    assert line.startswith(
        'route "all": webhook "connector" (lost while the router is unreachable or refuses, as when killed or when '
        "the spool cannot write: the Connector does not retry) -> file"
    ), line
