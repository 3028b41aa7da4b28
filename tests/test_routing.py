"""The route language: trigger globs, every match operator and rule, reshape, and every PatternError path.

Pure logic, no I/O; the events are the real Connector examples (event_router.testing.example_events).
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import math
import re
import tomllib
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from event_router.api.event import Event
from event_router.api.templates import MISSING
from event_router.core.reachability import contradiction, implies
from event_router.core.routing import (
    EVENT_FIELDS,
    OPERATORS,
    PatternError,
    as_toml,
    compile_match,
    compile_reshape,
    explain_match,
    parse_match,
    trigger_matches,
)
from event_router.testing import example_events

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES: list[dict[str, Any]] = example_events()

SELF = "did:e:backbone.example.org:dids:71d2c295ff91728b4b031d"
JANA = "did:e:backbone.example.org:dids:c8886dfc472605bea411a6"
SUPPLIER = "did:e:backbone.example.org:dids:48fe8f9a46ef5b775e7657"
REL = "REL1YBBHLUEC51CGTOYD"


def event(trigger: str, data: Any = None, **meta: Any) -> dict[str, Any]:
    return Event(
        trigger=trigger, data=data, source="webhook", id="0190a1b2-0000-7000-8000-000000000001", meta=meta
    ).to_dict()


def example(trigger: str) -> dict[str, Any]:
    raw = next(e for e in EXAMPLES if e["trigger"] == trigger)
    return event(raw["trigger"], copy.deepcopy(raw["data"]))


PENDING = example("transport.relationshipChanged")
MAIL = example("transport.messageReceived")
REQUEST_RECEIVED = example("consumption.incomingRequestReceived")
OUTGOING_CHANGED = example("consumption.outgoingRequestStatusChanged")
STARTED = example("runtime.modulesStarted")
#: the Decider gave up: the request needs a person (built from the received request above)
MANUAL = event(
    "consumption.incomingRequestStatusChanged",
    {
        "request": {**REQUEST_RECEIVED["data"], "status": "ManualDecisionRequired"},
        "oldStatus": "DecisionRequired",
        "newStatus": "ManualDecisionRequired",
    },
)
REL_EVENT = event(f"consumption.relationshipEvent.{REL}", PENDING["data"])
NO_DATA = event("transport.datawalletSynchronized")  # the webhook body had no `data`
ALL = [PENDING, MAIL, REQUEST_RECEIVED, OUTGOING_CHANGED, STARTED, MANUAL, REL_EVENT, NO_DATA]


def matching(spec: dict[str, Any]) -> list[str]:
    """The triggers of the events in ALL that `spec` matches."""
    matcher = compile_match(spec)
    return [e["trigger"] for e in ALL if matcher(e)]


def matches(spec: dict[str, Any], ev: dict[str, Any]) -> bool:
    return compile_match(spec)(ev)


def with_data(data: Any) -> dict[str, Any]:
    return event("transport.messageReceived", data)


def test_event_fields_are_the_keys_of_event_to_dict() -> None:
    assert set(EVENT_FIELDS) == set(MAIL)


# --- trigger globs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "trigger", "expected"),
    [
        ("transport.messageReceived", "transport.messageReceived", True),
        ("transport.messageReceived", "transport.messageSent", False),
        ("transport.messageReceived", "transport.messageReceived.x", False),
        ("transport.*", "transport.messageReceived", True),
        ("transport.*", "transport", False),
        ("transport.*", "transport.a.b", False),
        ("transport.*", "consumption.mailReceived", False),
        ("transport.**", "transport.messageReceived", True),
        ("transport.**", "transport.a.b.c", True),
        ("transport.**", "transport", True),  # `**` is zero or more segments
        ("transport.**", "transporting.x", False),
        ("**", "transport.messageReceived", True),
        ("**", f"consumption.relationshipEvent.{REL}", True),
        ("**", "runtime", True),
        ("*", "runtime", True),
        ("*", "transport.messageReceived", False),  # `*` is exactly one segment
        ("*.messageReceived", "transport.messageReceived", True),
        ("*.*", "transport.messageReceived", True),
        ("*.*", f"consumption.relationshipEvent.{REL}", False),
        ("consumption.relationshipEvent.*", f"consumption.relationshipEvent.{REL}", True),
        ("consumption.relationshipEvent.*", "consumption.relationshipEvent", False),
        ("consumption.relationshipEvent.*", f"consumption.relationshipEvent.{REL}.x", False),
        (f"*.*.{REL}", f"consumption.relationshipEvent.{REL}", True),
        (f"**.{REL}", f"consumption.relationshipEvent.{REL}", True),
        ("consumption.**.*", "consumption.mailReceived", True),
        ("consumption.**.*", "consumption", False),
        ("a.**.b", "a.b", True),
        ("a.**.b", "a.x.y.b", True),
        ("a.**.b", "a.x.y.c", False),
        ("a.**.b.**.c", "a.b.x.b.y.c", True),
        ("**.**", "a", True),
        ("transport.message*", "transport.messageReceived", False),  # only whole segments are wildcards
        ("transport.message*", "transport.message*", True),
    ],
)
def test_trigger_matches(pattern: str, trigger: str, expected: bool) -> None:
    assert trigger_matches(pattern, trigger) is expected


def _reference_glob(pattern: str, trigger: str) -> bool:
    """A slow, obviously right reference: a regex over '.'-prefixed segments."""
    regex = "".join(
        r"(?:\.[^.]*)*" if s == "**" else r"\.[^.]*" if s == "*" else r"\." + re.escape(s) for s in pattern.split(".")
    )
    return re.fullmatch(regex, "." + trigger) is not None


@given(
    st.lists(st.sampled_from(["a", "b", "*", "**"]), min_size=1, max_size=6).map(".".join),
    st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=7).map(".".join),
)
def test_trigger_matches_agrees_with_a_reference(pattern: str, trigger: str) -> None:
    assert trigger_matches(pattern, trigger) == _reference_glob(pattern, trigger)


def test_trigger_field_conditions_are_globs() -> None:
    assert matching({"trigger": "transport.*"}) == [
        "transport.relationshipChanged",
        "transport.messageReceived",
        "transport.datawalletSynchronized",
    ]
    assert matching({"trigger": ["consumption.relationshipEvent.*"]}) == [REL_EVENT["trigger"]]
    assert matching({"trigger": ["**"]}) == [e["trigger"] for e in ALL]
    assert matching({"trigger": ["*"]}) == []
    assert matching({"trigger": ["runtime.modulesStarted", "*.*.REL1YBBHLUEC51CGTOYD"]}) == [
        "runtime.modulesStarted",
        REL_EVENT["trigger"],
    ]
    assert matching({"trigger": ["transport.messageReceived", "consumption.incomingRequestStatusChanged"]}) == [
        "transport.messageReceived",
        "consumption.incomingRequestStatusChanged",
    ]


def test_trigger_globs_only_apply_to_the_top_level_trigger() -> None:
    ev = with_data({"trigger": "a.b"})
    assert not matches({"data.trigger": "a.*"}, ev)
    assert matches({"data.trigger": "a.b"}, ev)


def test_wildcard_operator_on_the_trigger_crosses_segments() -> None:
    assert matching({"trigger": [{"wildcard": "consumption.*Request*"}]}) == [
        "consumption.incomingRequestReceived",
        "consumption.outgoingRequestStatusChanged",
        "consumption.incomingRequestStatusChanged",
    ]


def test_anything_but_on_the_trigger_takes_globs() -> None:
    assert matching({"trigger": [{"anything-but": ["transport.**", "consumption.**"]}]}) == ["runtime.modulesStarted"]
    assert matching({"trigger": [{"anything-but": "runtime.*"}]}) == [e["trigger"] for e in ALL if e is not STARTED]


# --- structure: AND, OR, shorthand, nesting -------------------------------------------------------------


def test_empty_pattern_matches_everything() -> None:
    assert matching({}) == [e["trigger"] for e in ALL]


def test_all_keys_must_match() -> None:
    spec = {"trigger": "transport.messageReceived", "data.content.@type": "Mail", "data.createdBy": JANA}
    assert matches(spec, MAIL)
    assert not matches({**spec, "data.createdBy": SUPPLIER}, MAIL)
    assert not matches({**spec, "trigger": "transport.messageSent"}, MAIL)


def test_any_condition_in_a_list_may_match() -> None:
    assert matches({"data.content.@type": ["Request", "Mail"]}, MAIL)
    assert not matches({"data.content.@type": ["Request", "ResponseWrapper"]}, MAIL)


def test_bare_scalar_is_a_one_element_list() -> None:
    for value in ["Mail", "Request"]:
        for ev in ALL:
            assert matches({"data.content.@type": value}, ev) == matches({"data.content.@type": [value]}, ev)


def test_nested_tables_equal_dotted_keys() -> None:
    dotted = {"trigger": ["transport.messageReceived"], "data.content.@type": ["Mail"], "data.createdBy": [JANA]}
    nested = {"trigger": ["transport.messageReceived"], "data": {"content": {"@type": ["Mail"]}, "createdBy": [JANA]}}
    mixed = {"trigger": ["transport.messageReceived"], "data.content": {"@type": ["Mail"]}, "data": {"createdBy": JANA}}
    assert [matches(dotted, e) for e in ALL] == [matches(nested, e) for e in ALL] == [matches(mixed, e) for e in ALL]
    assert matching(nested) == ["transport.messageReceived"]


def test_or_at_the_top() -> None:
    spec = {
        "$or": [
            {"trigger": "transport.messageReceived", "data.content.@type": "Mail"},
            {"trigger": "consumption.incomingRequestStatusChanged", "data.newStatus": "ManualDecisionRequired"},
        ]
    }
    assert matching(spec) == ["transport.messageReceived", "consumption.incomingRequestStatusChanged"]


def test_or_is_anded_with_its_siblings() -> None:
    spec = {"trigger": "transport.**", "$or": [{"data.status": "Pending"}, {"data.content.@type": "Mail"}]}
    assert matching(spec) == ["transport.relationshipChanged", "transport.messageReceived"]


def test_or_in_a_nested_table_is_relative_to_it() -> None:
    spec: dict[str, Any] = {"data": {"request": {"$or": [{"peer": SUPPLIER}, {"status": "Completed"}]}}}
    assert matching(spec) == ["consumption.outgoingRequestStatusChanged", "consumption.incomingRequestStatusChanged"]
    # nested $or inside $or
    spec = {"$or": [{"$or": [{"data.status": "Pending"}]}, {"trigger": "runtime.*"}]}
    assert matching(spec) == ["transport.relationshipChanged", "runtime.modulesStarted", REL_EVENT["trigger"]]


# --- scalars ----------------------------------------------------------------------------------------------


def test_equality_is_exact_and_case_sensitive() -> None:
    assert matches({"data.status": "Pending"}, PENDING)
    assert not matches({"data.status": "pending"}, PENDING)
    assert not matches({"data.status": "Pend"}, PENDING)


def test_booleans_are_not_numbers() -> None:
    assert matches({"data.isOwn": False}, MAIL)
    assert not matches({"data.isOwn": 0}, MAIL)
    assert not matches({"data.isOwn": True}, MAIL)
    assert not matches({"data.isOwn": "false"}, MAIL)
    one = with_data({"n": 1, "flag": True})
    assert not matches({"data.n": True}, one)
    assert not matches({"data.flag": 1}, one)
    assert matches({"data.flag": True}, one)
    assert matches({"data.n": 1}, one)


def test_numbers_compare_as_json_numbers() -> None:
    ev = with_data({"size": 5, "ratio": 0.5})
    assert matches({"data.size": 5.0}, ev)
    assert matches({"data.ratio": 0.5}, ev)
    assert not matches({"data.size": "5"}, ev)
    assert not matches({"data.size": 6}, ev)


def test_missing_and_non_dict_paths_do_not_match() -> None:
    assert not matches({"data.content.@type": "Mail"}, NO_DATA)
    assert not matches({"data.status.x": "Pending"}, PENDING)  # runs into a string
    assert not matches({"data.nothing": "x"}, MAIL)


def test_meta_and_top_level_fields() -> None:
    ev = event("transport.messageReceived", {}, routing_key="transport.messageReceived")
    assert matches({"meta.routing_key": [{"prefix": "transport."}], "source": "webhook"}, ev)
    assert not matches({"source": "amqp"}, ev)


# --- operators ---------------------------------------------------------------------------------------------


def test_prefix_and_suffix() -> None:
    assert matches({"data.peer": [{"prefix": "did:e:backbone.example.org:"}]}, PENDING)
    assert not matches({"data.peer": [{"prefix": "did:e:other.example.org:"}]}, PENDING)
    assert matches({"data.peer": [{"suffix": "a411a6"}]}, PENDING)
    assert not matches({"data.peer": [{"suffix": "A411A6"}]}, PENDING)
    assert not matches({"data.isOwn": [{"prefix": "f"}]}, MAIL)  # only strings have prefixes


def test_equals_ignore_case() -> None:
    assert matches({"data.content.@type": [{"equals-ignore-case": "mAIL"}]}, MAIL)
    assert not matches({"data.content.@type": [{"equals-ignore-case": "mai"}]}, MAIL)
    assert matches({"data.x": [{"equals-ignore-case": "STRASSE"}]}, with_data({"x": "straße"}))


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("did:e:backbone.example.org:dids:*", JANA, True),
        ("did:e:*.example.org:dids:*", JANA, True),
        ("did:e:*.example.com:dids:*", JANA, False),
        ("*a411a6", JANA, True),
        ("*", "", True),
        ("*", "anything", True),
        ("a*b*c", "abc", True),
        ("a*b*c", "aXbYc", True),
        ("a*b*c", "acb", False),
        ("a*a", "a", False),  # head and tail cannot overlap
        ("a**a", "aa", True),
        ("ab*ba", "aba", False),
        ("*.org", "x.org", True),
        ("?.org", "x.org", False),  # no other metacharacters
        ("[ab]*", "a", False),
        ("Mail", "Mail", True),  # no star: exact
        ("Mail", "Mails", False),
    ],
)
def test_wildcard(pattern: str, value: str, expected: bool) -> None:
    assert matches({"data.v": [{"wildcard": pattern}]}, with_data({"v": value})) is expected


def test_wildcard_ignores_non_strings() -> None:
    assert not matches({"data.v": [{"wildcard": "*"}]}, with_data({"v": 1}))


def test_anything_but() -> None:
    assert matches({"data.status": [{"anything-but": "Active"}]}, PENDING)
    assert not matches({"data.status": [{"anything-but": "Pending"}]}, PENDING)
    assert not matches({"data.status": [{"anything-but": ["Active", "Pending"]}]}, PENDING)
    assert matches({"data.status": [{"anything-but": {"prefix": "Act"}}]}, PENDING)
    assert not matches({"data.status": [{"anything-but": {"prefix": "Pen"}}]}, PENDING)
    assert not matches({"data.status": [{"anything-but": {"suffix": "ing"}}]}, PENDING)
    assert not matches({"data.status": [{"anything-but": {"equals-ignore-case": "PENDING"}}]}, PENDING)
    assert not matches({"data.status": [{"anything-but": {"wildcard": "P*g"}}]}, PENDING)
    # not a missing field; typed like equality
    assert not matches({"data.nothing": [{"anything-but": "x"}]}, PENDING)
    assert matches({"data.isOwn": [{"anything-but": 0}]}, MAIL)
    assert not matches({"data.isOwn": [{"anything-but": False}]}, MAIL)
    # null is a value that is not "x"
    assert matches({"data.v": [{"anything-but": "x"}]}, with_data({"v": None}))


def test_exists() -> None:
    assert matches({"data.content.to": [{"exists": True}]}, MAIL)
    assert not matches({"data.content.cc": [{"exists": True}]}, MAIL)  # cc = []: no element to match
    assert not matches({"data.wasReadAt": [{"exists": True}]}, MAIL)
    assert matches({"data.wasReadAt": [{"exists": False}]}, MAIL)
    assert not matches({"data.content": [{"exists": False}]}, MAIL)  # an object is present too
    assert matches({"data": [{"exists": False}]}, NO_DATA) is False  # data is null: present
    assert matches({"data.x": [{"exists": False}]}, NO_DATA)
    null = with_data({"v": None, "empty": []})
    assert matches({"data.v": [{"exists": True}]}, null)
    assert not matches({"data.v": [{"exists": False}]}, null)
    assert matches({"data.empty": [{"exists": False}]}, null)  # an empty array has nothing to match
    assert not matches({"data.empty": [{"exists": True}]}, null)


def test_exists_false_or_a_value() -> None:
    spec = {"data.v": ["x", {"exists": False}]}
    assert matches(spec, with_data({}))
    assert matches(spec, with_data({"v": "x"}))
    assert not matches(spec, with_data({"v": "y"}))


@pytest.mark.parametrize(
    ("condition", "value", "expected"),
    [
        ([">", 0], 1, True),
        ([">", 0], 0, False),
        ([">=", 0], 0, True),
        (["<", 1.5], 1.49, True),
        (["<=", 1.5], 1.5, True),
        (["=", 3], 3.0, True),
        (["=", 3], 3.1, False),
        ([">", 0, "<=", 5], 5, True),
        ([">", 0, "<=", 5], 0, False),
        ([">", 0, "<=", 5], 6, False),
        ([">", 0, "<=", 5], 2.5, True),
        ([">", 0], True, False),  # a boolean is not a number
        ([">", 0], "5", False),  # nor is a string
        ([">", 0], None, False),
        ([">", -1e308], 10**400, True),  # big ints compare exactly
    ],
)
def test_numeric(condition: list[Any], value: Any, expected: bool) -> None:
    assert matches({"data.v": [{"numeric": condition}]}, with_data({"v": value})) is expected


def test_numeric_on_a_file_size() -> None:
    files = with_data({"filesize": 2048, "tags": ["a"]})
    assert matches({"data.filesize": [{"numeric": [">", 1024, "<=", 4096]}]}, files)


# --- arrays --------------------------------------------------------------------------------------------------


def test_array_leaf_matches_any_element() -> None:
    assert matches({"data.content.to": SELF}, MAIL)
    assert matches({"data.content.to": [{"prefix": "did:e:"}]}, MAIL)
    assert not matches({"data.content.to": JANA}, MAIL)
    assert not matches({"data.content.cc": [{"prefix": ""}]}, MAIL)  # empty array: nothing matches


def test_arrays_in_the_middle_are_looked_into() -> None:
    assert matches({"data.recipients.address": SELF}, MAIL)
    assert matches({"data.recipients.relationshipId": REL}, MAIL)
    assert matches({"data.recipients": {"address": [SELF]}}, MAIL)
    assert not matches({"data.recipients.address": JANA}, MAIL)
    assert matches({"data.content.items.@type": "ReadAttributeRequestItem"}, REQUEST_RECEIVED)
    assert matches({"data.content.items.mustBeAccepted": False}, REQUEST_RECEIVED)
    assert matches({"data.auditLog.reason": "Creation", "data.status": "Pending"}, PENDING)


def test_arrays_in_arrays_and_mixed_elements() -> None:
    ev = with_data({"groups": [[{"id": "a"}, "text", None], [[{"id": "b"}]], {"id": ["c", ["d"]]}]})
    for wanted in "abcd":
        assert matches({"data.groups.id": wanted}, ev), wanted
    assert not matches({"data.groups.id": "e"}, ev)
    assert matches({"data.groups.nothing": [{"exists": False}]}, ev)
    assert matches({"data.groups": "text"}, ev)


def test_multiple_recipients() -> None:
    data = copy.deepcopy(MAIL["data"])
    data["recipients"].append({"address": JANA})
    ev = with_data(data)
    assert matches({"data.recipients.address": JANA}, ev)
    assert matches({"data.recipients.relationshipId": [{"exists": True}]}, ev)  # any element has it
    assert matches({"data.recipients.address": [{"anything-but": SELF}]}, ev)  # any element is not SELF


def test_non_dict_mappings_and_tuples_take_the_slow_path() -> None:
    from types import MappingProxyType

    ev = MappingProxyType({**MAIL, "data": MappingProxyType({"items": ({"id": "x"}, {"id": "y"})})})
    assert compile_match({"data.items.id": "y"})(ev)
    assert compile_match({"data.items": [{"exists": True}]})(ev)


# --- the routes users write (as in docs/routing.md) ----------------------------------------------------------


def test_mail_from_one_peer() -> None:
    spec = {"trigger": "transport.messageReceived", "data.content.@type": "Mail", "data.createdBy": JANA}
    assert matching(spec) == ["transport.messageReceived"]


def test_requests_needing_a_manual_decision() -> None:
    spec = {"trigger": "consumption.incomingRequestStatusChanged", "data.newStatus": ["ManualDecisionRequired"]}
    assert matching(spec) == ["consumption.incomingRequestStatusChanged"]


def test_pending_relationships() -> None:
    spec = {"trigger": "transport.relationshipChanged", "data": {"status": ["Pending"]}}
    assert matching(spec) == ["transport.relationshipChanged"]
    assert matching({"trigger": "consumption.relationshipEvent.*", "data.status": "Pending"}) == [REL_EVENT["trigger"]]


def _toml_blocks(markdown: str) -> list[str]:
    return re.findall(r"```toml\n(.*?)```", markdown, flags=re.DOTALL)


def test_the_routes_in_the_docs_do_what_the_docs_say() -> None:
    docs = ROOT / "docs" / "routing.md"
    if not docs.exists():
        pytest.skip("docs/routing.md not written yet")
    matchers: dict[str, Any] = {}
    for block in _toml_blocks(docs.read_text()):
        for route in tomllib.loads(block).get("routes", []):
            matchers[route["name"]] = compile_match(route.get("match", {}))
            if "reshape" in route:
                assert isinstance(compile_reshape(route["reshape"])(MAIL), dict)
    assert len(matchers) >= 8

    def hits(name: str) -> list[str]:
        return [e["trigger"] for e in ALL if matchers[name](e)]

    mail, manual = ["transport.messageReceived"], ["consumption.incomingRequestStatusChanged"]
    for name in ["mail to CRM", "dotted", "nested", "sub-table", "mail from Jana", "unread mail from our backbone"]:
        assert hits(name) == mail, name
    assert hits("mail addressed to our second identity") == mail
    assert hits("manual decisions to ops") == hits("manual decisions") == manual
    assert hits("pending relationships") == ["transport.relationshipChanged"]
    assert hits("relationship events") == [REL_EVENT["trigger"]]
    assert hits("requests that ask for an e-mail address") == ["consumption.incomingRequestReceived"]
    assert hits("things a person must look at") == ["transport.relationshipChanged", *manual]
    assert "runtime.modulesStarted" not in hits("all but runtime")
    assert len(hits("all but runtime")) == len(ALL) - 1
    assert hits("messages that are neither mail nor requests") == []
    assert hits("archive everything else") == [e["trigger"] for e in ALL]


# --- PatternError: every mistake, with its path ---------------------------------------------------------


BROKEN: list[tuple[Any, str, str]] = [
    (
        {"trigger": ["transport.*", {"prefx": "a"}]},
        "trigger[1]",
        "unknown operator 'prefx' (operators: anything-but, equals-ignore-case, exists, numeric, prefix, suffix, "
        "wildcard)",
    ),
    (
        {"trigger": ["transport.message*"]},
        "trigger[0]",
        "'transport.message*': '*' and '**' must be whole segments between dots (e.g. 'transport.*'); "
        "for other patterns use [{ prefix = ... }] or [{ wildcard = ... }]",
    ),
    (
        {"trigger": "transport.**x"},
        "trigger",
        "'transport.**x': '*' and '**' must be whole segments between dots (e.g. 'transport.*'); "
        "for other patterns use [{ prefix = ... }] or [{ wildcard = ... }]",
    ),
    (
        {"trigger": [{"anything-but": ["runtime.*", "x*"]}]},
        "trigger[0].anything-but[1]",
        "'x*': '*' and '**' must be whole segments between dots (e.g. 'transport.*'); "
        "for other patterns use [{ prefix = ... }] or [{ wildcard = ... }]",
    ),
    ({"data": {"status": [{"numeric": [">", "x"]}]}}, "data.status[0].numeric[1]", "must be a number, got string 'x'"),
    ({"data.status": [{"numeric": [">", True]}]}, "data.status[0].numeric[1]", "must be a number, got boolean True"),
    ({"data.status": [{"numeric": [">", math.nan]}]}, "data.status[0].numeric[1]", "must be a number, got float nan"),
    (
        {"data.status": [{"numeric": ["~", 1]}]},
        "data.status[0].numeric[0]",
        "unknown comparison '~' (one of: =, <, <=, >, >=)",
    ),
    (
        {"data.status": [{"numeric": [">", 0, "=>", 5]}]},
        "data.status[0].numeric[2]",
        "unknown comparison '=>' (one of: =, <, <=, >, >=)",
    ),
    (
        {"data.status": [{"numeric": [">"]}]},
        "data.status[0].numeric",
        "must be one or two comparisons like ['>', 0, '<=', 5], got ['>']",
    ),
    (
        {"data.status": [{"numeric": 5}]},
        "data.status[0].numeric",
        "must be one or two comparisons like ['>', 0, '<=', 5], got integer 5",
    ),
    (
        {"$or": [{"data.peer": "x"}, {"data": {"peer": []}}]},
        "$or[1].data.peer",
        "empty list: give at least one condition",
    ),
    ({"$or": {}}, "$or", "must be a non-empty list of tables ($or = [{...}, {...}]), got table"),
    ({"$or": []}, "$or", "must be a non-empty list of tables ($or = [{...}, {...}]), got array"),
    ({"$or": [1]}, "$or[0]", "must be a table (a pattern), got integer 1"),
    ({"$or": [{"trigger": "x"}, {}]}, "$or[1]", "empty pattern: it would match every event"),
    (
        {"data": {"$or": [{"status": [{"exists": 1}]}]}},
        "data.$or[0].status[0].exists",
        "must be true or false, got integer 1",
    ),
    ({"$and": []}, "$and", "unknown special key '$and' (the only one is '$or')"),
    (
        {"status": "Pending"},
        "status",
        "unknown field 'status': paths start with one of data, id, meta, received_at, source, trigger "
        "(e.g. 'data.status')",
    ),
    (
        {"data": {"prefix": "x"}},
        "data.prefix",
        "'prefix' is an operator: put its table in a list (field = [{ prefix = ... }]); "
        "to match an event field named 'prefix', use a dotted key",
    ),
    (
        {"data.status": [{"prefix": "a", "suffix": "b"}]},
        "data.status[0]",
        "an operator table has exactly one key, got 2 ('prefix', 'suffix'): write each condition as its own table "
        "in the list",
    ),
    (
        {"data.status": [{}]},
        "data.status[0]",
        "empty operator table (operators: anything-but, equals-ignore-case, exists, numeric, prefix, suffix, wildcard)",
    ),
    ({"data.status": [{"exists": "yes"}]}, "data.status[0].exists", "must be true or false, got string 'yes'"),
    ({"data.status": [{"prefix": 1}]}, "data.status[0].prefix", "must be a string, got integer 1"),
    ({"data.status": [{"suffix": ["a"]}]}, "data.status[0].suffix", "must be a string, got array"),
    (
        {"data.status": [{"equals-ignore-case": True}]},
        "data.status[0].equals-ignore-case",
        "must be a string, got boolean True",
    ),
    ({"data.status": [{"wildcard": {"x": 1}}]}, "data.status[0].wildcard", "must be a string, got table"),
    ({"data.status": [{"anything-but": []}]}, "data.status[0].anything-but", "empty list: give at least one value"),
    (
        {"data.status": [{"anything-but": {"regex": "x"}}]},
        "data.status[0].anything-but",
        "a table here has exactly one key, one of: equals-ignore-case, prefix, suffix, wildcard (got 'regex')",
    ),
    (
        {"data.status": [{"anything-but": [1, [2]]}]},
        "data.status[0].anything-but[1]",
        "a list inside a condition list: conditions are scalars or operator tables",
    ),
    (
        {"data.status": [{"anything-but": {"prefix": 1}}]},
        "data.status[0].anything-but.prefix",
        "must be a string, got integer 1",
    ),
    ({"data.status": []}, "data.status", "empty list: give at least one condition"),
    ({"data..x": 1}, "data..x", "'data..x' has an empty segment (two dots, or a dot at the start or end)"),
    ({"data.": 1}, "data.", "'data.' has an empty segment (two dots, or a dot at the start or end)"),
    ({"data": {"": 1}}, "data.", "empty field path"),
    (
        {"data.a b": 1},
        "data.a b",
        "'data.a b' is not a field path (no spaces or braces; segments are separated by '.')",
    ),
    ({"data": {}}, "data", "empty table: give at least one field to match"),
    ({"data.x": [[1]]}, "data.x[0]", "a list inside a condition list: conditions are scalars or operator tables"),
    (
        {"data.x": datetime.date(2026, 8, 21)},
        "data.x",
        "unsupported value date: a condition is a string, number, boolean or operator table (quote dates as strings)",
    ),
    ({"data": {1: "x"}}, "data", "key 1 is not a string"),
    ([1], "", "a match pattern must be a table, got array"),
]


@pytest.mark.parametrize(("spec", "path", "message"), BROKEN, ids=[b[1] or "top" for b in BROKEN])
def test_pattern_errors_name_the_path(spec: Any, path: str, message: str) -> None:
    with pytest.raises(PatternError) as info:
        compile_match(spec)
    assert (info.value.path, info.value.message) == (path, message)
    assert str(info.value) == (f"{path}: {message}" if path else message)
    assert isinstance(info.value, ValueError)


def test_a_field_named_like_an_operator_is_reachable_with_a_dotted_key() -> None:
    assert matches({"data.prefix": "x"}, with_data({"prefix": "x"}))


# --- reshape ------------------------------------------------------------------------------------------------------


def test_reshape_copies_fields_renders_templates_and_keeps_literals() -> None:
    reshape = compile_reshape(
        {
            "id": "id",
            "kind": "trigger",
            "from": "data.createdBy",
            "mail": {"subject": "data.content.subject", "to": "data.content.to"},
            "first_recipient": "data.recipients.0.address",
            "recipients": "data.recipients",
            "title": "Mail from {{ data.createdBy }}: {{data.content.subject}}",
            "link": "https://crm.example.org/messages/{{ data.id }}",
            "read": "data.wasReadAt",
            "attachments": "data.attachments",
            "missing_in_template": "[{{ data.wasReadAt }}]",
            "priority": 2,
            "ratio": 0.5,
            "urgent": False,
            "channel": {"const": "enmeshed"},
            "literal_template": {"const": "{{ not rendered }}"},
            "defaults": {"const": {"tags": ["a"], "n": 1}},
            "pair": ["data.id", {"const": "x"}, 3, "{{trigger}}"],
        }
    )
    out = reshape(MAIL)
    assert out == {
        "id": MAIL["id"],
        "kind": "transport.messageReceived",
        "from": JANA,
        "mail": {"subject": "New postal address", "to": [SELF]},
        "first_recipient": SELF,
        "recipients": MAIL["data"]["recipients"],
        "title": f"Mail from {JANA}: New postal address",
        "link": "https://crm.example.org/messages/MSGNNKP7VFRCT9S2DYVE",
        "read": None,
        "attachments": [],
        "missing_in_template": "[]",
        "priority": 2,
        "ratio": 0.5,
        "urgent": False,
        "channel": "enmeshed",
        "literal_template": "{{ not rendered }}",
        "defaults": {"tags": ["a"], "n": 1},
        "pair": ["MSGNNKP7VFRCT9S2DYVE", "x", 3, "transport.messageReceived"],
    }
    orjson.dumps(out)


def test_reshape_const_containers_are_fresh_per_event() -> None:
    reshape = compile_reshape({"tags": {"const": ["a"]}})
    first = reshape(MAIL)
    first["tags"].append("changed")
    assert reshape(MAIL) == {"tags": ["a"]}


def test_reshape_of_an_event_without_data() -> None:
    assert compile_reshape({"s": "data.status", "t": "{{ data.status }}!"})(NO_DATA) == {"s": None, "t": "!"}


def test_reshape_request_for_a_manual_decision() -> None:
    reshape = compile_reshape(
        {"request": "data.request.id", "peer": "data.request.peer", "title": "data.request.content.title"}
    )
    assert reshape(MANUAL) == {"request": "REQ31OM7PNMJD4BWBJ86", "peer": SUPPLIER, "title": "Supplier onboarding"}


RESHAPE_BROKEN: list[tuple[Any, str, str]] = [
    (
        {"x": "nope"},
        "x",
        "unknown field 'nope': paths start with one of data, id, meta, received_at, source, trigger "
        "(e.g. 'data.status'); for literal text write { const = ... }",
    ),
    ({"x": "{{ data.id"}, "x", "unclosed '{{' at position 0 of template '{{ data.id'"),
    (
        {"x": "{{ nope.id }}"},
        "x",
        "unknown field 'nope.id' (paths start with one of: data, id, meta, received_at, source, trigger) at position 0 "
        "of template '{{ nope.id }}'",
    ),
    ({"x": {"const": 1, "y": 2}}, "x", "a table with 'const' has no other key (also got 'y')"),
    ({"x": [1, {"a": "{{ }}"}]}, "x[1].a", "empty placeholder '{{ }}' at position 0 of template '{{ }}'"),
    (
        {"x": {"const": [datetime.date(2026, 8, 21)]}},
        "x.const[0]",
        "unsupported value date (a JSON value is needed; quote dates)",
    ),
    ({"x": {"y": datetime.time(8, 0)}}, "x.y", "unsupported value time (use a string, number, boolean, table or list)"),
    ({"x": "data..id"}, "x", "'data..id' has an empty segment (two dots, or a dot at the start or end)"),
    ({"x": ""}, "x", "empty field path"),
    ({"x": {1: "data"}}, "x", "key 1 is not a string"),
    ({"x": {"const": {"a": {2: "b"}}}}, "x.const.a", "key 2 is not a string"),
    ({}, "", "empty reshape: give at least one key (or drop reshape to send the event as is)"),
    ("data", "", "reshape must be a table, got string 'data'"),
]


@pytest.mark.parametrize(("spec", "path", "message"), RESHAPE_BROKEN, ids=[b[1] or "top" for b in RESHAPE_BROKEN])
def test_reshape_errors_name_the_path(spec: Any, path: str, message: str) -> None:
    with pytest.raises(PatternError) as info:
        compile_reshape(spec)
    assert (info.value.path, info.value.message) == (path, message)


# --- properties -----------------------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)
toml_scalars = (
    st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=10)
    | st.sampled_from(["*", "**", "transport.*", "a.**.b", "x*", "$or", ">", "<=", "="])
    | st.dates()
    | st.datetimes()
    | st.times()
)
key_text = st.sampled_from(
    [*EVENT_FIELDS, *OPERATORS, "$or", "$x", "data.status", "data.content.@type", "status", "", "a..b", "data. x"]
) | st.text(max_size=8)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(key_text, inner, max_size=4),
    max_leaves=25,
)


@settings(max_examples=400)
@given(st.dictionaries(key_text, toml_values, max_size=4) | toml_values)
def test_compile_match_only_raises_pattern_error(spec: Any) -> None:
    with contextlib.suppress(PatternError):
        compile_match(spec)


@settings(max_examples=300)
@given(st.dictionaries(key_text, toml_values, max_size=4) | toml_values)
def test_compile_reshape_only_raises_pattern_error(spec: Any) -> None:
    with contextlib.suppress(PatternError):
        compile_reshape(spec)


paths = st.sampled_from(
    ["trigger", "data", "data.status", "data.content.@type", "data.recipients.address", "data.v", "data.v.w", "meta.k"]
)
condition_values = (
    st.booleans() | st.integers() | st.floats(allow_nan=False) | st.sampled_from(["", "a", "Mail", "x.y"])
)
operator_tables = st.one_of(
    st.builds(
        lambda op, s: {op: s},
        st.sampled_from(["prefix", "suffix", "equals-ignore-case", "wildcard"]),
        st.text(max_size=4),
    ),
    st.builds(lambda b: {"exists": b}, st.booleans()),
    st.builds(lambda v: {"anything-but": v}, condition_values | st.lists(condition_values, min_size=1, max_size=3)),
    st.builds(lambda s: {"anything-but": {"prefix": s}}, st.text(max_size=3)),
    st.builds(
        lambda ops, nums: {"numeric": [x for pair in zip(ops, nums, strict=False) for x in pair]},
        st.lists(st.sampled_from(["=", "<", "<=", ">", ">="]), min_size=1, max_size=2),
        st.lists(st.integers() | st.floats(allow_nan=False), min_size=2, max_size=2),
    ),
)
conditions = st.lists(condition_values | operator_tables, min_size=1, max_size=3)
valid_patterns = st.recursive(
    st.dictionaries(paths, conditions, min_size=1, max_size=3),
    lambda inner: st.builds(
        lambda base, alts: {**base, "$or": alts},
        st.dictionaries(paths, conditions, max_size=2),
        st.lists(inner, min_size=1, max_size=3),
    ),
    max_leaves=6,
)
events = st.builds(
    lambda trigger, data, meta: {
        "id": "x",
        "trigger": trigger,
        "source": "s",
        "received_at": "t",
        "data": data,
        "meta": meta,
    },
    st.sampled_from(["transport.messageReceived", "a", "a.b.c", ""]) | json_values,
    st.one_of(
        json_values,
        st.fixed_dictionaries(
            {},
            optional={
                "status": json_values,
                "content": st.fixed_dictionaries({}, optional={"@type": json_values}) | json_values,
                "recipients": st.lists(
                    st.fixed_dictionaries({}, optional={"address": json_values}) | json_values, max_size=3
                ),
                "v": json_values,
            },
        ),
    ),
    json_values,
) | st.sampled_from(ALL)


@settings(max_examples=250)
@given(valid_patterns, events)
def test_compiled_matchers_never_raise(spec: dict[str, Any], ev: dict[str, Any]) -> None:
    assert compile_match(spec)(ev) in (True, False)


@given(valid_patterns, events)
def test_a_matcher_is_a_pure_function(spec: dict[str, Any], ev: dict[str, Any]) -> None:
    before = json.dumps(ev)
    matcher = compile_match(spec)
    assert matcher(ev) == matcher(ev)
    assert json.dumps(ev) == before  # the event is never changed


@given(valid_patterns, events)
def test_explain_agrees_with_the_matcher(spec: dict[str, Any], ev: dict[str, Any]) -> None:
    """`explain` (no miss) and the router (a match) never disagree: they run the same compiled conditions."""
    miss = explain_match(parse_match(spec), ev)
    assert (miss is None) == compile_match(spec)(ev)


# `check`'s reasoning about patterns (core/reachability) must never prove what is false: checked here against
# the matcher on the same random patterns and events


@given(valid_patterns, valid_patterns, events)
def test_a_proven_implication_holds(extra: dict[str, Any], earlier: dict[str, Any], ev: dict[str, Any]) -> None:
    later = {**earlier, **extra}  # more conditions: often implies `earlier` (unless a key was replaced)
    if implies(parse_match(later), parse_match(earlier)) and compile_match(later)(ev):
        assert compile_match(earlier)(ev)


def test_a_pattern_with_more_conditions_implies_the_one_with_fewer() -> None:
    patterns: list[dict[str, Any]] = [
        {"trigger": "transport.messageReceived", "data.content.@type": ["Mail"]},
        {"trigger": "a.*", "$or": [{"data.v": 1}, {"data.v": [{"prefix": "x"}]}]},
    ]
    for earlier in patterns:
        assert implies(parse_match({**earlier, "meta.k": "x"}), parse_match(earlier))
        assert implies(parse_match(earlier), parse_match(earlier))


@given(valid_patterns, events)
def test_a_proven_contradiction_matches_nothing(spec: dict[str, Any], ev: dict[str, Any]) -> None:
    if contradiction(parse_match(spec)) is not None:
        assert not compile_match(spec)(ev)


def test_explain_names_the_first_condition_written_that_fails_and_what_it_saw() -> None:
    spec = {"data.content.@type": "Mail", "trigger": "transport.relationshipChanged", "data.recipients.address": "x"}
    miss = explain_match(parse_match(spec), MAIL)
    assert miss is not None and (miss.where, miss.spec, miss.seen) == ("trigger", spec["trigger"], MAIL["trigger"])
    # through an array: everything the condition looked at
    miss = explain_match(parse_match({"data.recipients.address": ["x"]}), MAIL)
    assert miss is not None and miss.seen == [SELF]
    # an array at the end of the path: as it is
    miss = explain_match(parse_match({"data.content.to": [{"prefix": "x"}]}), MAIL)
    assert miss is not None and miss.seen == [SELF]
    miss = explain_match(parse_match({"$or": [{"data.wasReadAt": [{"exists": True}]}, {"trigger": "x"}]}), MAIL)
    assert miss is not None and miss.where == "$or"
    assert [(b.where, b.seen) for b in miss.branches] == [
        ("$or[0].data.wasReadAt", MISSING),
        ("$or[1].trigger", MAIL["trigger"]),
    ]
    assert explain_match(parse_match({"trigger": "transport.*"}), MAIL) is None


def test_conditions_are_shown_as_router_toml_has_them() -> None:
    assert as_toml([{"numeric": [">", 0, "<=", 5]}, 'a"b', True]) == '[{ numeric = [">", 0, "<=", 5] }, "a\\"b", true]'
    assert as_toml({"data.x": {"@type": 1.5}}) == '{ "data.x" = { "@type" = 1.5 } }'


def _nest(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The nested-table form of a pattern with dotted keys, or None when two keys would collide."""
    out: dict[str, Any] = {}
    for key, value in spec.items():
        segments = key.split(".") if key != "$or" else [key]
        node = out
        for segment in segments[:-1]:
            child = node.setdefault(segment, {})
            if not isinstance(child, dict):
                return None
            node = child
        if segments[-1] in node:
            return None
        node[segments[-1]] = value
    return out


