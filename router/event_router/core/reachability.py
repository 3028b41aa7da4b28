"""Routes that can never match, proven from the configuration alone (`event-router check` warns about them).

Three ways a route is dead: an earlier `stop = true` route matches every event it would match (so that one
always wins); its triggers are ones no schema knows while every input that can feed it dead-letters unknown
triggers before routing; or its own conditions contradict each other. Each reason here is a proof, never a
guess: where the reasoning is not sure (an operator it cannot compare, a value that may be an array), it
says nothing. Conditions are compared with the route's own compiled tests (`routing.Condition.test`), so
the proof follows the match language's rules rather than a second reading of them.

Arrays are why most contradictions cannot be proven: `"data.to" = "a"` and (nested) `data = { to = "b" }`
both hold for `["a", "b"]`. Only the fields the router itself sets (`trigger`, `source`, `id`,
`received_at`: always one string) have exactly one value, so only there do two sets of values exclude
each other.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from event_router.core.model import RouteConfig, RouterConfig
from event_router.core.routing import (
    ROUTER_NAMESPACE,
    Condition,
    Pattern,
    as_toml,
    compile_source_filter,
    parse_match,
)

__all__ = ["ALWAYS_STRINGS", "DeadRoute", "contradiction", "dead_routes", "implies", "outputs_fed_only_by"]

#: event fields the router sets on every event, always to one string
ALWAYS_STRINGS: Final = frozenset({("trigger",), ("source",), ("id",), ("received_at",)})
#: a pattern's `$or`s multiplied out into more AND-ed alternatives than this is not looked into
MAX_ALTERNATIVES: Final = 64
#: the order of a numeric bound, to compare open and closed ends of intervals
_BOUNDS: Final[Mapping[str, tuple[int, int]]] = {">": (1, 1), ">=": (1, 0), "<": (-1, 1), "<=": (-1, 0)}


@dataclass(frozen=True, slots=True)
class DeadRoute:
    """A route that can never match, and why (a sentence that names the keys it rests on)."""

    route: RouteConfig
    reason: str


def dead_routes(config: RouterConfig, is_known: Callable[[str], bool]) -> list[DeadRoute]:
    """Every route of `config` that can never match, in file order, each with its first proven reason.
    `is_known`: whether some schema knows a trigger."""
    found: list[DeadRoute] = []
    patterns = [parse_match(route.match) for route in config.routes]
    # `implies` tries the ways through both patterns' `$or`s: past MAX_ALTERNATIVES it would take too long
    small = [_ways(pattern) <= MAX_ALTERNATIVES for pattern in patterns]
    for index, (route, pattern) in enumerate(zip(config.routes, patterns, strict=True)):
        reason = contradiction(pattern)
        if reason is None:
            reason = _unknown_only(route, pattern, config, is_known)
        if reason is None:
            dead = {d.route.name for d in found}
            for earlier, earlier_pattern, earlier_small in zip(
                config.routes[:index], patterns[:index], small[:index], strict=True
            ):
                # a dead route takes nothing; `implies` is proven for any pattern, so this only keeps the
                # reason to the route that really takes the events
                if not (earlier.stop and small[index] and earlier_small) or earlier.name in dead:
                    continue
                if implies(pattern, earlier_pattern):
                    reason = (
                        f'routes[{earlier.index}] ("{earlier.name}") has stop = true and matches every event this '
                        "route matches: it always takes them first"
                    )
                    break
        if reason is not None:
            found.append(DeadRoute(route, reason))
    return found


# --- an earlier stop = true route ------------------------------------------------------------------------


def implies(later: Pattern, earlier: Pattern) -> bool:
    """Whether every event `later` matches is matched by `earlier` too (proven; False when unsure)."""
    for condition in earlier.conditions:
        if _always_holds(condition):
            continue
        if any(c.path == condition.path and _condition_implies(c, condition) for c in later.conditions):
            continue
        if not _each_branch_implies(later, Pattern((condition,))):
            return False
    for group in earlier.alternatives:
        if any(implies(later, branch) for branch in group.branches):
            continue
        if not _each_branch_implies(later, Pattern((group,))):
            return False
    return True


def _each_branch_implies(later: Pattern, earlier: Pattern) -> bool:
    """Whether some `$or` of `later` is such that each of its branches, with the rest of `later`, implies
    `earlier`: then whichever branch matched, `earlier` holds."""
    for group in later.alternatives:
        rest = tuple(part for part in later.parts if part is not group)
        if all(implies(Pattern(rest + branch.parts), earlier) for branch in group.branches):
            return True
    return False


@dataclass(frozen=True, slots=True)
class _Shape:
    """A condition's alternatives sorted by kind: how it can be reasoned about."""

    if_missing: bool
    if_present: bool
    #: equality values (trigger globs are not among them)
    scalars: tuple[Any, ...]
    #: trigger globs (`transport.*`)
    globs: tuple[str, ...]
    #: operator tables other than `exists`, as written
    operators: tuple[Mapping[str, Any], ...]


