"""router.toml tables of the amqp input and output: defaults, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from event_router.plugin_loader import PluginRegistry, load_plugins
from event_router.testing import build_router_config, config_errors
from event_router_amqp import AmqpInput, AmqpOutput

BASE = """
[inputs.broker]
type = "amqp"
url = "amqp://router:pw-in-url@127.0.0.1:5672/enmeshed"
exchange = "connector"
[outputs.bus]
type = "amqp"
url = "amqp://router:pw-in-url@127.0.0.1:5672/"
exchange = "routed"
[[routes]]
name = "all"
to = ["bus"]
"""


@pytest.fixture(scope="module")
def registry() -> PluginRegistry:
    return load_plugins()


def errors_of(text: str, tmp_path: Path, registry: PluginRegistry) -> list[str]:
    return config_errors(lambda: build_router_config(text, tmp_path, registry=registry))


def test_defaults(tmp_path: Path, registry: PluginRegistry) -> None:
    config = build_router_config(BASE, tmp_path, registry=registry)
    inp = config.inputs["broker"].plugin
    assert isinstance(inp, AmqpInput)
    assert (inp.exchange, inp.exchange_type, inp.declare_exchange) == ("connector", "topic", False)
    assert (inp.queue, inp.queue_type, inp.declare, inp.bindings) == ("event-router", "quorum", True, ["#"])
    assert (inp.prefetch, inp.batch_size, inp.batch_wait, inp.max_redeliveries) == (1000, 500, 0.005, 5)
    assert (inp.reconnect_max, inp.connect_timeout) == (30.0, 15.0)
    assert inp.safe_url == "amqp://router:***@127.0.0.1:5672/enmeshed"
    out = config.outputs["bus"].plugin
    assert isinstance(out, AmqpOutput)
    assert out.routing_key.source == "{{trigger}}"
    assert (out.persistent, out.mandatory, out.content_type) == (True, True, "application/json")
    assert any("inputs.broker.url: secret written in plain text" in w for w in config.warnings)


def test_plain_urls_warn_only_with_a_password(tmp_path: Path, registry: PluginRegistry) -> None:
    """`amqp://rabbitmq:5672` (what `import-connector-config` writes for a broker without credentials) is no
    secret: neither the input's nor the output's URL is a "secret written in plain text" then."""
    text = BASE.replace("router:pw-in-url@", "")
    config = build_router_config(text, tmp_path, registry=registry)
    assert not [w for w in config.warnings if "plain text" in w], config.warnings
    # the output still warns with a password in its URL
    text = BASE.replace("router:pw-in-url@127.0.0.1:5672/enmeshed", "127.0.0.1:5672/enmeshed")
    config = build_router_config(text, tmp_path, registry=registry)
    assert [w for w in config.warnings if "plain text" in w] == [
        'router.toml: outputs.bus.url: secret written in plain text; prefer { env = "NAME" }, { file = "path" } '
        'or { credential = "name" } (systemd)'
    ]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param(
            'url = "amqp://router:pw-in-url@127.0.0.1:5672/enmeshed"\n',
            "",
            "router.toml: inputs.broker: 'url' is required but missing (plugin amqp)",
            id="input-missing-url",
        ),
        pytest.param(
            'exchange = "connector"\n',
            'exchange = "connector"\nqueue_type = "lazy"\n',
            "router.toml: inputs.broker.queue_type: 'lazy' is not one of 'quorum', 'classic' (plugin amqp)",
            id="bad-queue-type",
        ),
        pytest.param(
            'exchange = "connector"\n',
            'exchange = "connector"\nbatch_wait = "soon"\n',
            "router.toml: inputs.broker.batch_wait: 'soon' is not a duration",
            id="bad-batch-wait",
        ),
        pytest.param(
            'exchange = "connector"\n',
            'exchange = ""\ndeclare_exchange = true\n',
            'router.toml: inputs.broker.declare_exchange: the default exchange "" always exists and cannot be declared',
            id="declare-default-exchange",
        ),
        pytest.param(
            'exchange = "connector"\n',
            'exchange = "connector"\nprefetch = 0\n',
            "router.toml: inputs.broker.prefetch: 0 is less than the minimum of 1 (plugin amqp)",
            id="prefetch-zero",
        ),
        pytest.param(
            'exchange = "connector"\n',
            'exchange = "connector"\nconnect_timeout = "0s"\n',
            "router.toml: inputs.broker.connect_timeout: must be more than 0",
            id="connect-timeout-zero",
        ),
        pytest.param(
            'url = "amqp://router:pw-in-url@127.0.0.1:5672/enmeshed"',
            'url = "http://router:pw-in-url@127.0.0.1:5672/"',
            "router.toml: inputs.broker.url: 'http://router:***@127.0.0.1:5672/' is not an AMQP URL",
            id="not-an-amqp-url",
        ),
        pytest.param(
            'exchange = "routed"\n',
            "",
            "router.toml: outputs.bus: 'exchange' is required but missing (plugin amqp)",
            id="output-missing-exchange",
        ),
        pytest.param(
            'exchange = "routed"\n',
            'exchange = "routed"\nrouting_key = "events.{{ payload.kind }}"\n',
            "router.toml: outputs.bus.routing_key: unknown field 'payload.kind'",
            id="output-bad-routing-key",
        ),
    ],
)
def test_errors_name_the_key(old: str, new: str, expected: str, tmp_path: Path, registry: PluginRegistry) -> None:
    # the input's and the output's url are different strings, so each replacement hits the intended table
    text = BASE.replace(old, new, 1) if "routed" not in old else BASE.replace(old, new)
    errors = errors_of(text, tmp_path, registry)
    assert any(e.startswith(expected) for e in errors), errors
    assert not any("pw-in-url" in e for e in errors)


def test_secret_reference_for_the_url(
    tmp_path: Path, registry: PluginRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ER_TEST_AMQP_URL", "amqp://router:from-env@127.0.0.1:5672/")
    text = BASE.replace('url = "amqp://router:pw-in-url@127.0.0.1:5672/enmeshed"', 'url = { env = "ER_TEST_AMQP_URL" }')
    config = build_router_config(text, tmp_path, registry=registry)
    inp = config.inputs["broker"].plugin
    assert isinstance(inp, AmqpInput)
    assert inp.url == "amqp://router:from-env@127.0.0.1:5672/"
    assert "from-env" not in repr(inp.config)