@given(st.dictionaries(paths, conditions, min_size=1, max_size=4), events)
def test_nested_form_equals_dotted_form(spec: dict[str, Any], ev: dict[str, Any]) -> None:
    nested = _nest(spec)
    assume(nested is not None)
    assert nested is not None
    assert compile_match(nested)(ev) == compile_match(spec)(ev)


reshape_specs = st.recursive(
    st.sampled_from(
        ["id", "trigger", "data", "data.status", "data.recipients.0.address", "meta.k", "{{ data.v }}/{{trigger}}"]
    )
    | st.integers()
    | st.booleans()
    | st.builds(lambda v: {"const": v}, json_values.filter(lambda v: v is not None)),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=4).filter(lambda k: k != "const"), inner, min_size=1, max_size=3)
    ),
    max_leaves=10,
)


@given(st.dictionaries(st.text(max_size=4), reshape_specs, min_size=1, max_size=3), events)
def test_reshapers_never_raise(spec: dict[str, Any], ev: dict[str, Any]) -> None:
    try:
        reshape = compile_reshape(spec)
    except PatternError:  # a `const` key inside a generated table
        return
    assert isinstance(reshape(ev), dict)


@pytest.mark.parametrize(
    ("spec", "trigger", "admitted"),
    [
        ({"trigger": ["transport.*"]}, "transport.messageReceived", True),
        ({"trigger": ["transport.*"]}, "consumption.attributeCreated", False),
        (
            {"trigger": "consumption.relationshipEvent.*", "data.status": ["Active"]},
            "consumption.relationshipEvent.REL1",
            True,
        ),
        ({"trigger": [{"anything-but": "runtime.*"}]}, "runtime.modulesStarted", False),
    ],
)
def test_trigger_filter_is_the_trigger_condition_alone(spec: dict[str, Any], trigger: str, admitted: bool) -> None:
    from event_router.core.routing import compile_trigger_filter

    check = compile_trigger_filter(spec)
    assert check is not None and check(trigger) is admitted


