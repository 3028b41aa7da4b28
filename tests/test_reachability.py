"""Routes that can never match: what `check` proves (core/reachability.py), and that it proves nothing false.

The reasoning is pure logic, tested without I/O; `check`'s warnings are tested through the real command, and
the shipped router.toml and the docs' routes must give none.
"""

from __future__ import annotations

import copy
import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest

from event_router.api.event import Event
from event_router.core.reachability import contradiction, implies
from event_router.core.routing import compile_match, parse_match
from event_router.testing import ROOT, example_events, run_cli


def _events() -> list[dict[str, Any]]:
    """The Connector's examples as routes see them, from two inputs, plus variations the patterns below
    tell apart (a missing field, an array, a number)."""
    found = []
    for raw in example_events():
        for source in ("connector", "broker"):
            found.append(Event(trigger=raw["trigger"], data=copy.deepcopy(raw.get("data")), source=source).to_dict())
    found.append(Event(trigger="transport.x", data={"n": 7, "to": ["a", "b"], "x": {"y": "a"}}, source="c").to_dict())
    found.append(Event(trigger="transport.x", data={"n": 3, "to": "a"}, source="c").to_dict())
    found.append(Event(trigger="a.b", data={"n": 12.5}, source="x").to_dict())
    return found


EVENTS = _events()

#: (later, earlier): every event `later` matches, `earlier` matches too
IMPLIED = [
    ({"trigger": "transport.messageReceived", "data.content.@type": "Mail"}, {"trigger": ["**"]}),
    ({"trigger": "transport.messageReceived"}, {}),
    ({"trigger": "transport.messageReceived", "data.to": "a"}, {"trigger": "transport.*"}),
    ({"trigger": "transport.*"}, {"trigger": "transport.*"}),
    ({"data.content.@type": "Mail"}, {"data.content.@type": ["Mail", "Request"]}),
    ({"data": {"content": {"@type": "Mail"}}}, {"data.content.@type": "Mail"}),
    ({"data.peer": [{"prefix": "did:e:a"}]}, {"data.peer": [{"prefix": "did:e:"}]}),
    ({"$or": [{"trigger": "a.b"}, {"trigger": "a.c"}]}, {"trigger": ["a.b", "a.c"]}),
    ({"trigger": "a.b", "data.n": [{"numeric": [">", 1]}]}, {"data.n": [{"exists": True}]}),
    ({"data.n": 5}, {"data.n": [{"numeric": [">", 1, "<", 10]}]}),
    ({"data.status": "Active"}, {"data.status": [{"anything-but": ["Pending"]}]}),
    ({"source": "connector", "trigger": "a.b"}, {"$or": [{"source": "broker"}, {"source": "connector"}]}),
    ({"data.x": [{"exists": False}]}, {"data.x": [{"exists": False}, "y"]}),
]

#: (later, earlier): `earlier` misses some event `later` matches, or the proof is out of reach
NOT_IMPLIED = [
    ({"trigger": "transport.*"}, {"trigger": "transport.messageReceived"}),
    ({"data.content.@type": "Mail"}, {"data.content.@type": "Request"}),
    ({"data.to": "a"}, {"data.to": "b"}),
    ({}, {"trigger": "transport.**"}),
    ({"data.n": [{"numeric": [">", 1]}]}, {"data.n": [{"numeric": [">", 5]}]}),
    ({"data.status": [{"anything-but": ["Pending"]}]}, {"data.status": "Active"}),
    ({"data.x": [{"exists": False}]}, {"data.x": [{"exists": True}]}),
    ({"trigger": "a.b"}, {"trigger": "a.b", "source": "connector"}),
    ({"$or": [{"trigger": "a.b"}, {"source": "c"}]}, {"trigger": "a.b"}),
]

#: patterns no event can match, with a piece of the reason
CONTRADICTORY = [
    ({"trigger": "a.b", "$or": [{"trigger": "a.c"}, {"trigger": "a.d"}]}, "whichever $or branch"),
    ({"trigger": ["a.b"], "$or": [{"trigger": [{"prefix": "a.c"}]}]}, "the trigger can only be 'a.b'"),
    ({"source": "x", "$or": [{"source": "y"}, {"trigger": "a.b", "source": "z"}]}, "the source can only be 'x'"),
    ({"data.x": [{"exists": False}], "data.x.y": "a"}, "needs a value there"),
    ({"data.x": [{"exists": False}], "data": {"x": ["a"]}}, "needs a value there"),
    ({"data.n": [{"numeric": [">", 10, "<", 5]}]}, "no number passes"),
    ({"data.n": [{"numeric": [">", 5, "<=", 5]}]}, "no number passes"),
    ({"trigger": [{"numeric": [">", 1]}]}, "always a string"),
    ({"trigger": [{"exists": False}]}, "always a string"),
    ({"source": [1, True]}, "always a string"),
]

