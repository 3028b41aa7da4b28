"""Broker plugins import their client library only when an input or output of their type runs.

The router loads every installed plugin at start-up; a router that uses no AMQP, MQTT, Redis or Pub/Sub
must not pay for those clients (memory, start-up time), and neither must `event-router check`, which
constructs the configured inputs and outputs without running them. Each check runs in a fresh interpreter:
the test process itself has imported the clients long ago.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from event_router.testing import free_port

pytestmark = pytest.mark.slow

#: plugin type -> the top-level modules of the client library it runs on
CLIENTS = {
    "amqp": ["aio_pika", "aiormq", "pamqp"],
    "mqtt": ["aiomqtt", "paho"],
    "redis": ["redis"],
    "pubsub": ["gcloud"],
}

BUILTIN_ONLY = """
[inputs.hook]
type = "webhook"
listen = "127.0.0.1:{port}"

[outputs.archive]
type = "file"
path = "events.jsonl"

[outputs.crm]
type = "http"
url = "http://127.0.0.1:{port}/hooks"

[[routes]]
name = "everything"
match = {{ trigger = ["**"] }}
to = ["archive", "crm"]
"""

#: an input of every broker type (and the AMQP output), all aimed at a loopback port nothing listens on
BROKERS = """
[inputs.amqp]
type = "amqp"
url = "amqp://guest:guest@127.0.0.1:{port}/"

[inputs.mqtt]
type = "mqtt"
url = "mqtt://127.0.0.1:{port}"

[inputs.redis]
type = "redis"
url = "redis://127.0.0.1:{port}/0"

[inputs.pubsub]
type = "pubsub"
project = "test-project"
subscription = "connector-events"
emulator_host = "127.0.0.1:{port}"

[outputs.amqp]
type = "amqp"
url = "amqp://guest:guest@127.0.0.1:{port}/"
exchange = "events"

[[routes]]
name = "everything"
match = {{ trigger = ["**"] }}
to = ["amqp"]
"""

#: what `run` prints: the client modules in sys.modules after each step, as the router takes them
SCRIPT = """
import json, sys, tomllib
from functools import partial
from pathlib import Path

import anyio

from event_router.config import build_config
from event_router.api.event import Event
from event_router.api.plugin import Delivery
from event_router.plugin_loader import load_plugins
from event_router.testing import until
from event_router.testing.decoding import RecordingSink

clients, builtin_only, brokers, directory = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
every_client = {module for modules in clients.values() for module in modules}


def loaded():
    return sorted({name.partition(".")[0] for name in sys.modules} & every_client)


report = {}
registry = load_plugins()
report["plugins"] = sorted(registry.inputs)
report["registered"] = loaded()
build_config(tomllib.loads(builtin_only), path=directory / "router.toml", registry=registry)
report["builtin config"] = loaded()
config = build_config(tomllib.loads(brokers), path=directory / "router.toml", registry=registry)
event = Event(trigger="transport.messageReceived", data={}, source="test")
report["described"] = config.outputs["amqp"].plugin.describe(Delivery(1, event, {}, "route", 1))["routing_key"]
report["broker config"] = loaded()


async def start_each():
    for type_name, modules in clients.items():
        async with anyio.create_task_group() as tg:
            # not tg.start: an input reports started only once it consumes, and no broker listens here
            run = partial(config.inputs[type_name].plugin.run, task_status=anyio.TASK_STATUS_IGNORED)
            tg.start_soon(run, RecordingSink())
            await until(lambda: set(modules) <= set(loaded()), f"{type_name} to import {modules}", within=10)
            tg.cancel_scope.cancel()


anyio.run(start_each)
report["running"] = loaded()
report["amqp short strings"] = sys.modules["pamqp.decode"].METHODS["shortstr"].__module__
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("imports")
    port = free_port()
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            SCRIPT,
            json.dumps(CLIENTS),
            BUILTIN_ONLY.format(port=port),
            BROKERS.format(port=port),
            str(directory),
        ],
        capture_output=True,
        text=True,
        cwd=directory,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def test_every_broker_plugin_is_registered(report: dict[str, Any]) -> None:
    # without them the checks below would pass for want of anything to import
    assert set(CLIENTS) <= set(report["plugins"])


def test_registering_plugins_imports_no_client(report: dict[str, Any]) -> None:
    assert report["registered"] == []


def test_a_router_of_builtin_types_imports_no_client(report: dict[str, Any]) -> None:
    assert report["builtin config"] == []


def test_checking_a_broker_config_imports_no_client(report: dict[str, Any]) -> None:
    """What `event-router check` and `test` do: construct every input and output, describe a delivery."""
    assert report["described"] == "transport.messageReceived"
    assert report["broker config"] == []


def test_running_a_broker_input_imports_its_client(report: dict[str, Any]) -> None:
    """The control: the names above are the modules the plugins really import, once they run."""
    assert report["running"] == sorted(module for modules in CLIENTS.values() for module in modules)


def test_running_the_amqp_input_installs_its_tolerant_decoders(report: dict[str, Any]) -> None:
    """pamqp's strict UTF-8 decoding of names would drop the connection over one message in a loop
    (`event_router_amqp.tolerant_decode`): the input puts its decoders in when it imports the client."""
    assert report["amqp short strings"] == "event_router_amqp.tolerant_decode"


#: a valid configuration of the built-in plugins, a route to a Connector action among them
VALID = (
    BUILTIN_ONLY
    + """
[outputs.connector]
type = "connector"
base_url = "http://127.0.0.1:{port}"
api_key = "k"

[[routes]]
name = "sync"
match = {{ trigger = ["transport.messageReceived"] }}
to = ["connector"]
action = {{ name = "sync" }}
"""
)

JSONSCHEMA_SCRIPT = """
import json, sys, tomllib
from pathlib import Path

from event_router.config import build_config
from event_router.api.errors import RouterError
from event_router.plugin_loader import load_plugins

valid, directory = sys.argv[1], Path(sys.argv[2])
report = {}
registry = load_plugins()
build_config(tomllib.loads(valid), path=directory / "router.toml", registry=registry)
report["valid"] = "jsonschema" in sys.modules
broken = {
    "core": valid.replace('api_key = "k"', 'api_key = "k"\\nretry = {{ max_attempts = 0 }}'),
    "action": valid.replace('{{ name = "sync" }}', '{{ name = "send_message", mail = {{ subject = "s" }} }}'),
}
for name, text in broken.items():
    try:
        build_config(tomllib.loads(text), path=directory / "router.toml", registry=registry)
    except RouterError as exc:
        report[name] = str(exc)
report["invalid"] = "jsonschema" in sys.modules
print(json.dumps(report))
"""


def test_a_valid_configuration_is_checked_without_importing_jsonschema(tmp_path: Path) -> None:
    """jsonschema_rs says a configuration is valid; jsonschema (several MB a running router would hold) is
    imported only to word the errors of an invalid one, which it still words."""
    config = VALID.format(port=free_port())
    result = subprocess.run(
        [sys.executable, "-c", JSONSCHEMA_SCRIPT.replace("{{", "{").replace("}}", "}"), config, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["valid"] is False
    assert "outputs.connector.retry.max_attempts: 0 is less than the minimum of 1" in report["core"]
    assert "recipients" in report["action"], report["action"]
    assert report["invalid"] is True
