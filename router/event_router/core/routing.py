"""The route language: `match` patterns (modelled on AWS EventBridge event patterns) and `reshape` specs.

Both come from router.toml and are compiled once, when the config is loaded, into plain closures: routes
run for every event, so all checking (and every error, as a `PatternError` with the exact key path) happens
at compile time and evaluation is a few dict lookups and set probes. Nothing is ever eval'd: event data
and patterns are data. The pattern language is what TOML can express (no null); see docs/routing.md.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from event_router.api import event as event_module
from event_router.api.errors import closest
from event_router.api.templates import (
    MISSING,
    OPEN,
    Template,
    TemplateError,
    compile_template,
    get_path,
    split_path,
)

__all__ = [
    "EVENT_FIELDS",
    "Alternatives",
    "Condition",
    "Matcher",
    "Miss",
    "Pattern",
    "PatternError",
    "as_toml",
    "compile_match",
    "compile_ordering_key",
    "compile_reshape",
    "compile_source_filter",
    "compile_trigger_filter",
    "explain_match",
    "parse_match",
    "render_ordering_key",
    "trigger_glob_problem",
    "trigger_matches",
    "unknown_triggers",
    "value_at",
]

#: takes `Event.to_dict()`
Matcher = Callable[[Mapping[str, Any]], bool]
#: one value found in the event (never an array: arrays are looked into)
_Predicate = Callable[[Any], bool]
_Reshaper = Callable[[Mapping[str, Any]], Any]

#: the top-level keys of `Event.to_dict()`: every path must start with one, so typos fail at load time
EVENT_FIELDS: Final = event_module.EVENT_FIELDS
_STRING_OPERATORS: Final = ("equals-ignore-case", "prefix", "suffix", "wildcard")
OPERATORS: Final = tuple(sorted((*_STRING_OPERATORS, "anything-but", "exists", "numeric")))
_COMPARISONS: Final[Mapping[str, Callable[[Any, Any], bool]]] = {
    "=": operator.eq,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_NUMBER: Final = (int, float)  # a tuple: isinstance() with it is faster than with int | float


class PatternError(ValueError):
    """A `match` or `reshape` spec is wrong. `path` is where, relative to the spec (`"$or[1].data.peer"`)."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


@dataclass(frozen=True, slots=True)
class Condition:
    """One field's conditions in a `match` pattern (a list of them is one condition: any may hold)."""

    #: where it is written, relative to the pattern (`"data.content.@type"`, `"$or[1].trigger"`)
    where: str
    #: the event field it looks at (a dotted key and nested tables give the same path)
    path: tuple[str, ...]
    #: the condition as written: a scalar, an operator table, or a list of them
    spec: Any
    #: whether an event (`Event.to_dict()`) passes it: the very test the route's matcher runs
    test: Matcher


@dataclass(frozen=True, slots=True)
class Alternatives:
    """A `$or`: the pattern holds where any branch does."""

    where: str
    branches: tuple[Pattern, ...]


@dataclass(frozen=True, slots=True)
class Pattern:
    """A compiled `match` table: all its parts must hold (an empty one holds for every event)."""

    parts: tuple[Condition | Alternatives, ...]

    @property
    def conditions(self) -> tuple[Condition, ...]:
        return tuple(p for p in self.parts if isinstance(p, Condition))

    @property
    def alternatives(self) -> tuple[Alternatives, ...]:
        return tuple(p for p in self.parts if isinstance(p, Alternatives))


# --- trigger globs ------------------------------------------------------------------------------------


def trigger_matches(pattern: str, trigger: str) -> bool:
    """EventEmitter2 wildcards, as the Connector uses them for webhook triggers.

    Segments are split on `.`; `*` is exactly one segment, `**` any number of segments (zero or more), any
    other segment is literal (`transport.message*` matches only itself).
    """
    return _segments_match(pattern.split("."), trigger.split("."))


def _segments_match(pattern: Sequence[str], segments: Sequence[str]) -> bool:
    # The classic linear-time wildcard algorithm with `**` in the role of `*` and `*` in that of `?`:
    # on a mismatch, let the last `**` swallow one more segment and retry from there. No regex, so a
    # pattern with many `**` cannot backtrack exponentially on a long trigger.
    p = s = 0
    star, resume = -1, 0
    while s < len(segments):
        if p < len(pattern) and pattern[p] == "**":
            star, resume = p, s
            p += 1
        elif p < len(pattern) and (pattern[p] == "*" or pattern[p] == segments[s]):
            p += 1
            s += 1
        elif star >= 0:
            resume += 1
            p, s = star + 1, resume
        else:
            return False
    while p < len(pattern) and pattern[p] == "**":
        p += 1
    return p == len(pattern)


