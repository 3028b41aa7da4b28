"""Pure logic of the AMQP plugin: URL redaction, header values as JSON, delivery counts, reconnect backoff."""

from __future__ import annotations

import datetime as dt
import decimal
import logging
from pathlib import Path

import pytest

from event_router.api import PluginContext, redact_url
from event_router_amqp.common import json_safe
from event_router_amqp.input import _SEEN_LIMIT, AmqpInput


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/", "amqp://guest:***@127.0.0.1:5672/"),
        (
            "amqps://user:p%40ss@broker.internal/vhost?heartbeat=30",
            "amqps://user:***@broker.internal/vhost?heartbeat=30",
        ),
        ("amqp://127.0.0.1/", "amqp://127.0.0.1/"),
        ("amqp://user:pw@[::1]:5672/", "amqp://user:***@[::1]:5672/"),
        ("amqp://user:pw@host:notaport/", "<unparsable URL>"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_header_values_become_json() -> None:
    stamp = dt.datetime(2026, 8, 20, 12, 0, 0)
    headers = {"b": b"bytes \xff", "d": decimal.Decimal("1.5"), "t": stamp, "l": [b"x", 1], "n": {"k": None}}
    assert json_safe(headers) == {
        "b": "bytes \\xff",
        "d": 1.5,
        "t": "2026-08-20T12:00:00Z",
        "l": ["x", 1],
        "n": {"k": None},
    }


def test_reconnect_backoff_doubles_from_0_2_s_up_to_reconnect_max(tmp_path: Path) -> None:
    backoff = make_input(tmp_path, reconnect_max="2s")._reconnect
    waits = [backoff.failed() for _ in range(8)]
    # full jitter under a ceiling of 0.2 s, 0.4 s, 0.8 s, ... 2 s (the documented start and reconnect_max)
    assert all(0.0 <= w <= min(2.0, 0.2 * 2**n) for n, w in enumerate(waits))
    assert backoff.attempt == 8


def test_backoff_keeps_going_through_a_long_outage(tmp_path: Path) -> None:
    """Thousands of failed attempts in a row (hours of a broker down): still the maximum, no overflow."""
    backoff = make_input(tmp_path)._reconnect
    backoff.attempt = 5000
    assert 0.0 <= backoff.failed() <= 30.0


def make_input(tmp_path: Path, **config: str) -> AmqpInput:
    context = PluginContext("broker", tmp_path, logging.getLogger("test"), tmp_path)
    return AmqpInput({"url": "amqp://guest:guest@127.0.0.1/", **config}, context)


def test_delivery_count_prefers_the_quorum_header(tmp_path: Path) -> None:
    inp = make_input(tmp_path)
    assert inp._delivery_count({"x-delivery-count": 7}, True, "m-1") == 7
    assert inp._delivery_count({"x-delivery-count": 0}, False, None) == 0
    assert inp._seen == {}


def test_delivery_count_on_a_classic_queue_counts_redeliveries_per_message_id(tmp_path: Path) -> None:
    inp = make_input(tmp_path)
    assert inp._delivery_count(None, False, "m-1") == 0
    assert [inp._delivery_count({}, True, "m-1") for _ in range(3)] == [1, 2, 3]
    # without a message id (the Connector sets none) nothing can be counted: each redelivery looks like the first
    assert [inp._delivery_count(None, True, None) for _ in range(3)] == [1, 1, 1]
    for n in range(_SEEN_LIMIT + 5):
        inp._delivery_count(None, True, f"other-{n}")
    assert len(inp._seen) == _SEEN_LIMIT  # bounded: the oldest are forgotten
    assert "m-1" not in inp._seen
