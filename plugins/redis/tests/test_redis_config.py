"""The Redis input's table: defaults, and errors that name the key (never the password). No server needed."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest

from event_router.testing import build_router_config, config_errors
from event_router_redis.input import RedisInput


def build(table: str, tmp_path: Path) -> Any:
    return build_router_config(f'[inputs.rd]\ntype = "redis"\n{table}\n', tmp_path)


def errors_of(table: str, tmp_path: Path) -> list[str]:
    return config_errors(lambda: build(table, tmp_path))


def test_pubsub_defaults(tmp_path: Path) -> None:
    plugin = build('url = "redis://:hunter2@127.0.0.1:6379/0"', tmp_path).inputs["rd"].plugin
    assert isinstance(plugin, RedisInput)
    s = plugin.settings
    assert s.mode == "pubsub"
    assert s.patterns == ("transport.*", "consumption.*", "runtime.*")
    assert s.display == "redis://127.0.0.1:6379/0"
    assert (s.batch_size, s.reconnect_max) == (500, 30.0)
    assert not plugin.is_ready(), "constructing connects to nothing"


def test_stream_defaults(tmp_path: Path) -> None:
    s = build('url = "rediss://router:hunter2@r.example/2?password=x"\nmode = "stream"\nstream = "nmshd"', tmp_path)
    s = s.inputs["rd"].plugin.settings
    assert (s.stream, s.group, s.create_group, s.max_deliveries) == ("nmshd", "event-router", True, 5)
    assert s.consumer == f"rd-{socket.gethostname()}-{os.getpid()}"
    assert (s.block, s.claim_idle) == (1.0, 60.0)
    assert s.display == "rediss://router@r.example/2", "neither the password nor the query is shown"


def test_plain_url_warns_only_with_a_password(tmp_path: Path) -> None:
    """A URL without credentials (what `import-connector-config` writes for `redis://redis:6379/0`) is no secret."""
    assert not [w for w in build('url = "redis://redis:6379/0"', tmp_path).warnings if "plain text" in w]
    for url in ("redis://:hunter2@redis:6379/0", "redis://redis:6379/0?password=hunter2"):
        warnings = build(f'url = "{url}"', tmp_path).warnings
        assert [w for w in warnings if "inputs.rd.url: secret written in plain text" in w], (url, warnings)


# Schema errors are worded by the core: only their key path is checked here; the plugin's own are checked whole.
@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('url = "http://u:hunter2@h:6379"', "inputs.rd.url: must start with redis://, rediss:// or unix://"),
        ('url = "redis://:hunter2@"', "inputs.rd.url: has no host"),
        ('url = "redis://h:99999"', "inputs.rd.url: not a valid URL"),
        ('url = "redis://h"\nmode = "list"', "inputs.rd.mode: "),
        ('url = "redis://h"\nmode = "stream"', 'inputs.rd.stream: required when mode = "stream"'),
        (
            'url = "redis://h"\nmode = "stream"\nstream = "s"\npatterns = ["a.*"]',
            'inputs.rd.patterns: only used when mode = "pubsub"',
        ),
        ('url = "redis://h"\ngroup = "g"', 'inputs.rd.group: only used when mode = "stream"'),
        ('url = "redis://h"\nmode = "stream"\nstream = "s"\nblock = 0', "inputs.rd.block: must be at least 1ms"),
        (
            'url = "redis://h"\nmode = "stream"\nstream = "s"\nclaim_idle = "0s"',
            "inputs.rd.claim_idle: must be at least 1ms",
        ),
        ('url = "redis://h"\nmode = "stream"\nstream = "s"\nmax_deliveries = 0', "inputs.rd.max_deliveries: "),
        ('url = "redis://h"\nreconnect_max = "soon"', "inputs.rd.reconnect_max: "),
        ('url = "redis://h"\npatterns = []', "inputs.rd.patterns: "),
        ('url = "redis://h"\nchannel = "x"', "'channel'"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, table: str, message: str) -> None:
    errors = errors_of(table, tmp_path)
    assert any(message in e for e in errors), errors
    assert all(e.endswith("(plugin redis)") for e in errors), errors
    assert not any("hunter2" in e for e in errors), "the URL is a secret: errors must not repeat it"