def _shape(condition: Condition) -> _Shape:
    items = condition.spec if isinstance(condition.spec, list) else [condition.spec]
    is_trigger = condition.path == ("trigger",)
    if_missing = if_present = False
    scalars: list[Any] = []
    globs: list[str] = []
    operators: list[Mapping[str, Any]] = []
    for item in items:
        if isinstance(item, Mapping):
            if "exists" in item:
                if_present |= item["exists"] is True
                if_missing |= item["exists"] is False
            else:
                operators.append(item)
        elif is_trigger and isinstance(item, str) and "*" in item:
            globs.append(item)
        else:
            scalars.append(item)
    return _Shape(if_missing, if_present, tuple(scalars), tuple(globs), tuple(operators))


def _all_strings(shape: _Shape) -> bool:
    """The condition holds for every string (a trigger glob of only `**`)."""
    return any(all(segment == "**" for segment in glob.split(".")) for glob in shape.globs)


def _always_holds(condition: Condition) -> bool:
    shape = _shape(condition)
    if shape.if_missing and shape.if_present:
        return True
    return condition.path in ALWAYS_STRINGS and (shape.if_present or _all_strings(shape))


def _at(path: Sequence[str], value: Any) -> dict[str, Any]:
    """An event with `value` at `path`, to put one value to a condition's own test."""
    event: Any = value
    for segment in reversed(path):
        event = {segment: event}
    result: dict[str, Any] = event
    return result


def _condition_implies(later: Condition, earlier: Condition) -> bool:
    """Whether `earlier` holds wherever `later` does, both on the same path. `later` holds when some value
    found there passes one of its alternatives; so it suffices that each of its alternatives, for each value
    it passes, makes `earlier` pass the same value."""
    wants, gives = _shape(later), _shape(earlier)
    if wants.if_missing and not gives.if_missing:
        return False
    if wants.if_present and not gives.if_present:
        return False
    if gives.if_present:
        return True  # every alternative of `later` but `exists = false` (checked above) needs a value there
    # an equality value is the only value that passes it: `earlier`'s own test decides for it
    if not all(earlier.test(_at(later.path, value)) for value in wants.scalars):
        return False
    if wants.globs and not _all_strings(gives):
        return all(glob in gives.globs for glob in wants.globs)
    return all(_operator_implies(op, gives) for op in wants.operators)


def _operator_implies(operator: Mapping[str, Any], gives: _Shape) -> bool:
    """Whether every value passing `operator` passes some alternative of `gives` (proven cases only)."""
    if operator in gives.operators:
        return True
    ((name, operand),) = operator.items()
    if name in ("prefix", "suffix", "equals-ignore-case", "wildcard") and _all_strings(gives):
        return True  # these pass strings only
    for other in gives.operators:
        ((other_name, other_operand),) = other.items()
        if name != other_name or not isinstance(operand, str) or not isinstance(other_operand, str):
            continue
        if name == "prefix" and operand.startswith(other_operand):
            return True
        if name == "suffix" and operand.endswith(other_operand):
            return True
        if name == "equals-ignore-case" and operand.casefold() == other_operand.casefold():
            return True
    return False


