"""`event-router import-connector-config`: real-shaped Connector configs (7.x back to 2.x) -> golden router.toml.

Each generated file must pass `event-router check` and route every namespace to the same targets, as often,
as the Connector's webhooks would. Set UPDATE_GOLDEN=1 to rewrite the golden files after a deliberate change.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from event_router.core.routing import compile_match
from event_router.ops.importer import ImportResult, import_connector_config
from event_router.plugin_loader import load_plugins
from event_router.testing import run_cli

DATA = Path(__file__).resolve().parent / "data" / "importer"
CONFIGS = sorted(DATA.glob("*.json"))
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"

#: the namespaces the Connector raises (reference section 1), relationshipEvent with a sample id
NAMESPACES = [
    *(
        f"transport.{n}"
        for n in [
            "messageReceived",
            "messageSent",
            "messageDelivered",
            "messageWasReadAtChanged",
            "relationshipChanged",
            "relationshipReactivationRequested",
            "relationshipReactivationCompleted",
            "relationshipDecomposedBySelf",
            "peerToBeDeleted",
            "peerDeletionCancelled",
            "peerDeleted",
            "peerRelationshipTemplateLoaded",
            "relationshipTemplateAllocationsExhausted",
            "fileOwnershipClaimed",
            "fileOwnershipLocked",
            "identityDeletionProcessStatusChanged",
            "datawalletSynchronized",
        ]
    ),
    *(
        f"consumption.{n}"
        for n in [
            "attributeCreated",
            "attributeDeleted",
            "attributeSucceeded",
            "attributeForwardingDetailsChanged",
            "attributeWasViewedAtChanged",
            "ownAttributeDeletedByOwner",
            "peerRelationshipAttributeDeletedByPeer",
            "forwardedAttributeDeletedByPeer",
            "incomingRequestReceived",
            "incomingRequestStatusChanged",
            "outgoingRequestCreated",
            "outgoingRequestCreatedAndCompleted",
            "outgoingRequestFromRelationshipCreationCreatedAndCompleted",
            "outgoingRequestStatusChanged",
            "messageProcessed",
            "relationshipTemplateProcessed",
            "shareCredentialOfferRequestItemProcessedByRecipient",
            "mailReceived",
            "relationshipEvent.REL1YBBHLUEC51CGTOYD",
        ]
    ),
    "runtime.modulesStarted",
]


def golden(config: Path) -> Path:
    return config.with_suffix(".toml")


def imported(config: Path) -> ImportResult:
    return import_connector_config(json.loads(config.read_text()))


def test_there_are_enough_real_shaped_configs() -> None:
    assert len(CONFIGS) >= 6
    names = " ".join(c.name for c in CONFIGS)
    for era in ("connector-7", "connector-6", "connector-3", "connector-2"):
        assert era in names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_golden_file(config: Path) -> None:
    text = imported(config).to_toml(config.name)
    if UPDATE:
        golden(config).write_text(text)
    assert text == golden(config).read_text(), f"run with UPDATE_GOLDEN=1 if the change to {golden(config)} is meant"


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_secrets_are_never_copied(config: Path) -> None:
    text = golden(config).read_text()
    for secret in (
        "crm-key-123",
        "oauth-secret-456",
        "ops-token",
        "kc-secret",
        "session=abc",
        "rabbit-pass",
        "redis-pass",
        "backend-key",
        "mqtt-pass",
        "change-me",
        "connector-api-key",
        "db-password",
        "backbone-secret",
    ):
        assert secret not in text, f"{secret} leaked into {golden(config).name}"
    result = imported(config)
    for name, _where in result.env:
        assert f'env = "{name}"' in text, name
        assert f"#   {name}" in text, f"{name} is not listed at the top"


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_generated_file_passes_check(config: Path, tmp_path: Path) -> None:
    document = tomllib.loads(golden(config).read_text())
    result = imported(config)
    env = {name: "value" for name, _ in result.env}
    for table in document.get("inputs", {}).values():
        if isinstance(table.get("url"), dict):  # a broker URL with a password: the broker's scheme
            env[table["url"]["env"]] = f"{table['type']}://user:pass@127.0.0.1/"
    installed = load_plugins().inputs
    missing = {t["type"] for t in document.get("inputs", {}).values()} - set(installed)
    if missing:
        # a broker plugin is not installed here: its check cannot run, the structure is asserted instead
        for name, table in document["inputs"].items():
            assert table["type"] in {"webhook", "amqp", "mqtt", "pubsub", "redis"}, name
            assert ("url" in table) != (table["type"] in ("webhook", "pubsub")), name
        return
    path = tmp_path / "router.toml"
    path.write_text(golden(config).read_text())
    done = run_cli("check", "-c", str(path), "--json", env=env)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["ok"] and set(summary["inputs"]) == set(document.get("inputs", {}))
    assert summary["routes"] == [r["name"] for r in document.get("routes", [])]
    # ordinary headers (X-Tenant) and broker URLs without a password are copied as plain text, which is right:
    # no "secret in plain text" for them (a URL with one is written as a variable)
    assert not [w for w in summary["warnings"] if "secret written in plain text" in w], summary["warnings"]


def _no_credentials(url: str) -> str:
    split = urlsplit(url)
    return urlunsplit(split._replace(netloc=split.netloc.rpartition("@")[2]))


def _ee2_matches(pattern: list[str], segments: list[str]) -> bool:
    """EventEmitter2's wildcards, written independently of the router's matcher: `*` one segment, `**` any."""
    if not pattern:
        return not segments
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_ee2_matches(rest, segments[i:]) for i in range(len(segments) + 1))
    return bool(segments) and head in ("*", segments[0]) and _ee2_matches(rest, segments[1:])


def _lodash_defaults_deep(dst: Any, src: Any) -> Any:
    """lodash's `_.defaultsDeep(dst, src)`: what `dst` lacks comes from `src`; objects and arrays (by index) merge."""
    if isinstance(dst, list) and isinstance(src, list):
        both = min(len(dst), len(src))
        return [_lodash_defaults_deep(dst[i], src[i]) for i in range(both)] + dst[both:] + src[both:]
    if isinstance(dst, dict) and isinstance(src, dict):
        keys = list(dst) + [k for k in src if k not in dst]
        return {
            k: _lodash_defaults_deep(dst[k], src[k]) if k in dst and k in src else dst.get(k, src.get(k)) for k in keys
        }
    return dst


