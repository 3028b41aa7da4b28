"""Event schemas: load the JSON Schema files, compile them once, validate each event's `data` fast.

A schema directory holds `*.json` files (JSON Schema Draft 2020-12). A file with a top-level `"x-trigger"`
validates the `data` of the events with that trigger; `*` in an x-trigger stands for exactly one
dot-separated segment (`consumption.relationshipEvent.*`). Files without `x-trigger` (`defs.json`,
`event.json`) are shared resources that other schemas `$ref`. Every file needs an absolute `$id`: relative
`$ref`s resolve against it, so a user schema whose `$id` lies under the built-in base
`https://enmeshed-event-router.github.io/schemas/` can say `{"$ref": "defs.json#/$defs/MessageDTO"}`; under any
other base it must use the absolute URI of `defs.json`. Nothing is ever fetched over the network.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import jsonschema_rs
import orjson

from event_router.core.masking import Fixed, fixed_values

SCHEMA_BASE = "https://enmeshed-event-router.github.io/schemas/"
EVENT_SCHEMA_ID = SCHEMA_BASE + "event.json"
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
MAX_ERRORS = 10


def builtin_schema_dir() -> Path:
    """The schemas shipped with the router.

    An installed wheel carries them as `event_router/schemas` (the build force-includes the top-level
    `schemas/`); a source checkout or editable install uses the top-level `schemas/` directly.
    """
    packaged = importlib.resources.files("event_router") / "schemas"
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    source = Path(__file__).resolve().parents[3] / "schemas"
    if source.is_dir():
        return source
    raise FileNotFoundError(f"built-in event schemas not found (looked in {packaged} and {source})")


class SchemaError(Exception):
    """A schema file is unusable; the message names the file and what is wrong with it."""


@dataclass(frozen=True)
class ValidationResult:
    """Outcome of validating one event's data.

    `schema` is the x-trigger of the schema that was applied (for the envelope: event.json's `$id`), or None
    when no schema knows the trigger (then `valid` is True: whether unknown triggers are acceptable is the
    caller's policy).
    """

    valid: bool
    errors: tuple[str, ...]
    schema: str | None


#: schema -> the result of data that passed it (or, for None, of a trigger no schema knows): frozen, so one
#: is shared by every event that passed, not made per event. Bounded by the schemas ever loaded
_PASSED: dict[str | None, ValidationResult] = {}


def passed(schema: str | None) -> ValidationResult:
    """The result of data valid under `schema` (None: no schema knows the trigger)."""
    found = _PASSED.get(schema)
    if found is None:
        found = _PASSED[schema] = ValidationResult(valid=True, errors=(), schema=schema)
    return found


@dataclass(frozen=True)
class _SchemaFile:
    path: Path
    schema_id: str
    schema: dict[str, Any]
    trigger: str | None


def format_path(path: Iterable[str | int], root: str = "data") -> str:
    """An instance path as users read it: `data.content.to[0]` (keys joined by dots, indexes in brackets)."""
    return root + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path)


def _check(validator: jsonschema_rs.Validator, instance: Any, schema: str, root: str) -> ValidationResult:
    try:
        if validator.is_valid(instance):  # the common case: no error objects are built at all
            return passed(schema)
        # Sorted by location, then message, so the same input always yields the same (first ten) lines.
        found = sorted((format_path(e.instance_path, root), _message(e)) for e in validator.iter_errors(instance))
    except (ValueError, RecursionError) as exc:
        # jsonschema-rs gives up on errors in data nested a few hundred levels deep ("Recursion limit
        # reached"): that is an invalid event with a reason, not a crash of the input that submitted it
        return ValidationResult(valid=False, errors=(f"{root}: nests too deeply to validate ({exc})",), schema=schema)
    return ValidationResult(valid=False, errors=tuple(f"{at}: {msg}" for at, msg in found[:MAX_ERRORS]), schema=schema)


def _message(error: jsonschema_rs.ValidationError) -> str:
    """`error`'s message; for anyOf/oneOf, what each alternative wanted instead of "is not valid under any of
    the schemas listed". Alternatives refused only for their type are left out when another one took the
    type (`100` against "one of these names, or 0 to 99": the range is what matters)."""
    kind = error.kind
    if not isinstance(kind, jsonschema_rs.ValidationErrorKind.AnyOf | jsonschema_rs.ValidationErrorKind.OneOfNotValid):
        return str(error.message)
    here = list(error.instance_path)
    branches = [list(branch) for branch in kind.context if branch]
    if not branches:
        return str(error.message)
    wrong_type = jsonschema_rs.ValidationErrorKind.Type
    typed = [b for b in branches if not all(isinstance(e.kind, wrong_type) and e.instance_path == here for e in b)]
    value = str(error.message).split(" is not valid under ", 1)[0]
    reasons = []
    for branch in typed or branches:
        for sub in branch:
            below = list(sub.instance_path)[len(here) :]
            text = _message(sub)
            reasons.append(f"{format_path(below, '')[1:]}: {text}" if below else f"it {text.removeprefix(value + ' ')}")
    # every alternative refused it, each for its reasons: "it is not one of ..., and it is greater than ..."
    return f"{value} is not valid: " + ", and ".join(dict.fromkeys(reasons))


def metaschema_error(schema: Mapping[str, Any]) -> tuple[str, str] | None:
    """Where in `schema` (a JSON pointer's parts joined by "/", "(root)") and why it is not a valid Draft
    2020-12 schema; None when it is. The event schemas and every plugin's `config_schema` are checked so.

    jsonschema_rs checks the metaschema, fast (every start checks every schema); jsonschema, imported only
    for a schema it refuses (several MB a running router would hold for nothing), words the error."""
    if jsonschema_rs.meta.is_valid(dict(schema)):
        return None
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError as MetaschemaError

    try:
        Draft202012Validator.check_schema(dict(schema))
    except MetaschemaError as exc:
        return "/".join(str(p) for p in exc.absolute_path) or "(root)", str(exc.message)
    return None


def _read(path: Path) -> _SchemaFile:
    try:
        schema = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise SchemaError(f"{path}: not a readable JSON file: {exc}") from exc
    if not isinstance(schema, dict):
        raise SchemaError(f"{path}: a schema must be a JSON object")
    if schema.get("$schema", DRAFT_2020_12) != DRAFT_2020_12:
        # One dialect everywhere: the metaschema check below and the compiler must agree.
        raise SchemaError(f"{path}: $schema must be {DRAFT_2020_12!r} (or absent), not {schema['$schema']!r}")
    problem = metaschema_error(schema)
    if problem is not None:
        where, message = problem
        raise SchemaError(f"{path}: not a valid Draft 2020-12 schema at {where}: {message}")
    schema_id = schema.get("$id")
    if not isinstance(schema_id, str) or not urlsplit(schema_id).scheme:
        raise SchemaError(f"{path}: needs an absolute $id (e.g. {SCHEMA_BASE}{path.name})")
    try:
        jsonschema_rs.Registry([(schema_id, {})])  # a malformed URI would otherwise fail unattributed later
    except ValueError as exc:
        raise SchemaError(f"{path}: bad $id: {exc}") from exc
    trigger = schema.get("x-trigger")
    if trigger is not None and (not isinstance(trigger, str) or not trigger):
        raise SchemaError(f"{path}: x-trigger must be a non-empty string")
    return _SchemaFile(path, schema_id, schema, trigger)


def _matches(pattern: tuple[str, ...], parts: list[str]) -> bool:
    return len(pattern) == len(parts) and all(p in ("*", s) for p, s in zip(pattern, parts, strict=True))


class SchemaRegistry:
    """Compiled event schemas by trigger, plus the router event envelope schema."""

    def __init__(
        self,
        validators: dict[str, jsonschema_rs.Validator],
        files: dict[str, _SchemaFile],
        envelope: jsonschema_rs.Validator | None,
        documents: dict[str, Any] | None = None,
    ) -> None:
        self._validators = validators
        self._files = files
        self._envelope = envelope
        #: every loaded schema document by $id, shared ones too: what `fixed_values` derives its tree from
        self._documents = documents or {}
        #: built at the first `fixed_values` (a tap, a console page), not at every load: the router's
        #: start-up and memory do not pay for masking it may never do
        self._fixed: dict[str, Fixed | None] | None = None
        self._exact = {t for t in validators if "*" not in t.split(".")}
        # Globs with fewer wildcards are more specific and win; ties go alphabetically, for determinism.
        self._globs = sorted(
            (tuple(t.split(".")) for t in validators if t not in self._exact),
            key=lambda g: (g.count("*"), g),
        )

    @classmethod
    def load(cls, dirs: Sequence[Path]) -> SchemaRegistry:
        """Read every `*.json` of each dir in order; a later dir's schema for an x-trigger replaces an earlier one.

        Raises SchemaError for a file that is not JSON, is not a valid 2020-12 schema, lacks an absolute `$id`,
        or has a `$ref` that resolves to nothing among the loaded files.
        """
        by_id: dict[str, _SchemaFile] = {}
        for directory in dirs:
            if not directory.is_dir():
                raise SchemaError(f"{directory}: schema directory does not exist")
            seen: dict[str, Path] = {}
            for path in sorted(directory.glob("*.json")):
                loaded = _read(path)
                for key in (loaded.schema_id, loaded.trigger):
                    if key is not None and key in seen:
                        raise SchemaError(f"{path}: {key!r} is also defined by {seen[key]} in the same directory")
                    if key is not None:
                        seen[key] = path
                # pop first so a replacement moves to the end: the last file for a trigger wins below
                by_id.pop(loaded.schema_id, None)
                by_id[loaded.schema_id] = loaded

        registry = _registry(list(by_id.values()))
        files = {f.trigger: f for f in by_id.values() if f.trigger is not None}
        # shared resources first, so a broken $ref inside defs.json is reported as defs.json's
        shared = {f.schema_id: _compile(f, registry) for f in by_id.values() if f.trigger is None}
        validators = {trigger: _compile(f, registry) for trigger, f in files.items()}
        return cls(validators, files, shared.get(EVENT_SCHEMA_ID), {f.schema_id: f.schema for f in by_id.values()})

    def triggers(self) -> list[str]:
        """The x-trigger values, sorted."""
        return sorted(self._validators)

    def describe(self) -> list[tuple[str, str, str]]:
        """(x-trigger, title, source file) per schema, sorted by trigger."""
        return [(t, str(f.schema.get("title", "")), str(f.path)) for t, f in sorted(self._files.items())]

    def schema_for(self, trigger: str) -> str | None:
        """The x-trigger of the schema for `trigger`: an exact match first, then the most specific glob."""
        if trigger in self._exact:
            return trigger
        parts = trigger.split(".")
        for glob in self._globs:
            if _matches(glob, parts):
                return ".".join(glob)
        return None

    def fixed_values(self, trigger: str | None) -> Fixed | None:
        """Where the data of `trigger`'s events holds values its schema fixes (`enum`, `const`), for
        `core.masking.mask`; None when no schema applies, or it fixes none."""
        schema = None if trigger is None else self.schema_for(trigger)
        if schema is None:
            return None
        if self._fixed is None:  # once per registry: a masked event then costs no schema walk
            self._fixed = fixed_values(self._documents, {t: f.schema_id for t, f in self._files.items()})
        return self._fixed.get(schema)

    def is_known(self, trigger: str) -> bool:
        """Whether some schema applies to `trigger`."""
        return self.schema_for(trigger) is not None

    def validate(self, trigger: str, data: Any) -> ValidationResult:
        """Validate an event's data; errors read `data.path: message`, at most ten, in a stable order."""
        schema = self.schema_for(trigger)
        if schema is None:
            return passed(None)
        return _check(self._validators[schema], data, schema, "data")

    def validate_event_envelope(self, event: Mapping[str, Any]) -> ValidationResult:
        """Validate a whole router event (`Event.to_dict()` form) against `event.json`."""
        if self._envelope is None:
            raise SchemaError(f"no schema with $id {EVENT_SCHEMA_ID} was loaded")
        return _check(self._envelope, event, EVENT_SCHEMA_ID, "event")


def _no_fetch(uri: str) -> Any:
    # jsonschema_rs would fetch unknown http(s) $refs; schemas must be self-contained and load offline.
    raise LookupError(f"no loaded schema has $id {uri} (nothing is fetched over the network)")


def _registry(files: list[_SchemaFile]) -> jsonschema_rs.Registry:
    """All resources by $id. Building it follows every `$ref` into other documents, so it fails on a missing one."""
    try:
        return jsonschema_rs.Registry([(f.schema_id, f.schema) for f in files])
    except ValueError as exc:
        failure = exc
    # Find the file that names the missing document: probe each alone, with every known $id standing in
    # as an empty schema, so only the file's own references are followed.
    known = {f.schema_id for f in files}

    def stand_in(uri: str) -> dict[str, Any]:
        if uri.rstrip("#") in known:
            return {}
        raise LookupError(f"no loaded schema has $id {uri}")

    for f in files:
        try:
            jsonschema_rs.Registry([(f.schema_id, f.schema)], retriever=stand_in)
        except ValueError as exc:
            raise SchemaError(f"{f.path}: unresolvable $ref: {exc}") from exc
    raise SchemaError(f"cannot build the schema registry: {failure}") from failure


def _compile(f: _SchemaFile, registry: jsonschema_rs.Registry) -> jsonschema_rs.Validator:
    """Compile once; `$ref`s are resolved now, so a dangling one fails here rather than at the first event."""
    try:
        validator = jsonschema_rs.validator_for(f.schema, registry=registry, retriever=_no_fetch)
        # `$defs` nobody references yet are not compiled above: check them too, so defs.json errors name it
        for name in f.schema.get("$defs", {}):
            pointer = quote(name.replace("~", "~0").replace("/", "~1"), safe="")
            jsonschema_rs.validator_for(
                {"$ref": f"{f.schema_id}#/$defs/{pointer}"}, registry=registry, retriever=_no_fetch
            )
    except (jsonschema_rs.ValidationError, ValueError) as exc:
        reason = str(exc).split("\n", 1)[0]
        raise SchemaError(f"{f.path}: cannot compile schema: {reason}") from exc
    return validator