# --- triggers no schema knows -------------------------------------------------------------------------------


def _unknown_only(
    route: RouteConfig, pattern: Pattern, config: RouterConfig, is_known: Callable[[str], bool]
) -> str | None:
    """Why `route` can never match when it admits only triggers no schema knows and every input that can
    feed it dead-letters such events before any route sees them; None when that is not proven."""
    names = _only_unknown_triggers(pattern, is_known)
    if names is None:
        return None
    admits = compile_source_filter(route.match)
    # an input's events carry its name, or that of the input it covers (gap recovery), but its own policy
    feeding = [
        source for source in config.inputs.values() if admits is None or admits(source.plugin.covers() or source.name)
    ]
    if not feeding or any(source.unknown_triggers != "dead-letter" for source in feeding):
        # (the router's own events, source "router", are all in its namespace: never among `names`)
        return None
    inputs = ", ".join(f"inputs.{source.name}" for source in feeding)
    listed = ", ".join(repr(name) for name in names)
    return (
        f"no schema knows its trigger{'s' if len(names) > 1 else ''} {listed}, and every input that can feed it "
        f'dead-letters unknown triggers before routing ({inputs}: unknown_triggers = "dead-letter")'
    )


def _only_unknown_triggers(pattern: Pattern, is_known: Callable[[str], bool]) -> list[str] | None:
    """The trigger names `pattern` admits, when they are a finite list of names no schema knows (the trigger
    condition, or each branch of a `$or`); None when it may admit another trigger."""
    for condition in pattern.conditions:
        if condition.path != ("trigger",):
            continue
        names = _finite_strings(condition)
        if names is not None and not any(is_known(n) or n.startswith(ROUTER_NAMESPACE) for n in names):
            return names
    for group in pattern.alternatives:
        found: list[str] = []
        for branch in group.branches:
            names = _only_unknown_triggers(branch, is_known)
            if names is None:
                break
            found += [n for n in names if n not in found]
        else:
            return found
    return None


def _finite_strings(condition: Condition) -> list[str] | None:
    """The strings a condition on a one-string field can pass, when it lists them (equality values only,
    no glob, operator or `exists`); None otherwise. Other scalars pass no string: they are left out."""
    shape = _shape(condition)
    if shape.if_missing or shape.if_present or shape.globs or shape.operators:
        return None
    return [value for value in shape.scalars if isinstance(value, str)]


# --- contradictions -----------------------------------------------------------------------------------------


def contradiction(pattern: Pattern) -> str | None:
    """Why no event can pass every condition of `pattern`, or None (none proven). With `$or`, each branch
    (with the conditions beside it) must contradict itself."""
    alternatives = list(itertools.islice(_conjunctions(pattern), MAX_ALTERNATIVES + 1))
    if not alternatives or len(alternatives) > MAX_ALTERNATIVES:
        return None
    reasons: list[str] = []
    for conditions in alternatives:
        reason = _conflict(conditions)
        if reason is None:
            return None
        if reason not in reasons:
            reasons.append(reason)
    if len(alternatives) == 1:
        return reasons[0]
    return "whichever $or branch an event takes, its conditions contradict: " + "; ".join(reasons)


def _ways(pattern: Pattern) -> int:
    """How many ways through its `$or`s `pattern` has, counted up to MAX_ALTERNATIVES + 1."""
    return sum(1 for _ in itertools.islice(_conjunctions(pattern), MAX_ALTERNATIVES + 1))


def _conjunctions(pattern: Pattern) -> Iterator[tuple[Condition, ...]]:
    """`pattern` multiplied out: each way through its `$or`s, as the conditions that must all hold."""
    choices: list[list[tuple[Condition, ...]]] = [[pattern.conditions]]
    for group in pattern.alternatives:
        choices.append(
            [c for branch in group.branches for c in itertools.islice(_conjunctions(branch), MAX_ALTERNATIVES + 1)]
        )
    for combination in itertools.product(*choices):
        yield tuple(itertools.chain.from_iterable(combination))


