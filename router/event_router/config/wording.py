"""jsonschema's errors as router.toml's messages: each a (dotted key path, text for people) pair, so that every
error is a breadcrumb to the exact key (`outputs.crm.retry.max_attempts: 0 is less than the minimum of 1`).

The wording never repeats a secret: a value of the wrong type is described, not quoted; nothing under a
schema that holds secrets (`auth`, `headers`, `signing_secrets`...) is quoted; a URL is shown with its
password masked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jsonschema_rs

from event_router.api.durations import DURATION_SCHEMA
from event_router.api.errors import closest
from event_router.api.secrets import redact_url

if TYPE_CHECKING:  # imported when there is an error to word (schema_errors)
    from jsonschema.exceptions import ValidationError


def schema_errors(schema: Mapping[str, Any], instance: Any, *, core_keys: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(dotted key path, message) for every violation, in document order, messages made for people.

    `core_keys`: keys of a plugin table the core reads, taken out of `instance` before it is checked
    against the plugin's schema; an unknown key at the top lists them among the allowed ones.
    """
    if _valid(schema, instance):
        return []
    # jsonschema's errors carry what the wording needs (the failed keyword's schema, the sub-errors of a
    # oneOf); imported only here, so that a router whose configuration is valid never holds it (several MB)
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(dict(schema))
    found = sorted(validator.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path])
    return [(_key_path(e.absolute_path), _message(e, () if e.absolute_path else core_keys)) for e in found]


def _valid(schema: Mapping[str, Any], instance: Any) -> bool:
    r"""jsonschema_rs's verdict, the fast path of every start: True only when it finds `instance` valid.

    The schemas' patterns are written so that its regexes accept nothing Python's `re` refuses (ASCII
    classes, no `\s` or `\d`: test_config checks every pattern), so a value it accepts jsonschema accepts
    too, and the code that reads it after. A value it cannot take (a TOML date) or a schema it cannot
    compile is left to jsonschema."""
    try:
        return bool(jsonschema_rs.Draft202012Validator(dict(schema)).is_valid(instance))
    except (ValueError, TypeError, jsonschema_rs.ValidationError):
        return False


def _key_path(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _holds_secrets(schema: Any) -> bool:
    """Whether a schema is, or contains, a secret: a value found there is never quoted in an error.

    `signing_secrets = "whsec_..."` (a string where a list of secrets belongs) or `auth = "Bearer ..."` is
    a secret in the wrong shape, and must not be printed back.
    """
    if isinstance(schema, Mapping):
        return bool(schema.get("x-secret")) or any(_holds_secrets(v) for v in schema.values())
    if isinstance(schema, list):
        return any(_holds_secrets(v) for v in schema)
    return False


#: JSON Schema types as router.toml calls them
_TYPES = {
    "object": "a table",
    "array": "an array",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
}


#: size limits, described without quoting the value that broke them
_LIMITS = {
    "minItems": ("at least", "item"),
    "maxItems": ("at most", "item"),
    "minLength": ("at least", "character"),
    "maxLength": ("at most", "character"),
    "minProperties": ("at least", "key"),
    "maxProperties": ("at most", "key"),
}


def _type_of(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    return "a string" if isinstance(value, str) else type(value).__name__


def _message(error: ValidationError, core_keys: Sequence[str] = ()) -> str:
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        # a key marked `x-removed` stays in the schema only to be refused with its own message: it is neither
        # allowed nor a guess for a typo
        properties = schema.get("properties", {})
        current = {k for k, v in properties.items() if not (isinstance(v, Mapping) and v.get("x-removed"))}
        allowed = sorted({*current, *core_keys})
        unknown = sorted(k for k in error.instance if k not in properties and k not in core_keys)
        guesses = [(key, guess) for key in unknown if (guess := closest(str(key), allowed)) is not None]
        if len(unknown) == 1 and guesses:
            guess = f"; did you mean {guesses[0][1]!r}?"
        else:
            guess = f"; did you mean {', '.join(f'{g!r} for {k!r}' for k, g in guesses)}?" if guesses else ""
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}{guess}{hint}"
    if error.validator == "required":
        return str(error.message).replace("is a required property", "is required but missing")
    if error.validator == "propertyNames" or "propertyNames" in error.schema_path:
        return f"{error.instance!r} is not a valid name (letters, digits, '_' and '-', starting with a letter)"
    if schema.get("x-secret"):
        return 'must be a string or a table with one key: env, file or credential (e.g. { env = "NAME" })'
    if isinstance(schema.get("x-error"), str) and not _holds_secrets(schema):
        # a schema's own words for a value it refuses (`anyOf` branches would each say a half of it); a value
        # is quoted only when it is short (a long string under the wrong key may be a secret)
        value = error.instance
        number = isinstance(value, int) and not isinstance(value, bool)
        shown = repr(value) if number or (isinstance(value, str) and len(value) <= 8) else _type_of(value)
        return f"{shown} {schema['x-error']}"
    if error.validator == "type":
        # described, not quoted: a wrong-typed value may be a secret written under the wrong key
        expected = schema.get("type")
        names = [_TYPES.get(str(t), str(t)) for t in (expected if isinstance(expected, list) else [expected])]
        return f"must be {' or '.join(names)}, not {_type_of(error.instance)}"
    if error.validator in _LIMITS:
        bound, unit = _LIMITS[str(error.validator)]
        limit = error.validator_value
        return f"must have {bound} {limit} {unit}{'' if limit == 1 else 's'}"
    if _holds_secrets(schema):
        return f"is not valid here (fails {error.validator!r} of the schema)"
    if schema is DURATION_SCHEMA or schema == DURATION_SCHEMA:
        return f"{error.instance!r} is not a duration (seconds, or a string like '500ms', '30s', '5m', '2h')"
    if error.validator in ("oneOf", "anyOf") and error.context:
        return _message(min(error.context, key=lambda e: len(e.message)))
    if error.validator == "enum":
        return f"{error.instance!r} is not one of {', '.join(map(repr, schema.get('enum', [])))}"
    if error.validator == "pattern" and isinstance(error.instance, str):
        return f"{redact_url(error.instance)!r} does not match {error.validator_value!r}"
    return str(error.message)