def trigger_glob_problem(pattern: str) -> str | None:
    """Why `pattern` is no trigger glob (`trigger_matches`), or None: `*` and `**` are whole segments only.
    Also what `event-router replay --match` checks its pattern with."""
    if not pattern.strip():
        return "the pattern is empty (every trigger: '**')"
    if any("*" in segment and segment not in ("*", "**") for segment in pattern.split(".")):
        return f"{pattern!r}: '*' and '**' must be whole segments between dots (e.g. 'transport.*')"
    return None


def _check_glob(pattern: str, where: str) -> None:
    if "*" in pattern and (problem := trigger_glob_problem(pattern)) is not None:
        raise PatternError(where, f"{problem}; for other patterns use [{{ prefix = ... }}] or [{{ wildcard = ... }}]")


def _glob_predicate(segments: tuple[str, ...]) -> _Predicate:
    if all(s == "**" for s in segments):
        return lambda v: isinstance(v, str)
    return lambda v: isinstance(v, str) and _segments_match(segments, v.split("."))


# --- match: compile ---------------------------------------------------------------------------------


def compile_match(spec: Mapping[str, Any]) -> Matcher:
    """Compile a route's `match` table into a function of `Event.to_dict()`; an empty table matches all."""
    pattern = parse_match(spec)
    return _matcher(pattern) if pattern.parts else _always


def compile_trigger_filter(spec: Mapping[str, Any]) -> Callable[[str], bool] | None:
    """The pattern's top-level `trigger` condition alone, as a test of a trigger; None when it has none.

    Lets the router decide once per distinct trigger which routes can match at all, instead of evaluating
    every route for every event. `compile_match` must have accepted `spec` already.
    """
    if not isinstance(spec, Mapping) or "trigger" not in spec or isinstance(spec["trigger"], Mapping):
        return None
    matcher = _compile_field(("trigger",), spec["trigger"], "trigger")
    return lambda trigger: matcher({"trigger": trigger})


def compile_source_filter(spec: Mapping[str, Any]) -> Callable[[str], bool] | None:
    """The pattern's top-level `source` condition alone, as a test of an input's name; None when it has none.

    Tells `check` which inputs can feed a route (a `source` inside `$or` is not looked into: those inputs
    all count). `compile_match` must have accepted `spec` already.
    """
    if not isinstance(spec, Mapping) or "source" not in spec or isinstance(spec["source"], Mapping):
        return None
    matcher = _compile_field(("source",), spec["source"], "source")
    return lambda source: matcher({"source": source})


def _always(event: Mapping[str, Any]) -> bool:
    return True


#: triggers in this namespace are the router's own events (an action's result): no schema describes them
ROUTER_NAMESPACE: Final = "router."


def unknown_triggers(spec: Mapping[str, Any], known: Sequence[str], is_known: Callable[[str], bool]) -> list[str]:
    """What `check` warns about a compiled `match` pattern: each trigger named in it (exactly: no glob, no
    operator; at the top or in `$or` branches) that no schema knows. Usually a typo: such a condition never
    matches what the Connector sends. `known`: the schemas' triggers, for "did you mean"."""
    found: list[str] = []

    def walk(table: Mapping[str, Any], where: str) -> None:
        value = table.get("trigger")
        conditions = value if isinstance(value, list) else [value]
        for index, name in enumerate(conditions):
            if not isinstance(name, str) or "*" in name or name.startswith(ROUTER_NAMESPACE) or is_known(name):
                continue
            at = _join(where, "trigger") + (f"[{index}]" if isinstance(value, list) else "")
            # not "never matches": with unknown_triggers = "accept" such an event is routed all the same
            guess = closest(name, known)
            found.append(
                f"{at}: no schema knows the trigger {name!r}: "
                + (f"a typo? did you mean {guess!r}?" if guess else "is it a typo?")
            )
        branches = table.get("$or")
        for index, branch in enumerate(branches if isinstance(branches, list) else []):
            if isinstance(branch, Mapping):
                walk(branch, f"{_join(where, '$or')}[{index}]")

    walk(spec, "")
    return found


