"""Property tests: arbitrary input never crashes the config loader, the webhook decoder or the pipeline.

The long-running coverage-guided fuzzer over the same entry points is `bench/fuzz.py` (atheris); the broker
inputs' decoding has its properties in plugins/*/tests/test_*_decode*.py.
"""

from __future__ import annotations

import contextlib
import tomllib
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from event_router.api.event import Event
from event_router.api.plugin import PluginContext
from event_router.app import load_schemas
from event_router.config import ConfigErrors, build_config
from event_router.core.plan import plan_event
from event_router.inputs.webhook import WebhookInput
from event_router.plugin_loader import load_plugins
from event_router.testing import example, example_events
from event_router.testing.strategies import json_values

REGISTRY = load_plugins(entry_points=False)
BASE = Path("/nonexistent/router.toml")
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

toml_scalars = st.one_of(
    st.booleans(),
    st.integers(-1000, 10**6),
    st.text(max_size=30),
    st.sampled_from(
        [
            "webhook",
            "file",
            "http",
            "127.0.0.1:8787",
            "http://127.0.0.1:1/{{trigger}}",
            "**",
            "transport.*",
            "1s",
            "strict",
        ]
    ),
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
keys = st.sampled_from(["router", "inputs", "outputs", "routes", "x"])
documents = st.dictionaries(keys, toml_values, max_size=4) | st.fixed_dictionaries(
    {
        "inputs": st.dictionaries(
            st.sampled_from(["a", "b c", "connector"]),
            st.dictionaries(
                st.sampled_from(["type", "listen", "path", "api_key", "validation", "rate_limit"]),
                toml_values,
                max_size=4,
            ),
        ),
        "outputs": st.dictionaries(
            st.sampled_from(["o", "crm"]),
            st.dictionaries(
                st.sampled_from(["type", "url", "path", "retry", "concurrency", "headers"]), toml_values, max_size=4
            ),
        ),
        "routes": st.lists(
            st.dictionaries(
                st.sampled_from(["name", "to", "match", "reshape", "stop", "retry"]), toml_values, max_size=5
            ),
            max_size=3,
        ),
    }
)


@SETTINGS
@given(documents)
def test_config_loader_only_raises_config_errors(document: dict[str, Any]) -> None:
    try:
        build_config(document, path=BASE, registry=REGISTRY)
    except ConfigErrors as exc:
        assert exc.errors and all(str(e).startswith("router.toml: ") for e in exc.errors)


@SETTINGS
@given(st.text(max_size=400))
def test_any_toml_text(text: str) -> None:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return
    with contextlib.suppress(ConfigErrors):
        build_config(document, path=BASE, registry=REGISTRY)


WEBHOOK = WebhookInput(
    {"listen": "127.0.0.1:1"},
    PluginContext("fuzz", Path("/tmp"), __import__("logging").getLogger("fuzz"), Path("/tmp")),
)
TRIGGERS = [*sorted({e["trigger"] for e in example_events()}), "consumption.relationshipEvent.RELX", "x", ""]
bodies = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda t, d: orjson.dumps({"trigger": t, "data": d}),
        st.sampled_from(TRIGGERS) | st.text(max_size=10),
        json_values,
    ),
    st.builds(orjson.dumps, json_values),
)


@pytest.fixture(scope="module")
def router_config(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    text = """
[inputs.a]
type = "webhook"
listen = "127.0.0.1:1"
[outputs.o]
type = "http"
url = "http://127.0.0.1:1/{{trigger}}/{{data.id}}"
[[routes]]
name = "mail"
to = "o"
reshape = { s = "data.content.subject", t = "{{trigger}} {{data.id}}", k = { const = [1] } }
[routes.match]
trigger = ["transport.*"]
"data.content.@type" = ["Mail"]
"data.recipients.address" = [{ prefix = "did:" }]
[[routes]]
name = "numbers"
to = "o"
[[routes.match."$or"]]
"data.n" = [{ numeric = [">", 0, "<=", 5] }]
[[routes.match."$or"]]
"data.status" = [{ "anything-but" = "Active" }]
"""
    path = tmp_path_factory.mktemp("fuzz") / "router.toml"
    config = build_config(tomllib.loads(text), path=path, registry=REGISTRY)
    return config, load_schemas(config, REGISTRY)


@SETTINGS
@given(bodies)
def test_webhook_decode_then_plan_never_crashes(router_config, body: bytes) -> None:  # type: ignore[no-untyped-def]
    config, schemas = router_config
    try:
        event = WEBHOOK._decode(body, None, {})
    except ValueError as exc:
        assert str(exc)  # every refusal says why
        return
    assert isinstance(event, Event)
    for validation in ("strict", "warn", "off"):
        plan = plan_event(event, config=config, schemas=schemas, validation=validation)
        assert plan.validation.valid or plan.validation.errors
        if plan.dead_letter is None:
            for delivery in plan.deliveries:
                orjson.dumps(delivery.payload)  # what the spool will store


@SETTINGS
@given(st.sampled_from(TRIGGERS[:-3]), json_values)
def test_every_schema_answers_any_data(router_config, trigger: str, data: Any) -> None:  # type: ignore[no-untyped-def]
    _, schemas = router_config
    result = schemas.validate(trigger, data)
    assert result.valid or (0 < len(result.errors) <= 10)


def test_the_hint_for_an_unknown_trigger_is_worked_out_once(router_config, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Under `unknown_triggers = "dead-letter"` every event of an unknown trigger is planned on the event
    loop: the "did you mean" search over every known trigger runs once per trigger, not once per event."""
    import event_router.core.plan as plan_module
    from event_router.api.errors import did_you_mean as real

    config, schemas = router_config
    calls: list[str] = []

    def counted(word: str, known: Any) -> str:
        calls.append(word)
        return real(word, known)

    monkeypatch.setattr(plan_module, "did_you_mean", counted)
    event = Event.from_dict(
        {
            "id": "e1",
            "trigger": "transport.messageRecievedTwice",
            "source": "a",
            "received_at": "2026-01-01T00:00:00Z",
            "data": example("transport.messageReceived")["data"],
        }
    )
    plans = [plan_event(event, config=config, schemas=schemas, unknown_triggers="dead-letter") for _ in range(50)]
    assert all(p.dead_letter is not None and p.dead_letter[0] == "unknown_trigger" for p in plans)
    assert plans[0].dead_letter == plans[-1].dead_letter
    assert calls == ["transport.messageRecievedTwice"]
