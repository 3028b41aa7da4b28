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

from event_router.importer import ImportResult, import_connector_config
from event_router.plugins import load_plugins
from event_router.routing import compile_match
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


def connector_posts(config: dict[str, Any], namespace: str) -> Counter[str]:
    """The URLs the Connector POSTs `namespace` to: one POST per (webhook, matching trigger)."""
    posts: Counter[str] = Counter()
    for key in ("webhooks", "webhooksV2"):
        module = config["modules"].get(key)
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