def pattern_matches_no_known_trigger(pattern: str, known: Sequence[str], is_known: Callable[[str], bool]) -> str | None:
    """What an operator command (`tap --trigger`, `dlq --trigger`) warns about a trigger glob that matches no
    trigger a schema knows, with a guess for a typo; None when it matches one (or is the router's own, or
    empty: refused elsewhere). A warning, not a refusal: events of triggers without a schema exist
    (`unknown_triggers = "accept"`). `known`: the schemas' triggers (globs among them, matched as written)."""
    if not pattern.strip() or pattern.startswith(ROUTER_NAMESPACE) or is_known(pattern):
        return None
    if any(trigger_matches(pattern, trigger) for trigger in known):
        return None
    guess = closest(pattern, known)
    said = (
        f"no schema knows the trigger {pattern!r}"
        if "*" not in pattern
        else f"{pattern!r} matches no trigger a schema knows"
    )
    return said + (f"; did you mean {guess!r}?" if guess else "")


def parse_match(spec: Mapping[str, Any]) -> Pattern:
    """A route's `match` table as its conditions, in the order written, each compiled: what `compile_match`
    builds its matcher from, and what `explain_match` and `check`'s reasoning about routes read."""
    if not isinstance(spec, Mapping):
        raise PatternError("", f"a match pattern must be a table, got {_kind(spec)}")
    return _parse(spec, "", ())


def _parse(table: Mapping[Any, Any], where: str, base: tuple[str, ...]) -> Pattern:
    parts: list[Condition | Alternatives] = []
    _collect(table, where, base, parts)
    return Pattern(tuple(parts))


def _collect(
    table: Mapping[Any, Any], where: str, base: tuple[str, ...], parts: list[Condition | Alternatives]
) -> None:
    for key, value in table.items():
        if not isinstance(key, str):
            raise PatternError(where, f"key {key!r} is not a string")
        here = _join(where, key)
        if key == "$or":
            parts.append(_parse_or(value, here, base))
            continue
        if key.startswith("$"):
            raise PatternError(here, f"unknown special key {key!r} (the only one is '$or')")
        if key in OPERATORS:
            # A bare `status = { prefix = "P" }` would otherwise silently mean the field `status.prefix`.
            raise PatternError(
                here,
                f"{key!r} is an operator: put its table in a list (field = [{{ {key} = ... }}]); "
                f"to match an event field named {key!r}, use a dotted key",
            )
        path = base + _field_path(key, here, top=not base)
        if isinstance(value, Mapping):
            if not value:
                raise PatternError(here, "empty table: give at least one field to match")
            _collect(value, here, path, parts)
        else:
            parts.append(Condition(here, path, value, _compile_field(path, value, here)))


def _parse_or(value: Any, where: str, base: tuple[str, ...]) -> Alternatives:
    if not isinstance(value, list) or not value:
        raise PatternError(where, f"must be a non-empty list of tables ($or = [{{...}}, {{...}}]), got {_kind(value)}")
    branches: list[Pattern] = []
    for index, branch in enumerate(value):
        at = f"{where}[{index}]"
        if not isinstance(branch, Mapping):
            raise PatternError(at, f"must be a table (a pattern), got {_kind(branch)}")
        if not branch:
            raise PatternError(at, "empty pattern: it would match every event")
        branches.append(_parse(branch, at, base))
    return Alternatives(where, tuple(branches))


def _matcher(pattern: Pattern) -> Matcher:
    """AND of every condition (and `$or`) of `pattern`."""
    checks: list[tuple[tuple[int, int], Matcher]] = []
    for part in pattern.parts:
        if isinstance(part, Condition):
            order = (0, 0) if part.path == ("trigger",) else (1, len(part.path))
            checks.append((order, part.test))
        else:
            checks.append(((2, 0), _any_branch(part)))
    # Evaluation order does not change the result (no side effects), only the speed: the trigger decides
    # most events, so it goes first, then short paths, `$or` last.
    checks.sort(key=lambda item: item[0])
    matchers = tuple(m for _, m in checks)
    if len(matchers) == 1:
        return matchers[0]

    def match_all(event: Mapping[str, Any]) -> bool:
        for matcher in matchers:  # noqa: SIM110 (a loop: all() over a generator is slower per event)
            if not matcher(event):
                return False
        return True

    return match_all