def _conflict(conditions: Sequence[Condition]) -> str | None:
    """Why `conditions` (all must hold) exclude each other, or None."""
    for condition in conditions:
        reason = _impossible(condition)
        if reason is not None:
            return reason
    for missing in conditions:
        shape = _shape(missing)
        if not shape.if_missing or shape.if_present or shape.scalars or shape.globs or shape.operators:
            continue  # only `exists = false`: the field must be missing
        for present in conditions:
            if present is missing or _shape(present).if_missing:
                continue
            if present.path[: len(missing.path)] == missing.path:
                # a value at the path, or below it, means there is something at the path
                return f"match.{missing.where} = {_written(missing.spec)} and match.{present.where} needs a value there"
    for listed in conditions:
        if listed.path not in ALWAYS_STRINGS:
            continue
        names = _finite_strings(listed)
        if names is None:
            continue
        others = [c for c in conditions if c is not listed and c.path == listed.path]
        if not others:
            continue
        if not any(all(other.test(_at(listed.path, name)) for other in others) for name in names):
            field = ".".join(listed.path)
            where = ", ".join(f"match.{other.where}" for other in others)
            allowed = ", ".join(repr(name) for name in names)
            return f"the {field} can only be {allowed} (match.{listed.where}), which {where} refuses"
    return None


def _impossible(condition: Condition) -> str | None:
    """Why no value passes `condition` alone, or None."""
    shape = _shape(condition)
    if condition.path in ALWAYS_STRINGS:
        if shape.if_present or shape.globs or any(isinstance(v, str) for v in shape.scalars):
            return None
        if any(next(iter(op)) != "numeric" for op in shape.operators):
            return None  # string operators and anything-but can pass a string
        field = ".".join(condition.path)
        written = _written(condition.spec)
        return f"match.{condition.where} = {written}: the {field} is always a string, which this never passes"
    if shape.if_missing or shape.if_present or shape.scalars or shape.globs:
        return None
    if all(next(iter(op)) == "numeric" and not _numeric_possible(op["numeric"]) for op in shape.operators):
        return f"match.{condition.where} = {_written(condition.spec)}: no number passes"
    return None


def _numeric_possible(comparisons: Sequence[Any]) -> bool:
    """Whether some number passes all of `numeric`'s comparisons (`[">", 0, "<=", 5]`)."""
    low, high = (-math.inf, False), (math.inf, False)  # (bound, open)
    for index in range(0, len(comparisons), 2):
        name, number = comparisons[index], float(comparisons[index + 1])
        if name == "=":
            low = max(low, (number, False), key=_lower_key)
            high = min(high, (number, False), key=_upper_key)
            continue
        side, strict = _BOUNDS[name]
        if side > 0:
            low = max(low, (number, bool(strict)), key=_lower_key)
        else:
            high = min(high, (number, bool(strict)), key=_upper_key)
    if low[0] < high[0]:
        return True
    return low[0] == high[0] and not low[1] and not high[1]


def _lower_key(bound: tuple[float, bool]) -> tuple[float, int]:
    return bound[0], int(bound[1])  # an open lower bound is the tighter one at the same number


def _upper_key(bound: tuple[float, bool]) -> tuple[float, int]:
    return bound[0], -int(bound[1])


def _written(spec: Any) -> str:
    """A condition as router.toml has it, cut short past 80 characters."""
    text = as_toml(spec)
    return text if len(text) <= 80 else text[:77] + "..."


# --- outputs ------------------------------------------------------------------------------------------------


def outputs_fed_only_by(dead: Sequence[DeadRoute], config: RouterConfig) -> dict[str, list[RouteConfig]]:
    """The outputs that only routes in `dead` send to, with those routes (outputs no route names are left
    to the loader's own warning)."""
    dead_names = {d.route.name for d in dead}
    by_output: dict[str, list[RouteConfig]] = {}
    for route in config.routes:
        for name in route.to:
            by_output.setdefault(name, []).append(route)
    return {
        name: routes
        for name, routes in by_output.items()
        if name in config.outputs and all(r.name in dead_names for r in routes)
    }
