"""Secrets in router.toml are references: `{ env = "NAME" }`, `{ file = "path" }`, `{ credential = "name" }`.

Plain strings work too, but `event-router check` warns about them. Resolved values are `Secret` strings
whose repr hides them, so a config dump or a traceback does not print them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: JSON Schema fragment for a secret value
SECRET_SCHEMA: dict[str, Any] = {
    "x-secret": True,
    "oneOf": [
        {"type": "string"},
        {
            "type": "object",
            "properties": {
                "env": {"type": "string", "minLength": 1},
                "file": {"type": "string", "minLength": 1},
                "credential": {"type": "string", "minLength": 1},
            },
            "minProperties": 1,
            "maxProperties": 1,
            "additionalProperties": False,
        },
    ],
}


class Secret(str):
    """A str whose repr is masked: `f"{s}"` gives the value (to send it), `repr(s)` does not."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Secret('***')"


class SecretError(ValueError):
    """A secret reference cannot be resolved; the message says which variable or file is missing."""


def resolve_secret(value: str | Mapping[str, str], *, base_dir: Path) -> tuple[Secret, bool]:
    """The secret's value, and whether it was given as plain text (which `check` warns about)."""
    if isinstance(value, str):
        return Secret(value), True
    if "env" in value:
        name = value["env"]
        if name not in os.environ:
            raise SecretError(f"environment variable {name} is not set")
        return Secret(os.environ[name]), False
    if "file" in value:
        path = base_dir / value["file"]
        return Secret(_read(path, "file")), False
    if "credential" in value:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise SecretError(
                f"credential {value['credential']!r} asked for, but $CREDENTIALS_DIRECTORY is not set "
                "(systemd sets it when the unit has LoadCredential=)"
            )
        return Secret(_read(Path(directory) / value["credential"], "credential")), False
    raise SecretError("a secret reference needs one of the keys env, file, credential")


def _read(path: Path, kind: str) -> str:
    try:
        # a trailing newline is almost always an editor's, never part of a key
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise SecretError(f"cannot read secret {kind} {str(path)!r}: {exc.strerror}") from exc