def _any_branch(alternatives: Alternatives) -> Matcher:
    options = tuple(_matcher(branch) for branch in alternatives.branches)

    def match_any(event: Mapping[str, Any]) -> bool:
        for branch in options:  # noqa: SIM110 (faster than any() over a generator)
            if branch(event):
                return True
        return False

    return match_any


def _compile_field(path: tuple[str, ...], value: Any, where: str) -> Matcher:
    """One field's conditions (OR): equality scalars, operator tables, `exists`."""
    if isinstance(value, list):
        if not value:
            raise PatternError(where, "empty list: give at least one condition")
        conditions = [(item, f"{where}[{index}]") for index, item in enumerate(value)]
    else:
        conditions = [(value, where)]  # a bare scalar is a one-element list
    is_trigger = path == ("trigger",)
    scalars: list[str | int | float | bool] = []
    predicates: list[_Predicate] = []
    if_missing = if_present = False
    for condition, at in conditions:
        if isinstance(condition, Mapping):
            compiled = _compile_operator(condition, at, is_trigger)
            if compiled is True:
                if_present = True
            elif compiled is False:
                if_missing = True
            else:
                predicates.append(compiled)
        else:
            scalars.append(_scalar(condition, at, is_trigger))
    if scalars:
        predicates.insert(0, _equality(scalars, is_trigger))
    return _field_matcher(path, _any_of(predicates), if_missing=if_missing, if_present=if_present)


def _scalar(value: Any, where: str, is_trigger: bool) -> str | int | float | bool:
    if isinstance(value, list):
        raise PatternError(where, "a list inside a condition list: conditions are scalars or operator tables")
    if not isinstance(value, str | int | float | bool):
        raise PatternError(
            where,
            f"unsupported value {_kind(value)}: a condition is a string, number, boolean or operator table"
            + (" (quote dates as strings)" if hasattr(value, "isoformat") else ""),
        )
    scalar: str | int | float | bool = value
    if is_trigger and isinstance(scalar, str) and "*" in scalar:
        _check_glob(scalar, where)
    return scalar


def _compile_operator(table: Mapping[Any, Any], where: str, is_trigger: bool) -> _Predicate | bool:
    """An operator table: a predicate, or a bool for `exists` (which is about the path, not a value)."""
    if len(table) != 1:
        allowed = ", ".join(OPERATORS)
        if not table:
            raise PatternError(where, f"empty operator table (operators: {allowed})")
        names = ", ".join(map(repr, table))
        raise PatternError(
            where,
            f"an operator table has exactly one key, got {len(table)} ({names}): "
            "write each condition as its own table in the list",
        )
    ((name, operand),) = table.items()
    if name not in OPERATORS:
        raise PatternError(where, f"unknown operator {name!r} (operators: {', '.join(OPERATORS)})")
    here = f"{where}.{name}"
    if name == "exists":
        if not isinstance(operand, bool):
            raise PatternError(here, f"must be true or false, got {_kind(operand)}")
        return operand
    if name == "numeric":
        return _numeric(operand, here)
    if name == "anything-but":
        return _anything_but(operand, here, is_trigger)
    return _string_operator(name, operand, here)


def _string_operator(name: str, operand: Any, where: str) -> _Predicate:
    if not isinstance(operand, str):
        raise PatternError(where, f"must be a string, got {_kind(operand)}")
    if name == "prefix":
        return lambda v: isinstance(v, str) and v.startswith(operand)
    if name == "suffix":
        return lambda v: isinstance(v, str) and v.endswith(operand)
    if name == "equals-ignore-case":
        folded = operand.casefold()
        return lambda v: isinstance(v, str) and v.casefold() == folded
    return _wildcard(operand)


def _wildcard(pattern: str) -> _Predicate:
    # `*` is any run of characters, everything else literal. Matched with str.find rather than a regex:
    # leftmost-first placement of each middle part is correct for `*`-only globs and cannot backtrack.
    parts = pattern.split("*")
    if len(parts) == 1:
        return lambda v: isinstance(v, str) and v == pattern
    head, middle, tail = parts[0], tuple(p for p in parts[1:-1] if p), parts[-1]
    fixed = len(head) + len(tail)

    def wildcard(v: Any) -> bool:
        if not isinstance(v, str) or len(v) < fixed or not v.startswith(head) or not v.endswith(tail):
            return False
        position, end = len(head), len(v) - len(tail)
        for part in middle:
            found = v.find(part, position, end)
            if found < 0:
                return False
            position = found + len(part)
        return True

    return wildcard