#: patterns that look contradictory but are not (arrays, closed ranges, `anything-but` of a prefix), each with
#: an event (trigger, data, source) it matches
SATISFIABLE: list[tuple[dict[str, Any], tuple[str, Any, str]]] = [
    ({"data.to": "a", "data": {"to": "b"}}, ("t.t", {"to": ["a", "b"]}, "s")),
    ({"data.n": [{"numeric": [">=", 5, "<=", 5]}]}, ("t.t", {"n": 5}, "s")),
    ({"data.n": [{"numeric": [">", 5]}, {"numeric": ["<", 3]}]}, ("t.t", {"n": 2.5}, "s")),
    ({"trigger": ["a.b", "a.c"], "$or": [{"trigger": [{"prefix": "a.c"}]}]}, ("a.c", None, "s")),
    ({"trigger": [{"anything-but": {"prefix": "a"}}]}, ("t.t", None, "s")),
    ({"data.x": [{"exists": False}, "a"], "data.x.y": "a"}, ("t.t", {"x": ["a", {"y": "a"}]}, "s")),
    ({"data.x.y": [{"exists": False}], "data.x": "a"}, ("t.t", {"x": "a"}, "s")),
    ({"trigger": "t.t", "$or": [{"data.n": 7}, {"data.n": 8}]}, ("t.t", {"n": 8}, "s")),
]


@pytest.mark.parametrize(("later", "earlier"), IMPLIED)
def test_implied_patterns_are_proven_and_true(later: dict[str, Any], earlier: dict[str, Any]) -> None:
    assert implies(parse_match(later), parse_match(earlier))
    # never a false proof: on every event, the later pattern matching means the earlier matches too
    later_match, earlier_match = compile_match(later), compile_match(earlier)
    assert all(earlier_match(e) for e in EVENTS if later_match(e))


@pytest.mark.parametrize(("later", "earlier"), NOT_IMPLIED)
def test_patterns_that_do_not_imply_are_not_claimed(later: dict[str, Any], earlier: dict[str, Any]) -> None:
    assert not implies(parse_match(later), parse_match(earlier))


@pytest.mark.parametrize(("spec", "reason"), CONTRADICTORY)
def test_contradictions_are_found_and_true(spec: dict[str, Any], reason: str) -> None:
    found = contradiction(parse_match(spec))
    assert found is not None and reason in found, found
    assert not any(map(compile_match(spec), EVENTS))


@pytest.mark.parametrize(("spec", "witness"), SATISFIABLE)
def test_satisfiable_patterns_are_not_called_contradictory(spec: dict[str, Any], witness: tuple[str, Any, str]) -> None:
    trigger, data, source = witness
    assert compile_match(spec)(Event(trigger=trigger, data=data, source=source).to_dict()), "the control is wrong"
    assert contradiction(parse_match(spec)) is None


# --- check, as a person runs it ------------------------------------------------------------------------------

DEAD_CONFIG = """
[inputs.connector]
type = "webhook"
listen = "127.0.0.1:8787"
unknown_triggers = "dead-letter"

[outputs.archive]
type = "file"
path = "./var/archive.jsonl"
[outputs.crm]
type = "file"
path = "./var/crm.jsonl"
[outputs.ops]
type = "file"
path = "./var/ops.jsonl"
[outputs.spare]
type = "file"
path = "./var/spare.jsonl"

[[routes]]
name = "all transport"
match = { trigger = "transport.**" }
to = "archive"
stop = true

[[routes]]
name = "mail"
match = { trigger = "transport.messageReceived", "data.content.@type" = "Mail" }
to = "crm"

[[routes]]
name = "typo"
match = { trigger = "consumption.attributeCreatd" }
to = "crm"

[[routes]]
name = "created and deleted"
match = { trigger = "consumption.attributeCreated", "$or" = [{ trigger = "consumption.attributeDeleted" }] }
to = "ops"

[[routes]]
name = "large and small"
match = { "data.size" = [{ numeric = [">", 10, "<", 5] }] }
to = "ops"

[[routes]]
name = "requests"
match = { trigger = "consumption.incomingRequestReceived" }
to = ["archive", "ops"]
"""


def _warnings(stderr: str) -> list[str]:
    return [line.removeprefix("warning: ") for line in stderr.splitlines() if line.startswith("warning: ")]