@pytest.mark.parametrize("spec", [{}, {"data.status": ["Active"]}, {"$or": [{"trigger": ["a"]}, {"data.x": [1]}]}])
def test_no_trigger_filter_without_a_top_level_trigger(spec: dict[str, Any]) -> None:
    from event_router.core.routing import compile_trigger_filter

    assert compile_trigger_filter(spec) is None  # such routes stay candidates for every trigger


def test_routes_for_keeps_order_and_the_result_of_full_matching(tmp_path: Path) -> None:
    import tomllib

    from event_router.config import build_config
    from event_router.plugin_loader import load_plugins

    text = """
[outputs.o]
type = "file"
path = "x.jsonl"
[[routes]]
name = "any"
to = "o"
[[routes]]
name = "mail"
match = { trigger = ["transport.messageReceived"], "data.content.@type" = ["Mail"] }
to = "o"
[[routes]]
name = "or"
match = { "$or" = [{ trigger = ["consumption.*"] }, { "data.isOwn" = [true] }] }
to = "o"
[[routes]]
name = "consumption"
match = { trigger = ["consumption.**"] }
to = "o"
"""
    config = build_config(tomllib.loads(text), path=tmp_path / "router.toml", registry=load_plugins())
    assert [r.name for r in config.routes_for("transport.messageReceived")] == ["any", "mail", "or"]
    assert [r.name for r in config.routes_for("consumption.relationshipEvent.REL1")] == ["any", "or", "consumption"]
    for event in EXAMPLES:
        as_dict = Event(trigger=event["trigger"], data=event["data"], source="s").to_dict()
        everything = [r.name for r in config.routes if r.matcher(as_dict)]
        prefiltered = [r.name for r in config.routes_for(event["trigger"]) if r.rest_matcher(as_dict)]
        assert prefiltered == everything