def connector_modules(config: dict[str, Any]) -> dict[str, Any]:
    """The modules as a Connector that reads both webhooksV2 and webhooks (3.7.3 to 4.x) runs them."""
    modules = dict(config["modules"])
    if "webhooksV2" in modules and "webhooks" in modules and "url" not in modules["webhooks"]:
        modules["webhooks"] = _lodash_defaults_deep(modules.pop("webhooksV2"), modules["webhooks"])
    return modules


def connector_posts(config: dict[str, Any], namespace: str) -> Counter[str]:
    """The URLs the Connector POSTs `namespace` to: one POST per (webhook, matching trigger)."""
    posts: Counter[str] = Counter()
    modules = connector_modules(config)
    for key in ("webhooks", "webhooksV2"):
        module = modules.get(key)
        if not module or module.get("enabled") is False or "url" in module:  # v1 batches are not per event
            continue
        for hook in module["webhooks"]:
            target = hook["target"]
            target = module["targets"][target] if isinstance(target, str) else target
            url = _no_credentials(target["url"]).replace("{{trigger}}", namespace, 1)
            posts[url] += sum(_ee2_matches(t.split("."), namespace.split(".")) for t in hook["triggers"])
    return +posts


def router_posts(document: dict[str, Any], namespace: str) -> Counter[str]:
    """The URLs the generated router.toml delivers `namespace` to, for an event from its routes' input."""
    inputs = list(document.get("inputs", {}))
    posts: Counter[str] = Counter()
    for route in document.get("routes", []):
        source = route["match"].get("source", inputs)[0]
        event = {"id": "x", "trigger": namespace, "source": source, "received_at": "", "data": {}, "meta": {}}
        if compile_match(route["match"])(event):
            for output in route["to"]:
                posts[document["outputs"][output]["url"].replace("{{trigger}}", namespace)] += 1
    return posts


#: configs whose Connector would not even start (the importer reports those parts instead)
NOT_STARTING = {"connector-7-problems"}
#: (config, namespace): the Connector POSTs twice (two triggers of one webhook match), the router once
DOUBLE_POSTS = {("connector-6-webhooks-oauth2", "transport.messageReceived")}


@pytest.mark.parametrize("config", [c for c in CONFIGS if c.stem not in NOT_STARTING], ids=lambda p: p.stem)
def test_routes_reach_the_same_targets_as_the_connector(config: Path) -> None:
    source = json.loads(config.read_text())
    document = tomllib.loads(golden(config).read_text())
    for namespace in NAMESPACES:
        expected, got = connector_posts(source, namespace), router_posts(document, namespace)
        if (config.stem, namespace) in DOUBLE_POSTS:
            assert dict.fromkeys(expected, 1) == dict(got) and max(expected.values()) == 2, namespace
        else:
            assert expected == got, namespace
    assert any(router_posts(document, n) for n in NAMESPACES) == bool(document.get("routes"))


