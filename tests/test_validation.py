"""SchemaRegistry: loading and override order, trigger lookup, error formatting, bad schema files, envelope."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from event_router.api.event import Event
from event_router.core.validation import (
    SchemaError,
    SchemaRegistry,
    ValidationResult,
    builtin_schema_dir,
    format_path,
)
from event_router.testing import example_events

DATA = Path(__file__).parent / "data"
OVERRIDE = DATA / "schemas-override"
BASE = "https://enmeshed-event-router.github.io/schemas/"
EXAMPLES = {item["trigger"]: item["data"] for item in example_events()}
MESSAGE = EXAMPLES["transport.messageReceived"]
PEER = "did:e:backbone.example.org:dids:c8886dfc472605bea411a6"


def write_schema(directory: Path, name: str, schema: dict[str, Any] | str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(schema if isinstance(schema, str) else json.dumps(schema))
    return path


def schema(trigger: str | None, body: dict[str, Any], schema_id: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"$schema": "https://json-schema.org/draft/2020-12/schema", **body}
    out["$id"] = schema_id or f"{BASE}test/{trigger}.json"
    if trigger is not None:
        out["x-trigger"] = trigger
    return out


@pytest.fixture(scope="module")
def builtin() -> SchemaRegistry:
    return SchemaRegistry.load([builtin_schema_dir()])


def test_builtin_dir_is_the_source_tree_schemas() -> None:
    directory = builtin_schema_dir()
    assert (directory / "defs.json").is_file()
    assert (directory / "event.json").is_file()


def test_builtin_registry_lists_60_triggers(builtin: SchemaRegistry) -> None:
    triggers = builtin.triggers()
    assert len(triggers) == 60  # the 41 of Connector 7.4 and 19 only older Connectors raise
    assert triggers == sorted(triggers)
    assert "consumption.relationshipEvent.*" in triggers
    rows = builtin.describe()
    assert [row[0] for row in rows] == triggers
    _, title, source = rows[triggers.index("transport.messageReceived")]
    assert (title, Path(source)) == ("Message received", builtin_schema_dir() / "transport.messageReceived.json")


# ---- override order -----------------------------------------------------------------------------------


def test_user_dir_replaces_a_builtin_schema_and_adds_a_trigger(builtin: SchemaRegistry) -> None:
    registry = SchemaRegistry.load([builtin_schema_dir(), OVERRIDE])
    assert set(registry.triggers()) == {*builtin.triggers(), "acme.invoicePaid"}
    sources = {trigger: source for trigger, _, source in registry.describe()}
    assert Path(sources["transport.messageReceived"]) == OVERRIDE / "transport.messageReceived.json"
    assert Path(sources["transport.messageSent"]) == builtin_schema_dir() / "transport.messageSent.json"

    # the override is stricter than the built-in schema, and still reaches defs.json through its relative $ref
    result = registry.validate("transport.messageReceived", MESSAGE)
    assert not result.valid
    assert result.errors[0].startswith('data.content.subject: "New postal address" does not match')
    acme = copy.deepcopy(MESSAGE)
    acme["content"]["subject"] = "[ACME] New postal address"
    assert registry.validate("transport.messageReceived", acme).valid
    assert registry.validate("transport.messageReceived", {**acme, "id": "MSG1"}).errors == (
        'data.id: "MSG1" does not match "^MSG[A-Za-z0-9]{17}$"',
    )

    # a user schema under a foreign base refers to the shared definitions by absolute URI
    assert registry.validate("acme.invoicePaid", {"invoice": "2026-17", "payer": PEER}).valid
    assert (
        registry.validate("acme.invoicePaid", {"invoice": "2026-17", "payer": "bob"})
        .errors[0]
        .startswith('data.payer: "bob" does not match')
    )


def test_earlier_dirs_lose_so_order_matters() -> None:
    registry = SchemaRegistry.load([OVERRIDE, builtin_schema_dir()])
    assert registry.validate("transport.messageReceived", MESSAGE).valid
    assert "acme.invoicePaid" in registry.triggers()


def test_a_later_file_with_the_same_id_replaces_the_earlier_one(tmp_path: Path) -> None:
    write_schema(
        tmp_path,
        "sent.json",
        schema("transport.messageSent", {"type": "string"}, schema_id=f"{BASE}transport.messageSent.json"),
    )
    registry = SchemaRegistry.load([builtin_schema_dir(), tmp_path])
    assert registry.validate("transport.messageSent", "just a string").valid
    assert len(registry.triggers()) == 60


def test_same_trigger_twice_in_one_dir_is_refused(tmp_path: Path) -> None:
    write_schema(tmp_path, "a.json", schema("acme.x", {}, schema_id=f"{BASE}a.json"))
    write_schema(tmp_path, "b.json", schema("acme.x", {}, schema_id=f"{BASE}b.json"))
    with pytest.raises(SchemaError, match=r"b\.json.*'acme\.x'.*a\.json"):
        SchemaRegistry.load([tmp_path])


# ---- trigger lookup -----------------------------------------------------------------------------------


def test_unknown_trigger_is_valid_without_schema(builtin: SchemaRegistry) -> None:
    assert builtin.validate("acme.somethingElse", {"anything": True}) == ValidationResult(
        valid=True, errors=(), schema=None
    )
    assert not builtin.is_known("acme.somethingElse")
    assert builtin.schema_for("transport") is None
    assert builtin.is_known("transport.messageReceived")


def test_exact_trigger_beats_glob_and_star_is_one_segment(tmp_path: Path) -> None:
    write_schema(tmp_path, "any.json", schema("acme.*.created", {"type": "object"}))
    write_schema(tmp_path, "two.json", schema("acme.*.*", {"type": "array"}))
    write_schema(tmp_path, "order.json", schema("acme.order.created", {"type": "string"}))
    registry = SchemaRegistry.load([tmp_path])
    assert registry.schema_for("acme.order.created") == "acme.order.created"
    assert registry.schema_for("acme.invoice.created") == "acme.*.created"  # fewer wildcards: more specific
    assert registry.schema_for("acme.invoice.paid") == "acme.*.*"
    assert registry.schema_for("acme.invoice.created.again") is None
    assert registry.schema_for("acme.created") is None
    assert registry.validate("acme.invoice.created", []).errors == ('data: [] is not of type "object"',)


# ---- errors -------------------------------------------------------------------------------------------


def test_error_path_format() -> None:
    assert format_path([]) == "data"
    assert format_path(["content", "to", 0]) == "data.content.to[0]"
    assert format_path([2, "@type", 10], root="event") == "event[2].@type[10]"


def test_errors_name_the_path(builtin: SchemaRegistry) -> None:
    broken = copy.deepcopy(MESSAGE)
    broken["content"]["to"][0] = "x"
    del broken["createdAt"]
    result = builtin.validate("transport.messageReceived", broken)
    assert result.schema == "transport.messageReceived"
    assert not result.valid
    assert result.errors[0] == 'data: "createdAt" is a required property'
    assert result.errors[1].startswith('data.content.to[0]: "x" does not match "^did:e:')


def test_at_most_ten_errors_in_a_stable_order(builtin: SchemaRegistry) -> None:
    broken = copy.deepcopy(MESSAGE)
    broken["recipients"] = [{"address": f"nobody{i}"} for i in range(15)]
    broken["attachments"] = ["FIL1", "FIL2"]
    first = builtin.validate("transport.messageReceived", broken)
    assert len(first.errors) == 10
    assert first == builtin.validate("transport.messageReceived", copy.deepcopy(broken))
    assert first.errors[:2] == (
        'data.attachments[0]: "FIL1" does not match "^FIL[A-Za-z0-9]{17}$"',
        'data.attachments[1]: "FIL2" does not match "^FIL[A-Za-z0-9]{17}$"',
    )
    assert all(e.startswith("data.recipients[") for e in first.errors[2:])


# ---- bad schema files ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "not a readable JSON file"),
        ("[1, 2]", "must be a JSON object"),
        (schema("acme.x", {"type": "nope"}), "not a valid Draft 2020-12 schema at type"),
        (schema("acme.x", {"properties": {"a": {"minLength": -1}}}), "at properties/a/minLength"),
        ({"x-trigger": "acme.x", "type": "object"}, "needs an absolute $id"),
        (schema("acme.x", {}, schema_id="relative.json"), "needs an absolute $id"),
        (schema("acme.x", {}, schema_id="https://x.example/a b.json"), "bad $id"),
        ({**schema("acme.x", {}), "$schema": "http://json-schema.org/draft-07/schema#"}, "$schema must be"),
        (schema("", {}), "x-trigger must be a non-empty string"),
        (schema("acme.x", {"$ref": "missing.json"}), "unresolvable $ref"),
        (schema("acme.x", {"$ref": f"{BASE}defs.json#/$defs/NoSuchDef"}), "NoSuchDef"),
        (schema("acme.x", {"$ref": "#/$defs/nothing"}), "/$defs/nothing"),
    ],
)
def test_bad_schema_files_raise_naming_the_file(tmp_path: Path, content: Any, reason: str) -> None:
    path = write_schema(tmp_path / "user", "broken-schema.json", content)
    with pytest.raises(SchemaError) as caught:
        SchemaRegistry.load([builtin_schema_dir(), path.parent])
    assert str(path) in str(caught.value)
    assert reason in str(caught.value)


def test_a_broken_ref_in_a_shared_file_is_blamed_on_that_file(tmp_path: Path) -> None:
    shared_id = f"{BASE}test/shared.json"
    write_schema(tmp_path, "user.json", schema("acme.x", {"$ref": f"{shared_id}#/$defs/Bad"}))
    shared = write_schema(
        tmp_path, "shared.json", schema(None, {"$defs": {"Bad": {"$ref": "#/$defs/Gone"}}}, schema_id=shared_id)
    )
    with pytest.raises(SchemaError, match=f"^{re.escape(str(shared))}: cannot compile"):
        SchemaRegistry.load([tmp_path])
    write_schema(tmp_path, "shared.json", schema(None, {"$defs": {"Bad": {"$ref": "gone.json"}}}, schema_id=shared_id))
    with pytest.raises(SchemaError, match=f"^{re.escape(str(shared))}: unresolvable"):
        SchemaRegistry.load([tmp_path])


def test_missing_schema_dir_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="does not exist"):
        SchemaRegistry.load([tmp_path / "nope"])


# ---- event envelope -----------------------------------------------------------------------------------


def test_router_event_envelope(builtin: SchemaRegistry) -> None:
    event = Event(trigger="transport.messageReceived", data=MESSAGE, source="webhook").to_dict()
    assert builtin.validate_event_envelope(event).valid
    assert builtin.validate_event_envelope({**event, "data": None, "meta": {"headers": {}}}).valid

    result = builtin.validate_event_envelope({**event, "trigger": "", "received_at": "2026-08-21 08:14", "x": 1})
    assert not result.valid
    assert len(result.errors) == 3
    assert result.errors[0] == "event: Additional properties are not allowed ('x' was unexpected)"
    assert result.errors[1].startswith('event.received_at: "2026-08-21 08:14" does not match "^[0-9]{4}')
    assert result.errors[2] == 'event.trigger: "" is shorter than 1 character'
    missing = {k: v for k, v in event.items() if k not in ("data", "meta")}
    assert builtin.validate_event_envelope(missing).errors == (
        'event: "data" is a required property',
        'event: "meta" is a required property',
    )


def test_envelope_needs_event_json(tmp_path: Path) -> None:
    write_schema(tmp_path, "x.json", schema("acme.x", {}))
    with pytest.raises(SchemaError, match=r"event\.json"):
        SchemaRegistry.load([tmp_path]).validate_event_envelope({})


def test_invalid_data_nested_too_deeply_is_an_error_not_a_crash() -> None:
    registry = SchemaRegistry.load([builtin_schema_dir()])
    data = dict(EXAMPLES["transport.messageReceived"])
    content: dict[str, Any] = {"@type": "Mail", "to": [], "subject": "s", "body": "b", "bodyFormat": "PlainText"}
    node = content
    for _ in range(400):  # jsonschema-rs cannot list the errors of data this deep ("Recursion limit reached")
        node["cc"] = [{"a": {}}]
        node = node["cc"][0]["a"]
    data["content"] = content
    result = registry.validate("transport.messageReceived", data)
    assert not result.valid
    assert result.errors == ("data: nests too deeply to validate (Recursion limit reached)",)
