"""The `type = "pubsub"` table through the router's own loader: every error names its key. No I/O."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import event_router_pubsub
from event_router.api import ConfigError
from event_router.plugin_loader import load_plugins
from event_router.testing import build_router_config, config_errors
from event_router_pubsub.input import PubSubInput
from event_router_pubsub.settings import parse_settings


def build(tmp_path: Path, table: str) -> Any:
    text = f"""
[inputs.connector]
type = "pubsub"
{table}
[outputs.archive]
type = "file"
path = "events.jsonl"
[[routes]]
name = "all"
to = "archive"
"""
    registry = load_plugins(entry_points=False, extra_plugins=[("pubsub", event_router_pubsub)])
    return build_router_config(text, tmp_path, registry=registry)


def errors(tmp_path: Path, table: str) -> list[str]:
    return config_errors(lambda: build(tmp_path, table))


def test_defaults_and_full_paths(tmp_path: Path) -> None:
    config = build(tmp_path, 'project = "my-project"\nsubscription = "enmeshed-events"\nkey_file = "keys/sa.json"')
    plugin = config.inputs["connector"].plugin
    assert isinstance(plugin, PubSubInput)
    settings = plugin.settings
    assert settings.subscription == "projects/my-project/subscriptions/enmeshed-events"
    assert settings.topic is None
    assert settings.create_subscription is False
    assert settings.key_file == tmp_path / "keys/sa.json"  # relative to router.toml's directory
    assert (settings.max_messages, settings.ack_deadline, settings.reconnect_max) == (500, 60.0, 30.0)
    assert not plugin.is_ready()  # constructed, not connected


def test_full_resource_paths_are_kept(tmp_path: Path) -> None:
    table = """
project = "my-project"
subscription = "projects/other-project/subscriptions/enmeshed-events"
topic = "projects/my-project/topics/connector-events"
create_subscription = true
ack_deadline = "2m"
max_messages = 1000
"""
    settings = build(tmp_path, table).inputs["connector"].plugin.settings
    assert settings.subscription == "projects/other-project/subscriptions/enmeshed-events"
    assert settings.topic == "projects/my-project/topics/connector-events"
    assert settings.ack_deadline == 120.0


def test_emulator_host_from_table_or_environment(tmp_path: Path) -> None:
    table = {"project": "p-1", "subscription": "sub-1"}
    assert parse_settings(table, tmp_path, environ={}).api_root is None
    from_env = parse_settings(table, tmp_path, environ={"PUBSUB_EMULATOR_HOST": "127.0.0.1:8085"})
    assert from_env.api_root == "http://127.0.0.1:8085/v1"
    own = parse_settings({**table, "emulator_host": "localhost:9000"}, tmp_path, {"PUBSUB_EMULATOR_HOST": "x:1"})
    assert own.emulator_host == "localhost:9000"
    with pytest.raises(ConfigError, match=r"'http://x' \(from \$PUBSUB_EMULATOR_HOST\) is not host:port") as caught:
        parse_settings(table, tmp_path, environ={"PUBSUB_EMULATOR_HOST": "http://x"})
    assert caught.value.path == "emulator_host"


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ('subscription = "sub-1"', "inputs.connector: 'project' is required but missing"),
        ('project = "p-1"', "inputs.connector: 'subscription' is required but missing"),
        (
            'project = "p-1"\nsubscription = "ab"',
            "inputs.connector.subscription: 'ab' is not a Pub/Sub id: 3 to 255 characters",
        ),
        (
            'project = "p-1"\nsubscription = "sub-1"\ntopic = "t1"',
            "inputs.connector.topic: 't1' is not a Pub/Sub id: 3 to 255 characters",
        ),
        ('project = "p-1"\nsubscription = "goog-sub"', "inputs.connector.subscription: 'goog-sub' is not a Pub/Sub id"),
        (
            'project = "p-1"\nsubscription = "projects/p-1/topics/sub-1"',
            "inputs.connector.subscription: 'projects/p-1/topics/sub-1' is not projects/<project>/subscriptions/<id>",
        ),
        (
            'project = "My Project"\nsubscription = "sub-1"',
            "inputs.connector.project: 'My Project' is not a project id",
        ),
        (
            'project = "p-1"\nsubscription = "sub-1"\ncreate_subscription = true',
            "inputs.connector.create_subscription: needs `topic`",
        ),
        (
            'project = "p-1"\nsubscription = "sub-1"\nack_deadline = "5s"',
            "inputs.connector.ack_deadline: 5s is outside what Pub/Sub accepts (10s to 10m)",
        ),
        (
            'project = "p-1"\nsubscription = "sub-1"\nack_deadline = "11m"',
            "inputs.connector.ack_deadline: 660s is outside what Pub/Sub accepts",
        ),
        ('project = "p-1"\nsubscription = "sub-1"\nack_deadline = "soon"', "inputs.connector.ack_deadline: 'soon'"),
        ('project = "p-1"\nsubscription = "sub-1"\nreconnect_max = 0', "inputs.connector.reconnect_max: must be more"),
        (
            'project = "p-1"\nsubscription = "sub-1"\nmax_messages = 0',
            "inputs.connector.max_messages: 0 is less than the minimum of 1",
        ),
        (
            'project = "p-1"\nsubscription = "sub-1"\nmax_messages = 5000',
            "inputs.connector.max_messages: 5000 is greater than the maximum of 1000",
        ),
        (
            'project = "p-1"\nsubscription = "sub-1"\nemulator_host = "http://localhost:8085"',
            "inputs.connector.emulator_host: 'http://localhost:8085' is not host:port",
        ),
        ('project = "p-1"\nsubscription = "sub-1"\nsubscriptoin = "x"', "inputs.connector: unknown key 'subscriptoin'"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, table: str, expected: str) -> None:
    (message,) = errors(tmp_path, table)
    assert message.startswith("router.toml: ")
    assert expected in message
    assert message.endswith("(plugin pubsub)")