def test_reports_what_is_not_imported() -> None:
    result = imported(DATA / "connector-7-problems.json")
    report = "\n".join(result.unsupported)
    for expected in (
        "'transport.message*' matches no event in the Connector (no partial wildcards)",
        "targets.ftp.url: 'ftp://files.example.com/in' is not an http(s) URL",
        "targets.twice.url: 'https://twice.example.com/{{trigger}}/{{trigger}}' has '{{' or '}}' besides the first",
        "targets.hmac.authentication: type 'Hmac' is not ApiKey or OAuth2",
        "webhooks[4].target: no target named 'nowhere'",
        "webhooks[5].triggers: not a non-empty list of namespaces",
        "webhooks[1]: its target was not imported, so neither is this webhook",
        "messageBrokerPublisher.brokers: missing or empty",
    ):
        assert expected in report
    text = golden(DATA / "connector-7-problems.json").read_text()
    assert "# NOT IMPORTED" in text.split("\n[", 1)[0]
    v1 = imported(DATA / "connector-2-v1-webhooks.json")
    assert any(u.startswith("modules.webhooks.url: v1 webhooks") for u in v1.unsupported)
    brokers = imported(DATA / "connector-7-brokers.json")
    assert any("broker type 'Kafka'" in u for u in brokers.unsupported)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (None, "the file is not a JSON object"),
        ({"infrastructure": {}}, "no `modules` object"),
        ({"modules": {"webhooks": "on"}}, "modules.webhooks: not an object"),
        ({"modules": {"webhooks": {"enabled": True, "webhooks": {}}}}, "modules.webhooks.webhooks: not a list"),
        ({"modules": {"messageBrokerPublisher": {"brokers": [{"type": "AMQP"}]}}}, "needs a type and a configuration"),
        ({"modules": {"amqpPublisher": {"enabled": True}}}, "modules.amqpPublisher.url: missing"),
        ({"modules": {"PubSubPublisher": {"enabled": True, "projectId": "p"}}}, "needs projectId and topicName"),
    ],
)
def test_broken_connector_configs_are_reported(config: Any, expected: str) -> None:
    result = import_connector_config(config)
    assert any(expected in u for u in result.unsupported), result.unsupported