def _anything_but(operand: Any, where: str, is_trigger: bool) -> _Predicate:
    if isinstance(operand, Mapping):
        if len(operand) != 1 or next(iter(operand)) not in _STRING_OPERATORS:
            got = ", ".join(map(repr, operand)) or "none"
            raise PatternError(
                where, f"a table here has exactly one key, one of: {', '.join(_STRING_OPERATORS)} (got {got})"
            )
        ((name, inner_operand),) = operand.items()
        inner = _string_operator(name, inner_operand, f"{where}.{name}")
    else:
        if isinstance(operand, list):
            if not operand:
                raise PatternError(where, "empty list: give at least one value")
            values = [_scalar(item, f"{where}[{index}]", is_trigger) for index, item in enumerate(operand)]
        else:
            values = [_scalar(operand, where, is_trigger)]
        inner = _equality(values, is_trigger)
    return lambda v: not inner(v)


def _numeric(operand: Any, where: str) -> _Predicate:
    if not isinstance(operand, list) or len(operand) not in (2, 4):
        raise PatternError(
            where,
            "must be one or two comparisons like ['>', 0, '<=', 5], got "
            + (f"{operand!r}" if isinstance(operand, list) else _kind(operand)),
        )
    comparisons: list[tuple[Callable[[Any, Any], bool], int | float]] = []
    for index in range(0, len(operand), 2):
        name, number = operand[index], operand[index + 1]
        if not isinstance(name, str) or name not in _COMPARISONS:
            raise PatternError(f"{where}[{index}]", f"unknown comparison {name!r} (one of: {', '.join(_COMPARISONS)})")
        if isinstance(number, bool) or not isinstance(number, _NUMBER) or math.isnan(number):
            raise PatternError(f"{where}[{index + 1}]", f"must be a number, got {_kind(number)}")
        comparisons.append((_COMPARISONS[name], number))
    if len(comparisons) == 1:
        ((compare, bound),) = comparisons
        return lambda v: isinstance(v, _NUMBER) and not isinstance(v, bool) and compare(v, bound)
    (first, low), (second, high) = comparisons
    return lambda v: isinstance(v, _NUMBER) and not isinstance(v, bool) and first(v, low) and second(v, high)


def _equality(values: Sequence[str | int | float | bool], is_trigger: bool) -> _Predicate:
    """Exact equality with any of `values` by set lookup, typed so that `true` never equals `1`."""
    strings: set[str] = set()
    numbers: set[int | float] = set()
    booleans: set[bool] = set()
    predicates: list[_Predicate] = []
    for value in values:
        if isinstance(value, bool):
            booleans.add(value)
        elif isinstance(value, str):
            if is_trigger and "*" in value:
                predicates.append(_glob_predicate(tuple(value.split("."))))
            else:
                strings.add(value)
        else:
            numbers.add(value)  # 1 and 1.0 are the same JSON number
    if booleans:
        predicates.insert(0, lambda v: isinstance(v, bool) and v in booleans)
    if numbers:
        predicates.insert(0, lambda v: isinstance(v, _NUMBER) and not isinstance(v, bool) and v in numbers)
    if strings:
        predicates.insert(0, lambda v: isinstance(v, str) and v in strings)
    return _any_of(predicates)


def _any_of(predicates: Sequence[_Predicate]) -> _Predicate:
    if not predicates:
        return lambda v: False
    if len(predicates) == 1:
        return predicates[0]
    options = tuple(predicates)

    def any_of(v: Any) -> bool:
        for predicate in options:  # noqa: SIM110 (faster than any() over a generator)
            if predicate(v):
                return True
        return False

    return any_of


# --- match: evaluate ----------------------------------------------------------------------------------


def _field_matcher(path: tuple[str, ...], predicate: _Predicate, *, if_missing: bool, if_present: bool) -> Matcher:
    """Look `path` up and test what is there: missing → `if_missing`; else `if_present` or any value matches."""

    def test(values: list[Any]) -> bool:
        if not values:
            return if_missing
        if if_present:
            return True
        for value in values:  # noqa: SIM110 (faster than any() over a generator)
            if predicate(value):
                return True
        return False

    def match(event: Mapping[str, Any]) -> bool:
        # Fast path: plain dicts all the way down, which is what most paths in JSON events are.
        node: Any = event
        for segment in path:
            if type(node) is not dict:
                return test(_values(event, path))
            node = node.get(segment, MISSING)
            if node is MISSING:
                return if_missing
        if isinstance(node, list | tuple):
            return test(_flatten(node))
        return if_present or predicate(node)

    return match


