"""Resolving the secret references of router.toml: `{ env = "NAME" }`, `{ file = "path" }`,
`{ credential = "name" }` (systemd's `LoadCredential=`), or plain text (which `check` warns about).

Only the loader resolves; plugins receive `Secret` strings (event_router.api.secrets) and never a reference.
A plugin's schema marks a secret with `x-secret` (`SECRET_SCHEMA`), `x-secret: "optional"` for a value
that may come from a reference but is no secret (`TEXT_OR_SECRET_SCHEMA`), or `x-secret: "url"` for a URL
that is a secret only when it carries credentials (`secret_schema(..., url=True)`).

`SecretsMode` "skip" is for commands that send nothing (`test`, `schemas`, `reload`, `check --no-secrets`):
references are checked for shape but not resolved, and `Unresolved` stand-ins take their place (the
schema's `x-placeholder`, shaped like the real value so the plugin's constructor checks everything else).
"spool" is "skip" for the commands that open the spool (`status`, `dlq`, `check --no-secrets --connect`):
of all secrets they resolve only `[router] spool.dsn`, the PostgreSQL spool's connection string, without
which they cannot read it (the SQLite spool has none). "admin" is "skip" for the commands that talk to the
admin endpoint (`tap`, `reload`): of all secrets they resolve only `[router.admin] token`, which it asks for.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from event_router.api.secrets import PLACEHOLDER, Secret, Unresolved, is_credential_header

#: "resolve": every secret reference is read (the daemon); "skip": none is, stand-ins take their place;
#: "spool": only the spool's connection string is read (the commands that open the spool); "admin": only the
#: admin endpoint's token (the commands that call the admin endpoint)
SecretsMode = Literal["resolve", "skip", "spool", "admin"]

#: what `check` says about a secret written in plain text
PLAIN_TEXT_ADVICE = (
    'secret written in plain text; prefer { env = "NAME" }, { file = "path" } or { credential = "name" } (systemd)'
)


class SecretError(ValueError):
    """A secret reference cannot be resolved; the message says which variable or file is missing."""


def resolve_secret(
    value: str | Mapping[str, str], *, base_dir: Path, credentials_dir: Path | None = None
) -> tuple[Secret, bool]:
    """The secret's value, and whether it was given as plain text (which `check` warns about).

    `{ credential = ... }` is read from `credentials_dir`, else from `$CREDENTIALS_DIRECTORY`.

    An empty or whitespace-only secret is an error wherever it comes from: a key that guards something
    (an API key, a signing secret, a token) would otherwise guard nothing, as a request without the
    header carries the same empty string.
    """
    if isinstance(value, str):
        return _non_empty(value, "the secret"), True
    if "env" in value:
        name = value["env"]
        if name not in os.environ:
            raise SecretError(f"environment variable {name} is not set")
        return _non_empty(os.environ[name], f"the secret from environment variable {name}"), False
    if "file" in value:
        path = base_dir / value["file"]
        return _non_empty(_read(path, "file"), f"the secret from file {str(path)!r}"), False
    if "credential" in value:
        directory = credentials_dir or os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise SecretError(
                f"credential {value['credential']!r} asked for, but $CREDENTIALS_DIRECTORY is not set "
                "(systemd sets it when the unit has LoadCredential=)"
            )
        text = _read(Path(directory) / value["credential"], "credential")
        return _non_empty(text, f"the secret from credential {value['credential']!r}"), False
    raise SecretError("a secret reference needs one of the keys env, file, credential")


def _non_empty(text: str, what: str) -> Secret:
    if not text:
        raise SecretError(f"{what} is empty")
    if not text.strip():
        raise SecretError(f"{what} is only whitespace")
    return Secret(text)


def _read(path: Path, kind: str) -> str:
    try:
        # a trailing newline is almost always an editor's, never part of a key
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise SecretError(f"cannot read secret {kind} {str(path)!r}: {exc.strerror}") from exc


@dataclass(slots=True)
class ResolvedTable:
    """A plugin's table with its secrets resolved, and what happened on the way (each by key path)."""

    #: the table, every `x-secret` value replaced; None when a reference could not be resolved
    table: dict[str, Any] | None
    #: (key path, message) of each reference that could not be resolved
    errors: list[tuple[str, str]] = field(default_factory=list)
    #: secrets given as plain text (`check` warns about them)
    plain: list[str] = field(default_factory=list)
    #: references left unresolved on purpose (`secrets="skip"`)
    skipped: list[str] = field(default_factory=list)


def url_holds_credentials(url: str) -> bool:
    """Whether `url` carries a credential: a password (`user:password@`), or a query parameter named like
    one (`?password=...`, `?token=...`: the same names as credential headers). A URL that cannot be parsed
    may hide one anywhere, so it counts as holding one."""
    try:
        parts = urlsplit(url)
        return parts.password is not None or any(
            is_credential_header(name) for name, _ in parse_qsl(parts.query, keep_blank_values=True)
        )
    except ValueError:
        return True


def resolve_table(
    schema: Mapping[str, Any],
    table: Mapping[str, Any],
    key: str,
    *,
    mode: SecretsMode,
    base_dir: Path,
    credentials_dir: Path | None = None,
) -> ResolvedTable:
    """Replace every value of `table` (found at `key`) that `schema` marks `x-secret` by the secret it refers to.

    With `mode="skip"` (or "spool", "admin": a plugin's table holds neither the spool's nor the admin
    endpoint's secret) a reference (its shape already validated) is replaced by an `Unresolved` stand-in
    instead: the schema's `x-placeholder`, or `PLACEHOLDER`. Plain text is used as it is.
    """
    result = ResolvedTable(table=None)

    def walk(sub_schema: Mapping[str, Any], node: Any, where: str) -> Any:
        if sub_schema.get("x-secret"):
            if mode != "resolve" and isinstance(node, Mapping):
                result.skipped.append(where)
                return Unresolved(sub_schema.get("x-placeholder", PLACEHOLDER))
            try:
                secret, plain = resolve_secret(node, base_dir=base_dir, credentials_dir=credentials_dir)
            except SecretError as exc:
                result.errors.append((where, str(exc)))
                return node
            if plain and sub_schema["x-secret"] == "optional":
                return str(node)  # may be a reference, is no secret: plain text is meant
            if plain and sub_schema["x-secret"] == "url" and not url_holds_credentials(str(node)):
                return secret  # `amqp://rabbitmq:5672/`: nothing in it to keep out of router.toml
            if plain:
                result.plain.append(where)
            return secret
        if isinstance(node, dict):
            props = sub_schema.get("properties", {})
            patterns = sub_schema.get("patternProperties", {})
            extra = sub_schema.get("additionalProperties")
            out = {}
            for k, v in node.items():
                matching = [schema for pattern, schema in patterns.items() if re.search(pattern, k)]
                child = props.get(k, matching[0] if matching else extra if isinstance(extra, dict) else {})
                out[k] = walk(child, v, f"{where}.{k}")
            return out
        if isinstance(node, list) and isinstance(sub_schema.get("items"), dict):
            return [walk(sub_schema["items"], v, f"{where}[{i}]") for i, v in enumerate(node)]
        return node

    resolved = walk(schema, dict(table), key)
    if not result.errors:
        result.table = resolved
    return result


def secrets_in(node: Any) -> list[Secret]:
    """Every resolved secret in a plugin's table."""
    if isinstance(node, Secret):
        return [node]
    if isinstance(node, Mapping):
        return [s for v in node.values() for s in secrets_in(v)]
    if isinstance(node, list):
        return [s for v in node for s in secrets_in(v)]
    return []