@pytest.mark.slow
def test_cli(tmp_path: Path) -> None:
    config = DATA / "connector-7-webhooks.json"
    out = tmp_path / "router.toml"
    done = run_cli("import-connector-config", str(config), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert out.read_text() == golden(config).read_text()
    assert "set environment variable ROUTER_CRM_API_KEY: modules.webhooks.targets.crm.authentication.apiKey" in (
        done.stderr
    )
    assert f"wrote {out}; next: event-router check -c {out}" in done.stderr
    again = run_cli("import-connector-config", str(config), "-o", str(out))
    assert again.returncode == 1 and "exists; use --force" in again.stderr
    to_stdout = run_cli("import-connector-config", str(DATA / "connector-7-problems.json"))
    assert to_stdout.returncode == 0
    assert to_stdout.stdout == golden(DATA / "connector-7-problems.json").read_text()
    assert "not imported: modules.webhooks.targets.ftp.url" in to_stdout.stderr
    (tmp_path / "bad.json").write_text("{ not json")
    bad = run_cli("import-connector-config", str(tmp_path / "bad.json"))
    assert bad.returncode == 1 and "is not valid JSON" in bad.stderr


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_input_is_read_by_the_routes(config: Path) -> None:
    """An input no route reads would consume events and throw them away (a Pub/Sub subscription acking all)."""
    document = imported(config).document
    inputs = set(document.get("inputs", {}))
    routes = document.get("routes", [])
    assert len(inputs) <= 1, "every broker carries every event: one input"
    for name in inputs:
        read = any(name in route["match"].get("source", [name]) for route in routes)
        assert read or document["router"].get("unmatched") == "dead-letter", name


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_router_table_has_admin_endpoint(config: Path) -> None:
    result = imported(config)
    document = result.document
    if document.get("inputs") or document.get("outputs"):
        assert document["router"]["data_dir"] == "var"
        assert document["router"]["admin"] == {"listen": "127.0.0.1:9187"}
        assert any("/healthz and /readyz for health checks, /metrics" in n for n in result.notes)
        assert result.to_toml(config.name).count("\n[router.admin]\nlisten = ") == 1


def _hook(*triggers: str, url: str = "https://crm.example.com/{{trigger}}") -> dict[str, Any]:
    return {
        "enabled": True,
        "targets": {"crm": {"url": url}},
        "webhooks": [{"triggers": list(triggers), "target": "crm"}],
    }


def test_amqp_on_the_default_exchange_is_not_a_source() -> None:
    result = imported(DATA / "connector-6-amqp-default-exchange.json")
    assert set(result.document["inputs"]) == {"redis"}
    assert all("source" not in route["match"] for route in result.document["routes"])
    assert any(
        u.startswith(
            "modules.messageBrokerPublisher.brokers[0].configuration.exchange: absent or empty: the Connector "
            "publishes to the default exchange"
        )
        for u in result.unsupported
    ), result.unsupported
    assert not [name for name, _ in result.env if "AMQP" in name], "no variable for a broker not imported"
    # the default exchange as the only broker: the routes get their events from the webhook input instead
    legacy = import_connector_config(
        {
            "modules": {
                "amqpPublisher": {"enabled": True, "url": "amqp://rabbitmq", "exchange": ""},
                "webhooksV2": _hook("**"),
            }
        }
    )
    assert {n: t["type"] for n, t in legacy.document["inputs"].items()} == {"connector": "webhook"}
    assert any("modules.amqpPublisher.exchange: absent or empty" in u for u in legacy.unsupported)
    named = import_connector_config(
        {"modules": {"amqpPublisher": {"enabled": True, "url": "amqp://rabbitmq", "exchange": "enmeshed"}}}
    )
    assert named.document["inputs"] == {"amqp": {"type": "amqp", "url": "amqp://rabbitmq", "exchange": "enmeshed"}}


def test_a_broker_the_routes_do_not_read_is_not_consumed() -> None:
    result = imported(DATA / "connector-7-amqp-and-pubsub.json")
    assert set(result.document["inputs"]) == {"amqp"}, "the AMQP queue keeps events best; Pub/Sub is listed first"
    assert any(
        n.startswith("modules.messageBrokerPublisher.brokers[0].configuration (PubSub) is not consumed")
        for n in result.notes
    ), result.notes
    # brokers but no webhooks: one input, and its events wait as dead letters until routes exist
    only = imported(DATA / "connector-3.9-legacy-brokers.json")
    assert set(only.document["inputs"]) == {"pubsub"}
    assert only.document["router"]["unmatched"] == "dead-letter"
    assert only.env == [], "the MQTT broker's password is not asked for: that broker is not consumed"


def test_mqtt_over_websocket_is_reported_not_copied() -> None:
    result = imported(DATA / "connector-7-mqtt-websocket.json")
    assert "mqtt" not in result.document["inputs"]
    assert {n: t["type"] for n, t in result.document["inputs"].items()} == {"connector": "webhook"}
    websocket = [
        u for u in result.unsupported if "MQTT over WebSocket is not supported by the router's mqtt input" in u
    ]
    assert [u.split(":", 1)[0] for u in websocket] == [
        "modules.messageBrokerPublisher.brokers[0].configuration.url",
        "modules.messageBrokerPublisher.brokers[1].configuration.url",
    ]
    assert "wss://connector:***@broker.example.com:8084/mqtt" in websocket[0]
    assert not [name for name, _ in result.env if "MQTT" in name]
    for scheme in ("mqtt", "mqtts", "tcp", "tls", "ssl"):
        config = {
            "modules": {
                "messageBrokerPublisher": {
                    "enabled": True,
                    "brokers": [{"type": "MQTT", "configuration": {"url": f"{scheme}://broker:1883"}}],
                }
            }
        }
        assert import_connector_config(config).document["inputs"]["mqtt"]["url"] == f"{scheme}://broker:1883"
    wx = {
        "modules": {
            "messageBrokerPublisher": {
                "enabled": True,
                "brokers": [{"type": "MQTT", "configuration": {"url": "wxs://broker/mqtt"}}],
            }
        }
    }
    assert any("this transport is not supported" in u for u in import_connector_config(wx).unsupported)


def test_webhooks_and_webhooksV2_are_merged_as_the_connector_does() -> None:
    result = imported(DATA / "connector-4-webhooks-and-webhooksV2.json")
    document = result.document
    # lodash defaultsDeep(webhooksV2, webhooks): webhooksV2's values win, lists merge item by item
    assert [r["name"] for r in document["routes"]] == [
        "webhooks.webhooks[0] to backend",
        "webhooks.webhooks[1] to audit",
    ]
    assert document["routes"][0]["match"]["trigger"] == ["transport.messageReceived", "transport.peerDeleted"]
    assert document["outputs"]["backend"]["url"] == "http://backend:3000/v2/{{trigger}}"
    assert document["outputs"]["backend"]["headers"] == {"X-Source": "connector", "X-Tenant": "acme"}
    assert any(n.startswith("modules.webhooksV2 and modules.webhooks are both set") for n in result.notes)
    # webhooksV2 disabled wins over webhooks enabled, as in the Connector: nothing is posted
    off = import_connector_config({"modules": {"webhooksV2": {"enabled": False}, "webhooks": _hook("**")}})
    assert off.document["routes"] == [] and "connector" not in off.document["inputs"]
    # Connector 2.x: v1 webhooks and webhooksV2 are two modules, not merged
    v1 = imported(DATA / "connector-2-v1-webhooks.json")
    assert not any("both set" in n for n in v1.notes)