def _values(root: Any, path: tuple[str, ...]) -> list[Any]:
    """Everything at `path`, looking into every element of the arrays met on the way and at the end."""
    nodes = [root]
    for segment in path:
        found: list[Any] = []
        for node in nodes:
            if type(node) is dict or isinstance(node, Mapping):
                value = node.get(segment, MISSING)
                if isinstance(value, list | tuple):
                    found.extend(_flatten(value))
                elif value is not MISSING:
                    found.append(value)
        nodes = found
    return nodes


def _flatten(items: Sequence[Any]) -> list[Any]:
    """The elements of an array, with arrays nested in it expanded."""
    out: list[Any] = []
    # Iterative, not recursive: the nesting depth comes from the event and is untrusted.
    stack = [iter(items)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list | tuple):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


# --- match: explain -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Miss:
    """Why a pattern does not match an event: the first condition (as written) that fails, and what the
    event has there; for a `$or`, why each branch fails."""

    where: str
    #: the condition as written (None for a `$or`)
    spec: Any = None
    #: what the event has at the condition's path (`MISSING` when nothing): see `value_at`
    seen: Any = MISSING
    branches: tuple[Miss, ...] = ()


def explain_match(pattern: Pattern, event: Mapping[str, Any]) -> Miss | None:
    """None when `pattern` matches `event` (`Event.to_dict()`), else the first part, in the order written,
    that fails. Each part is tested with the same compiled test as the route's matcher, so this agrees
    with it; only the order differs (the matcher tests the trigger first)."""
    for part in pattern.parts:
        if isinstance(part, Condition):
            if not part.test(event):
                return Miss(part.where, part.spec, value_at(event, part.path))
            continue
        misses = []
        for branch in part.branches:
            miss = explain_match(branch, event)
            if miss is None:
                break
            misses.append(miss)
        else:
            return Miss(part.where, branches=tuple(misses))
    return None


def value_at(event: Mapping[str, Any], path: Sequence[str]) -> Any:
    """What a match condition on `path` looks at: the value there (an array as it is), `MISSING` when
    absent; when the path goes through arrays, the list of everything found in their elements."""
    node: Any = event
    for segment in path:
        if not isinstance(node, Mapping):
            found = _values(event, tuple(path))
            return found if found else MISSING
        node = node.get(segment, MISSING)
        if node is MISSING:
            return MISSING
    return node


# --- reshape --------------------------------------------------------------------------------------------


