"""The MQTT input's table: defaults, and errors that name the key (never the password). No broker needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from event_router.testing import build_router_config, config_errors
from event_router_mqtt.input import MqttInput
from event_router_mqtt.settings import trigger_for


def build(table: str, tmp_path: Path) -> Any:
    return build_router_config(f'[inputs.mq]\ntype = "mqtt"\n{table}\n', tmp_path)


def errors_of(table: str, tmp_path: Path) -> list[str]:
    return config_errors(lambda: build(table, tmp_path))


def test_defaults(tmp_path: Path) -> None:
    plugin = build('url = "mqtt://127.0.0.1"', tmp_path).inputs["mq"].plugin
    assert isinstance(plugin, MqttInput)
    s = plugin.settings
    assert (s.broker.host, s.broker.port, s.broker.tls) == ("127.0.0.1", 1883, False)
    assert s.topics == ("transport/#", "consumption/#", "runtime/#")
    assert (s.qos, s.client_id, s.clean_session, s.topic_prefix) == (1, "event-router-mq", False, "")
    assert (s.reconnect_max, s.batch_size) == (30.0, 100)
    assert not plugin.is_ready(), "constructing connects to nothing"


def test_plain_url_warns_only_with_a_password(tmp_path: Path) -> None:
    """A URL without a password (a user name alone is no secret) is not a "secret written in plain text"."""
    for url in ("mqtt://broker:1883", "mqtts://router@broker:8883"):
        assert not [w for w in build(f'url = "{url}"', tmp_path).warnings if "plain text" in w], url
    warnings = build('url = "mqtt://router:hunter2@broker:1883"', tmp_path).warnings
    assert [w for w in warnings if "inputs.mq.url: secret written in plain text" in w], warnings


def test_tls_credentials_and_prefix(tmp_path: Path) -> None:
    table = 'url = "mqtts://router:p%40ss@broker.example:8884"\ntopic_prefix = "site-a/"\nclean_session = true'
    s = build(table, tmp_path).inputs["mq"].plugin.settings
    assert (s.broker.host, s.broker.port, s.broker.tls) == ("broker.example", 8884, True)
    assert (s.broker.username, s.broker.password) == ("router", "p@ss")
    assert s.broker.display == "mqtts://router@broker.example:8884"
    assert s.topics == ("site-a/transport/#", "site-a/consumption/#", "site-a/runtime/#")
    assert s.topic_prefix == "site-a"
    assert build('url = "mqtts://h"', tmp_path).inputs["mq"].plugin.settings.broker.port == 8883


# Schema errors are worded by the core: only their key path is checked here; the plugin's own are checked whole.
@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('url = "http://user:hunter2@h:1883"', "inputs.mq.url: must start with mqtt:// or mqtts://"),
        ('url = "mqtt://user:hunter2@"', "inputs.mq.url: has no host"),
        ('url = "mqtt://h:99999"', "inputs.mq.url: not a valid URL"),
        ('url = "mqtt://h/nmshd"', "inputs.mq.url: must not have a path"),
        ('url = "mqtt://h"\ntopics = ["transport/#/x"]', "inputs.mq.topics[0]: 'transport/#/x' is not an MQTT topic"),
        ('url = "mqtt://h"\ntopics = ["a/#", "a/b+"]', "inputs.mq.topics[1]: 'a/b+' is not an MQTT topic filter"),
        ('url = "mqtt://h"\ntopics = []', "inputs.mq.topics: "),
        ('url = "mqtt://h"\nqos = 2', "inputs.mq.qos: "),
        ('url = "mqtt://h"\ntopic_prefix = "a/+"', "inputs.mq.topic_prefix: 'a/+': wildcards are not allowed"),
        ('url = "mqtt://h"\nreconnect_max = 0', "inputs.mq.reconnect_max: must be more than 0"),
        ('url = "mqtt://h"\nreconnect_max = "soon"', "inputs.mq.reconnect_max: "),
        ('url = "mqtt://h"\nbatch_size = 0', "inputs.mq.batch_size: "),
        ('url = "mqtt://h"\nqueue = "x"', "'queue'"),
        ('url = { env = "NO_SUCH_VARIABLE_FOR_MQTT" }', "inputs.mq.url: environment variable"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, table: str, message: str) -> None:
    errors = errors_of(table, tmp_path)
    assert any(message in e for e in errors), errors
    assert all(e.endswith("(plugin mqtt)") for e in errors), errors
    assert not any("hunter2" in e for e in errors), "the URL is a secret: errors must not repeat it"


@pytest.mark.parametrize(
    ("topic", "prefix", "trigger"),
    [
        ("transport/messageReceived", "", "transport.messageReceived"),
        (
            "consumption/relationshipEvent/REL1YBBHLUEC51CGTOYD",
            "",
            "consumption.relationshipEvent.REL1YBBHLUEC51CGTOYD",
        ),
        ("site-a/runtime/modulesStarted", "site-a", "runtime.modulesStarted"),
        ("a/b/transport/messageSent", "a/b", "transport.messageSent"),
    ],
)
def test_topic_to_trigger(topic: str, prefix: str, trigger: str) -> None:
    assert trigger_for(topic, prefix) == trigger


@pytest.mark.parametrize(
    ("topic", "prefix", "why"),
    [
        ("transport//messageReceived", "", "has an empty level"),
        ("/transport/messageReceived", "", "has an empty level"),
        ("site-b/transport/messageReceived", "site-a", "does not start with topic_prefix 'site-a/'"),
        ("site-a", "site-a", "does not start with topic_prefix"),
    ],
)
def test_topics_that_name_no_event(topic: str, prefix: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        trigger_for(topic, prefix)
