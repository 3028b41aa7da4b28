"""`event-router test --expect FILE...`: route tests a CI job runs, as `vector test` or `rpk connect test` do.

A test file (TOML, or JSON of the same shape) holds `[[tests]]` cases, each an event and what must happen
to it: the routes it matches (the exact list, in order), the outputs it reaches (the exact set), what a
delivery carries (the whole payload, or some of its fields by dotted path), or the dead letter it becomes.
Each case goes through the very code the router runs (`plan_for_input`: validation under the input's
policy, routing, reshaping); payloads are compared as the spool stores them (JSON), and nothing is sent.

Exit status: 0 when every case passes; 1 when one does not (each mismatch printed: which case, which
field, expected and got); 2 when a test file or the config cannot be used (which file, which case, what).
The format is described in docs/routing.md ("Testing routes").
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from event_router.api.errors import RouterError, did_you_mean
from event_router.api.event import Event
from event_router.api.templates import MISSING, get_path, split_path
from event_router.core.model import RouterConfig
from event_router.core.validation import SchemaError, SchemaRegistry
from event_router.ops.dryrun import EventFileError, dry_deliveries, event_source, wire_event

#: the id and received_at of a test's event unless it gives its own: fixed, so whole payloads can be compared
TEST_EVENT_ID: Final = "00000000-0000-7000-8000-000000000000"
TEST_RECEIVED_AT: Final = "1970-01-01T00:00:00.000Z"
DEAD_LETTER_REASONS: Final = ("validation", "unknown_trigger", "no_route")
CASE_KEYS: Final = ("name", "event", "input", "routes", "outputs", "deliveries", "dead_letter")
EXPECTATIONS: Final = ("routes", "outputs", "deliveries", "dead_letter")
EVENT_KEYS: Final = ("file", "index", "trigger", "namespace", "data", "meta", "id", "received_at")
DELIVERY_KEYS: Final = ("output", "route", "payload", "fields")
#: one-key tables in `fields` that say something other than "a deeper path"
FIELD_SPECIALS: Final = ("const", "exists", "null")
#: longest value shown in a mismatch line
SHOWN: Final = 200
#: mismatch lines shown per payload
MAX_DIFFS: Final = 20


class TestFileError(ValueError):
    """A test file cannot be used; the message names the file and, where there is one, the case."""


@dataclass(frozen=True, slots=True)
class FieldCheck:
    #: the dotted path as written, and as segments
    path: str
    segments: tuple[str, ...]
    #: "equals" (`value`), "exists" (`value`: True or False)
    kind: str
    value: Any


@dataclass(frozen=True, slots=True)
class DeliveryExpectation:
    output: str
    route: str | None
    payload: Any = MISSING
    fields: tuple[FieldCheck, ...] = ()


@dataclass(slots=True)
class Case:
    file: Path
    index: int
    name: str
    event: Event
    input: str | None
    routes: list[str] | None = None
    outputs: list[str] | None = None
    deliveries: list[DeliveryExpectation] = field(default_factory=list)
    #: (reason, substring of the error or None); None: no dead letter expected
    dead_letter: tuple[str, str | None] | None = None

    @property
    def title(self) -> str:
        return f'{self.file}: tests[{self.index}] ("{self.name}")'


# --- reading test files -------------------------------------------------------------------------------------


def load_cases(path: Path, config: RouterConfig, default_input: str | None) -> list[Case]:
    """The cases of one test file, checked against `config` (the routes, outputs and inputs they name)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TestFileError(f"{path}: cannot read it: {exc.strerror}") from None
    try:
        document: Any = orjson.loads(raw) if path.suffix == ".json" else tomllib.loads(raw.decode())
    except (orjson.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        kind = "JSON" if path.suffix == ".json" else "TOML"
        raise TestFileError(f"{path}: not valid {kind}: {exc}") from None
    if not isinstance(document, Mapping) or set(document) != {"tests"}:
        raise TestFileError(f"{path}: a test file holds one key, `tests`: a list of cases ([[tests]] in TOML)")
    tests = document["tests"]
    if not isinstance(tests, list) or not tests:
        raise TestFileError(f"{path}: tests: must be a non-empty list of cases ([[tests]] in TOML)")
    cases: list[Case] = []
    seen: dict[str, int] = {}
    for index, table in enumerate(tests):
        where = f"{path}: tests[{index}]"
        if not isinstance(table, Mapping):
            raise TestFileError(f"{where}: a case is a table")
        name = table.get("name")
        if not isinstance(name, str) or not name:
            raise TestFileError(f"{where}: name: every case needs a name (a non-empty string)")
        where = f'{where} ("{name}")'
        if name in seen:
            raise TestFileError(f"{where}: name: tests[{seen[name]}] has the same name")
        seen[name] = index
        try:
            cases.append(_case(path, index, name, table, config, default_input))
        except TestFileError as exc:
            raise TestFileError(f"{where}: {exc}") from None
    return cases


def _case(
    path: Path, index: int, name: str, table: Mapping[str, Any], config: RouterConfig, default_input: str | None
) -> Case:
    _only(table, CASE_KEYS, "")
    if not any(key in table for key in EXPECTATIONS):
        raise TestFileError(f"expects nothing: give at least one of {', '.join(EXPECTATIONS)}")
    input_name = table.get("input", default_input)
    if input_name is not None and input_name not in config.inputs:
        raise TestFileError(
            f"input: no input named {input_name!r} in {config.path.name}{_guess(input_name, config.inputs)}"
        )
    source = config.inputs[input_name] if input_name is not None else None
    if "event" not in table:
        raise TestFileError("event: every case needs an event (a JSON file's name, or a table)")
    trigger, data, extra = _event(table["event"], path.parent)
    event = Event(
        trigger=trigger,
        data=data,
        source=event_source(source),
        id=extra.get("id", TEST_EVENT_ID),
        received_at=extra.get("received_at", TEST_RECEIVED_AT),
        meta=extra.get("meta", {}),
    )
    case = Case(path, index, name, event, input_name)
    if "routes" in table:
        case.routes = _names(table["routes"], "routes", [r.name for r in config.routes], config)
    if "outputs" in table:
        case.outputs = _names(table["outputs"], "outputs", list(config.outputs), config)
    if "deliveries" in table:
        case.deliveries = _deliveries(table["deliveries"], path.parent, config)
    if "dead_letter" in table:
        case.dead_letter = _dead_letter(table["dead_letter"])
    return case


def _only(table: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise TestFileError(
                f"{where}{key}: unknown key{did_you_mean(str(key), allowed)} (keys: {', '.join(allowed)})"
            )


def _guess(name: str, known: Sequence[str] | Mapping[str, Any]) -> str:
    return did_you_mean(name, list(known)) or f" (there are: {', '.join(known) or 'none'})"


def _event(spec: Any, base: Path) -> tuple[str, Any, dict[str, Any]]:
    """(trigger, data, {id, received_at, meta} as given) of a case's `event`."""
    if isinstance(spec, str):
        spec = {"file": spec}
    if not isinstance(spec, Mapping):
        raise TestFileError("event: a JSON file's name (relative to the test file), or a table")
    _only(spec, EVENT_KEYS, "event.")
    extra: dict[str, Any] = {}
    for key in ("id", "received_at"):
        if key in spec:
            if not isinstance(spec[key], str):
                raise TestFileError(f"event.{key}: must be a string (quote dates)")
            extra[key] = spec[key]
    if "meta" in spec:
        if not isinstance(spec["meta"], Mapping):
            raise TestFileError("event.meta: must be a table")
        extra["meta"] = _json(spec["meta"], "event.meta")
    if "file" not in spec:
        if "index" in spec:
            raise TestFileError("event.index: only with event.file")
        try:
            trigger, _ = wire_event(spec, "event")
        except EventFileError as exc:
            raise TestFileError(str(exc)) from None
        return trigger, _json(spec.get("data"), "event.data"), extra
    written = [key for key in ("trigger", "namespace", "data") if key in spec]
    if written:
        raise TestFileError(f"event.{written[0]}: the event comes from event.file: give one or the other")
    if not isinstance(spec["file"], str):
        raise TestFileError("event.file: must be a file name")
    file = base / spec["file"]
    try:
        document = orjson.loads(file.read_bytes())
    except OSError as exc:
        raise TestFileError(f"event.file: cannot read {file}: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise TestFileError(f"event.file: {file} is not valid JSON: {exc}") from None
    where = str(file)
    if isinstance(document, list):
        index = spec.get("index")
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(document):
            raise TestFileError(
                f"event.index: {file} holds a list of {len(document)} events: say which with index = 0 to "
                f"{len(document) - 1}"
            )
        document, where = document[index], f"{file}[{index}]"
    elif "index" in spec:
        raise TestFileError(f"event.index: {file} holds one event, not a list")
    try:
        trigger, data = wire_event(document, where)
    except EventFileError as exc:
        raise TestFileError(f"event.file: {exc}") from None
    return trigger, data, extra


def _names(value: Any, key: str, known: list[str], config: RouterConfig) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TestFileError(f"{key}: must be a list of names ([] for none)")
    for index, name in enumerate(value):
        if name not in known:
            kind = key[:-1]
            raise TestFileError(f"{key}[{index}]: no {kind} named {name!r} in {config.path.name}{_guess(name, known)}")
    return list(value)


def _deliveries(value: Any, base: Path, config: RouterConfig) -> list[DeliveryExpectation]:
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list) or not value:
        raise TestFileError("deliveries: a list of tables ([[tests.deliveries]] in TOML), each naming an output")
    found = []
    for index, table in enumerate(value):
        at = f"deliveries[{index}]"
        if not isinstance(table, Mapping):
            raise TestFileError(f"{at}: must be a table")
        _only(table, DELIVERY_KEYS, f"{at}.")
        output = table.get("output")
        if not isinstance(output, str):
            raise TestFileError(f"{at}.output: which output's delivery (a name) is required")
        if output not in config.outputs:
            raise TestFileError(
                f"{at}.output: no output named {output!r} in {config.path.name}{_guess(output, config.outputs)}"
            )
        route = table.get("route")
        if route is not None and (not isinstance(route, str) or config.route(route) is None):
            names = [r.name for r in config.routes]
            raise TestFileError(
                f"{at}.route: no route named {route!r} in {config.path.name}{_guess(str(route), names)}"
            )
        payload: Any = MISSING
        if "payload" in table:
            payload = table["payload"]
            if isinstance(payload, str):
                file = base / payload
                try:
                    payload = orjson.loads(file.read_bytes())
                except OSError as exc:
                    raise TestFileError(f"{at}.payload: cannot read {file}: {exc.strerror}") from None
                except orjson.JSONDecodeError as exc:
                    raise TestFileError(f"{at}.payload: {file} is not valid JSON: {exc}") from None
            elif not isinstance(payload, Mapping):
                raise TestFileError(f"{at}.payload: the whole payload (a table), or a JSON file's name")
            payload = _json(payload, f"{at}.payload")
        fields: list[FieldCheck] = []
        if "fields" in table:
            if not isinstance(table["fields"], Mapping) or not table["fields"]:
                raise TestFileError(f"{at}.fields: a table of dotted paths and the values expected there")
            _fields(table["fields"], (), f"{at}.fields", fields)
        found.append(DeliveryExpectation(output, route, payload, tuple(fields)))
    return found


def _fields(table: Mapping[str, Any], base: tuple[str, ...], where: str, out: list[FieldCheck]) -> None:
    """`fields` as checks: a table is a deeper path (as in match patterns), but for `{ const = ... }` (this
    value, whatever it is), `{ exists = true/false }` and `{ null = true }` (JSON null, which TOML lacks)."""
    for key, value in table.items():
        at = f"{where}.{key}"
        try:
            segments = base + split_path(key)
        except ValueError as exc:
            raise TestFileError(f"{at}: {exc}") from None
        path = ".".join(segments)
        if isinstance(value, Mapping) and len(value) == 1 and next(iter(value)) in FIELD_SPECIALS:
            ((special, operand),) = value.items()
            if special == "const":
                out.append(FieldCheck(path, segments, "equals", _json(operand, f"{at}.const")))
            elif not isinstance(operand, bool) or (special == "null" and operand is not True):
                raise TestFileError(f"{at}.{special}: must be {'true' if special == 'null' else 'true or false'}")
            elif special == "exists":
                out.append(FieldCheck(path, segments, "exists", operand))
            else:
                out.append(FieldCheck(path, segments, "equals", None))
        elif isinstance(value, Mapping):
            if not value:
                raise TestFileError(f"{at}: empty table: a path needs a value (or {{ exists = true }})")
            _fields(value, segments, where, out)
        else:
            out.append(FieldCheck(path, segments, "equals", _json(value, at)))


def _json(value: Any, where: str) -> Any:
    """`value` (from TOML or JSON) as JSON data; TOML's dates and times are refused: quote them."""
    if isinstance(value, datetime.date | datetime.time):
        raise TestFileError(f'{where}: a TOML date or time: quote it ("{value.isoformat()}"), as JSON has none')
    if isinstance(value, Mapping):
        return {str(k): _json(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _dead_letter(value: Any) -> tuple[str, str | None]:
    if isinstance(value, str):
        value = {"reason": value}
    if not isinstance(value, Mapping):
        raise TestFileError(
            f"dead_letter: one of {', '.join(map(repr, DEAD_LETTER_REASONS))}, or a table with reason and error"
        )
    _only(value, ("reason", "error"), "dead_letter.")
    reason = value.get("reason")
    if reason not in DEAD_LETTER_REASONS:
        raise TestFileError(f"dead_letter: reason {reason!r} is not one of {', '.join(map(repr, DEAD_LETTER_REASONS))}")
    error = value.get("error")
    if error is not None and not isinstance(error, str):
        raise TestFileError("dead_letter.error: a piece of the dead letter's error text (a string)")
    return str(reason), error


# --- running cases ------------------------------------------------------------------------------------------


def run_case(case: Case, config: RouterConfig, schemas: SchemaRegistry) -> list[str]:
    """What differs from what the case expects, one line each (none: it passes)."""
    from event_router.core.plan import plan_for_input

    source = config.inputs[case.input] if case.input is not None else None
    plan = plan_for_input(case.event, source, config=config, schemas=schemas)
    lines: list[str] = []
    got_dead = plan.dead_letter
    if case.dead_letter is None and got_dead is not None:
        lines.append(f"dead_letter: expected none, got {got_dead[0]}: {got_dead[1]}")
    elif case.dead_letter is not None:
        reason, piece = case.dead_letter
        if got_dead is None:
            lines.append(f"dead_letter: expected {reason}, got none")
        elif got_dead[0] != reason:
            lines.append(f"dead_letter: expected {reason}, got {got_dead[0]}: {got_dead[1]}")
        elif piece is not None and piece not in got_dead[1]:
            lines.append(f"dead_letter.error: expected it to contain {_show(piece)}, got {_show(got_dead[1])}")
    routes = [route.name for route in plan.routes]
    if case.routes is not None and routes != case.routes:
        lines.append(f"routes: expected {_show(case.routes)}, got {_show(routes)}")
    deliveries = dry_deliveries(plan, config)
    outputs = sorted({d.output for d in deliveries})
    if case.outputs is not None and outputs != sorted(set(case.outputs)):
        missing = sorted(set(case.outputs) - set(outputs))
        extra = [name for name in outputs if name not in case.outputs]
        detail = ", ".join(
            ([f"missing {_show(missing)}"] if missing else []) + ([f"unexpected {_show(extra)}"] if extra else [])
        )
        lines.append(f"outputs: expected {_show(sorted(set(case.outputs)))}, got {_show(outputs)} ({detail})")
    for delivery in deliveries:
        if delivery.error is not None:
            lines.append(
                f'deliveries: output {delivery.output} (route "{delivery.route}") cannot build its request, the '
                f"delivery would be a dead letter: {delivery.error}"
            )
    for index, expected in enumerate(case.deliveries):
        at = f"deliveries[{index}] ({expected.output}" + (f', route "{expected.route}")' if expected.route else ")")
        chosen = [d for d in deliveries if d.output == expected.output and expected.route in (None, d.route)]
        if not chosen:
            lines.append(f"{at}: expected a delivery, got none" + (f" (routes matched: {_show(routes)})"))
            continue
        for delivery in chosen:
            here = at if len(chosen) == 1 else f'{at} from route "{delivery.route}"'
            if expected.payload is not MISSING:
                lines += [f"{here}: payload{line}" for line in diff(expected.payload, delivery.payload)]
            for check in expected.fields:
                found = get_path(delivery.payload, check.segments)
                if check.kind == "exists":
                    if (found is not MISSING) != check.value:
                        got = "nothing there" if found is MISSING else _show(found)
                        wanted = "a value" if check.value else "nothing there"
                        lines.append(f"{here}: fields.{check.path}: expected {wanted}, got {got}")
                elif found is MISSING:
                    lines.append(f"{here}: fields.{check.path}: expected {_show(check.value)}, got nothing there")
                elif not json_equal(check.value, found):
                    lines.append(f"{here}: fields.{check.path}: expected {_show(check.value)}, got {_show(found)}")
    return lines


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values: `1` equals `1.0`, but `true` never equals `1`."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def diff(expected: Any, got: Any, where: str = "") -> list[str]:
    """Where `got` differs from `expected`: `.path: expected X, got Y` lines (at most MAX_DIFFS)."""
    lines: list[str] = []
    _diff(expected, got, where, lines)
    if len(lines) > MAX_DIFFS:
        lines = [*lines[:MAX_DIFFS], f"{where}: ... and {len(lines) - MAX_DIFFS} more difference(s)"]
    return lines


def _diff(expected: Any, got: Any, where: str, lines: list[str]) -> None:
    if isinstance(expected, Mapping) and isinstance(got, Mapping):
        for key, value in expected.items():
            if key not in got:
                lines.append(f"{where}.{key}: expected {_show(value)}, got nothing there")
            else:
                _diff(value, got[key], f"{where}.{key}", lines)
        lines += [f"{where}.{key}: expected nothing there, got {_show(got[key])}" for key in got if key not in expected]
    elif isinstance(expected, list) and isinstance(got, list) and len(expected) == len(got):
        for index, (a, b) in enumerate(zip(expected, got, strict=True)):
            _diff(a, b, f"{where}.{index}", lines)
    elif not json_equal(expected, got):
        lines.append(f"{where}: expected {_show(expected)}, got {_show(got)}")


def _show(value: Any) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= SHOWN else text[: SHOWN - 3] + "..."


# --- the command ------------------------------------------------------------------------------------------


def run_test_files(args: argparse.Namespace) -> int:
    """`event-router test --expect FILE...`: every file is read and checked before any case runs."""
    from event_router.app import load_schemas
    from event_router.config import ConfigErrors, load_config
    from event_router.plugin_loader import load_plugins

    try:
        registry = load_plugins()
        config = load_config(args.config, registry, secrets="skip")
        schemas = load_schemas(config, registry)
    except ConfigErrors as exc:  # the cases cannot run: that is not a failed case
        for error in exc.errors:
            print(f"error: {error}", file=sys.stderr)
        return 2
    except (RouterError, SchemaError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.input is not None and args.input not in config.inputs:
        print(f"error: --input: no input named {args.input!r}{_guess(args.input, config.inputs)}", file=sys.stderr)
        return 2
    default_input = args.input or next(iter(config.inputs), None)
    cases: list[Case] = []
    broken: list[str] = []
    for path in args.expect:
        try:
            cases += load_cases(path, config, default_input)
        except TestFileError as exc:
            broken.append(str(exc))
    if broken:
        for message in broken:
            print(f"error: {message}", file=sys.stderr)
        print(f"test: {len(broken)} test file(s) cannot be used; no case was run", file=sys.stderr)
        return 2
    failed = 0
    for case in cases:
        lines = run_case(case, config, schemas)
        print(f"{'ok  ' if not lines else 'FAIL'} {case.title}")
        for line in lines:
            print(f"       {line}")
        failed += bool(lines)
    print(f"test: {len(cases) - failed} passed, {failed} failed")
    return 1 if failed else 0