def compile_reshape(spec: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """Compile a route's `reshape` table into a function building the payload from `Event.to_dict()`.

    Values: a field path (copied as is, null when missing), a string with `{{ ... }}` (rendered, missing
    fields as ""), `{ const = ... }` (that literal), a table (reshaped recursively), a list (each element),
    a number or boolean (itself).
    """
    if not isinstance(spec, Mapping):
        raise PatternError("", f"reshape must be a table, got {_kind(spec)}")
    if not spec:
        raise PatternError("", "empty reshape: give at least one key (or drop reshape to send the event as is)")
    return _reshape_table(spec, "")


def _reshape_table(table: Mapping[Any, Any], where: str) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    items: list[tuple[str, _Reshaper]] = []
    for key, value in table.items():
        if not isinstance(key, str):
            raise PatternError(where, f"key {key!r} is not a string")
        items.append((key, _reshape_value(value, _join(where, key))))
    entries = tuple(items)
    return lambda event: {key: build(event) for key, build in entries}


def _reshape_value(value: Any, where: str) -> _Reshaper:
    if isinstance(value, str):
        if OPEN in value:
            try:
                template = compile_template(value, allowed_roots=EVENT_FIELDS)
            except TemplateError as exc:
                raise PatternError(where, str(exc)) from None
            return lambda event: template.render(event, strict=False)
        path = _field_path(value, where, top=True, hint="; for literal text write { const = ... }")

        def copy_field(event: Mapping[str, Any]) -> Any:
            found = get_path(event, path)
            return None if found is MISSING else found

        return copy_field
    if isinstance(value, bool | int | float):
        return lambda event: value
    if isinstance(value, Mapping):
        if "const" in value:
            if len(value) != 1:
                others = ", ".join(repr(k) for k in value if k != "const")
                raise PatternError(where, f"a table with 'const' has no other key (also got {others})")
            literal = value["const"]
            _check_json(literal, f"{where}.const")
            if isinstance(literal, list | dict):  # a fresh copy per event: the payload may be changed downstream
                return lambda event: copy.deepcopy(literal)
            return lambda event: literal
        return _reshape_table(value, where)
    if isinstance(value, list):
        builders = tuple(_reshape_value(item, f"{where}[{index}]") for index, item in enumerate(value))
        return lambda event: [build(event) for build in builders]
    raise PatternError(where, f"unsupported value {_kind(value)} (use a string, number, boolean, table or list)")


def _check_json(value: Any, where: str) -> None:
    if isinstance(value, str | int | float | bool):
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_json(item, f"{where}[{index}]")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise PatternError(where, f"key {key!r} is not a string")
            _check_json(item, _join(where, key))
    else:
        raise PatternError(where, f"unsupported value {_kind(value)} (a JSON value is needed; quote dates)")


# --- ordering keys --------------------------------------------------------------------------------------

#: rendered ordering keys longer than this are kept as a digest of themselves: a key is only compared with
#: others, and the spool indexes it
MAX_ORDERING_KEY = 200


def compile_ordering_key(text: Any) -> Template:
    """Compile an `ordering_key` (a template over the event, `"{{ data.peer }}"`); `PatternError` when it is
    none, or when it has no field but reads like a path (`"data.peer"`: every delivery would share that one
    key). A constant with no field is allowed: one key for everything, delivered one at a time in order."""
    if not isinstance(text, str) or not text:
        raise PatternError("", f"must be a template string like '{{{{ data.peer }}}}', got {_kind(text)}")
    try:
        template = compile_template(text, allowed_roots=EVENT_FIELDS)
    except TemplateError as exc:
        raise PatternError("", str(exc)) from None
    if not template.fields and text.split(".")[0] in EVENT_FIELDS:
        raise PatternError(
            "",
            f"{text!r} has no {{{{ field }}}}: every delivery would have this same key and wait for the one "
            f"before; to order by the field, write '{{{{ {text} }}}}'",
        )
    return template


def render_ordering_key(template: Template, event: Mapping[str, Any]) -> str:
    """An event's ordering key: the template rendered strictly (`MissingValueError` when a field it names is
    missing, null or not a scalar), a long one as its digest (MAX_ORDERING_KEY)."""
    key = template.render(event)
    if len(key) > MAX_ORDERING_KEY:
        return "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    return key


# --- shared ---------------------------------------------------------------------------------------------


def _field_path(text: str, where: str, *, top: bool, hint: str = "") -> tuple[str, ...]:
    """A dotted path as segments; at the top of the event, its first segment must be an event field."""
    try:
        segments = split_path(text)
    except ValueError as exc:
        raise PatternError(where, str(exc)) from None
    if top and segments[0] not in EVENT_FIELDS:
        raise PatternError(
            where,
            f"unknown field {segments[0]!r}: paths start with one of {', '.join(EVENT_FIELDS)} (e.g. 'data.status')"
            + hint,
        )
    return segments


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def as_toml(value: Any) -> str:
    """A condition (or any JSON value) as TOML inline syntax, as router.toml has it: `[{ prefix = "a" }]`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _quoted(value)
    if isinstance(value, Mapping):
        items = ", ".join(f"{_toml_key(str(k))} = {as_toml(v)}" for k, v in value.items())
        return f"{{ {items} }}" if items else "{}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(as_toml(v) for v in value) + "]"
    if value is None:
        return "null"  # not TOML, which has no null: JSON's word, for a value found in an event
    return repr(value)


def _quoted(text: str) -> str:
    # JSON's escapes are TOML's (\", \\, \n, \uXXXX...), and so is its quoting
    return json.dumps(text, ensure_ascii=False)


def _toml_key(key: str) -> str:
    return key if key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key) else _quoted(key)


def _kind(value: Any) -> str:
    """A value's TOML type for error messages, with the value itself when it is short."""
    kinds = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", Mapping: "table"}
    kind = next((name for t, name in kinds.items() if isinstance(value, t)), type(value).__name__)
    if isinstance(value, bool | int | float | str) and len(repr(value)) <= 40:
        return f"{kind} {value!r}"
    return kind