def test_check_warns_about_each_route_that_can_never_match(tmp_path: Path) -> None:
    config = tmp_path / "router.toml"
    config.write_text(DEAD_CONFIG)
    checked = run_cli("check", "-c", str(config))
    assert checked.returncode == 0, checked.stderr  # warnings, not errors
    warnings = _warnings(checked.stderr)
    assert (
        'router.toml: routes[1]: route "mail" can never match: routes[0] ("all transport") has stop = true and '
        "matches every event this route matches: it always takes them first"
    ) in warnings
    assert (
        'router.toml: routes[2]: route "typo" can never match: no schema knows its trigger '
        "'consumption.attributeCreatd', and every input that can feed it dead-letters unknown triggers before routing "
        '(inputs.connector: unknown_triggers = "dead-letter")'
    ) in warnings
    assert (
        'router.toml: routes[3]: route "created and deleted" can never match: the trigger can only be '
        "'consumption.attributeCreated' (match.trigger), which match.$or[0].trigger refuses"
    ) in warnings
    assert (
        'router.toml: routes[4]: route "large and small" can never match: match.data.size = '
        '[{ numeric = [">", 10, "<", 5] }]: no number passes'
    ) in warnings
    # an output no route names (the loader's warning), and one only dead routes name
    assert (
        "router.toml: outputs.spare: no route sends to this output: it receives nothing (add it to a route's `to`, "
        "or remove it)"
    ) in warnings
    assert (
        'router.toml: outputs.crm: only routes that can never match send to this output (routes[1] ("mail"), '
        'routes[2] ("typo")): it receives nothing'
    ) in warnings
    # the route that can match, and the outputs it feeds, are not warned about
    assert not any("requests" in w or "outputs.ops" in w or "outputs.archive" in w for w in warnings), warnings
    # --json carries the same warnings
    as_json = run_cli("check", "-c", str(config), "--json")
    assert as_json.returncode == 0
    assert '"typo\\" can never match' in as_json.stdout


def test_an_unknown_trigger_is_not_dead_while_an_input_accepts_it(tmp_path: Path) -> None:
    """With unknown_triggers = "accept" (the default) an event of that trigger is routed all the same: only
    the typo warning, not "can never match"."""
    config = tmp_path / "router.toml"
    config.write_text(
        '[inputs.connector]\ntype = "webhook"\nlisten = "127.0.0.1:8787"\n'
        '[inputs.strict]\ntype = "webhook"\nlisten = "127.0.0.1:8788"\nunknown_triggers = "dead-letter"\n'
        '[outputs.archive]\ntype = "file"\npath = "./var/a.jsonl"\n'
        '[[routes]]\nname = "typo"\nmatch = { trigger = "consumption.attributeCreatd" }\nto = "archive"\n'
        '[[routes]]\nname = "typo, strict only"\n'
        'match = { trigger = "consumption.attributeCreatd", source = "strict" }\nto = "archive"\n'
    )
    checked = run_cli("check", "-c", str(config))
    assert checked.returncode == 0, checked.stderr
    warnings = _warnings(checked.stderr)
    assert any(
        "routes[0].match.trigger: no schema knows the trigger 'consumption.attributeCreatd'" in w for w in warnings
    )
    assert not any('route "typo" can never match' in w for w in warnings), warnings
    # fed only by the input that dead-letters them: dead
    assert any('route "typo, strict only" can never match' in w and "(inputs.strict:" in w for w in warnings), warnings


def test_the_shipped_router_toml_has_no_warning(tmp_path: Path) -> None:
    config = tmp_path / "router.toml"
    shutil.copy(ROOT / "router.toml", config)
    checked = run_cli("check", "-c", str(config), "--no-secrets")
    assert checked.returncode == 0, checked.stderr
    assert _warnings(checked.stderr) == []


def _doc_configs() -> list[tuple[str, int, dict[str, Any]]]:
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for number, block in enumerate(re.findall(r"```toml\n(.*?)```", doc.read_text(), flags=re.DOTALL)):
            # every block parses (tests/test_doc_toml.py): skipping one that did not hid an invalid example
            document = tomllib.loads(block)
            if document.get("routes"):
                found.append((doc.name, number, document))
    return found


def test_the_docs_routes_never_contradict_or_shadow_each_other() -> None:
    """Every route shown in README and docs/ can match, and none is hidden by an earlier one with
    `stop = true` in the same example."""
    configs = _doc_configs()
    assert len(configs) >= 10
    for doc, number, document in configs:
        routes = document["routes"]
        patterns = [parse_match(route.get("match", {})) for route in routes]
        for index, (route, pattern) in enumerate(zip(routes, patterns, strict=True)):
            where = f"{doc} toml block {number}, route {route['name']!r}"
            assert contradiction(pattern) is None, where
            for earlier, earlier_pattern in zip(routes[:index], patterns[:index], strict=True):
                assert not (earlier.get("stop") and implies(pattern, earlier_pattern)), (
                    f"{where} after {earlier['name']!r}"
                )
