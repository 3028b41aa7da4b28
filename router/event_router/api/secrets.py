"""Secrets in router.toml are references: `{ env = "NAME" }`, `{ file = "path" }`, `{ credential = "name" }`.

Plain strings work too, but `event-router check` warns about them. The config loader resolves them
(event_router.config.secrets); a plugin receives `Secret` strings, whose repr hides them, so a config dump
or a traceback does not print them. Commands that send nothing
(`test`, `status`, `dlq`, `check --no-secrets`) load the file without resolving references: each becomes an
`Unresolved` stand-in (the schema's `x-placeholder`, shaped like the real value so the plugin's constructor
checks everything else), and the daemon refuses a configuration that holds one. Text that may hold a secret
anyway (a URL with a password, an error body a server echoed our headers in) goes through `redact_url` or
`scrub` before it reaches a log, an error or a dead letter.
"""

from __future__ import annotations

import functools
import html
import json
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus, unquote, urlsplit, urlunsplit

from event_router.api.errors import RouterError

#: what a secret is replaced by in text meant for people
MASK = "***"
#: `scrub` leaves shorter secrets alone: masking every "t" would garble the text, and a secret that short
#: protects nothing anyway
MIN_SCRUBBED = 4

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


#: JSON Schema fragment for a value that may come from a secret reference but is not a secret itself (an
#: ordinary header such as `X-Tenant`): a reference is resolved, plain text is fine and not warned about
TEXT_OR_SECRET_SCHEMA: dict[str, Any] = {**SECRET_SCHEMA, "x-secret": "optional"}

#: HTTP header names whose values are credentials: `Authorization`, `Proxy-Authorization`, `Cookie`,
#: `X-API-Key` and every name containing auth, key, token, secret, password, signature or credential (any
#: case). Usable as a JSON Schema `patternProperties` key.
CREDENTIAL_HEADER_PATTERN = r"(?i)auth|key|token|secret|passw|signature|credential|cookie"
_CREDENTIAL_HEADER = re.compile(CREDENTIAL_HEADER_PATTERN)


def is_credential_header(name: str) -> bool:
    """Whether a header of this name carries a credential (its value is a secret: never logged, scrubbed)."""
    return _CREDENTIAL_HEADER.search(name) is not None


class Secret(str):
    """A str whose repr is masked: `f"{s}"` gives the value (to send it), `repr(s)` does not."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Secret('***')"


#: the stand-in for an unresolved reference whose schema gives no `x-placeholder`
PLACEHOLDER = "unresolved-secret"


def secret_schema(placeholder: str, *, url: bool = False) -> dict[str, Any]:
    """`SECRET_SCHEMA` for a secret with a format its plugin checks (a URL, a `whsec_` key): `placeholder`
    is a well-formed value the constructor accepts when the reference is not resolved.

    `url=True` for a URL that is secret only through the credentials it may carry (a broker's
    `amqp://user:password@host/`): written in plain text without a password, or a query parameter named like
    a credential, it is no secret and `check` does not warn about it (`"x-secret": "url"`).
    """
    return {**SECRET_SCHEMA, "x-placeholder": placeholder, **({"x-secret": "url"} if url else {})}


class Unresolved(Secret):
    """The stand-in for a reference not resolved (`secrets="skip"`): never a value to send."""

    __slots__ = ()


class UnresolvedSecretError(RouterError):
    """Something was about to send an `Unresolved` stand-in: only the daemon's resolved config may send."""


def refuse_unresolved(where: str, values: Iterable[object]) -> None:
    """Raise `UnresolvedSecretError` when any of `values` is an `Unresolved` stand-in.

    `App` refuses a configuration that holds one; the code that sends credentials checks again, so that no
    other caller (a test harness, a command) can ever send a placeholder.
    """
    if any(isinstance(value, Unresolved) for value in values):
        raise UnresolvedSecretError(
            f"{where}: a secret reference was not resolved (configuration loaded without secrets); "
            "its placeholder is never sent"
        )


def redact_url(url: str) -> str:
    """`url` with its password replaced by `***`, for logs and error messages."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{parts.username or ''}:{MASK}@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:  # an unparsable URL may hide a password anywhere: show none of it
        return "<unparsable URL>"


def url_secrets(url: str) -> tuple[str, ...]:
    """The password in `url`, as written and percent-decoded (clients send the decoded one); for `scrub`."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return ()
    return (password, unquote(password)) if password else ()


_PERCENT_ESCAPE = re.compile("%[0-9A-F]{2}")


@functools.lru_cache(maxsize=256)  # the same few configured secrets, scrubbed from every error text
def encoded_forms(secret: str) -> frozenset[str]:
    r"""`secret` as a server may send it back when it echoes what it was sent: as is, JSON-escaped (`\"`, `\\`,
    `\uXXXX`, and `\/` for `/` as PHP's json_encode writes it), percent-encoded (either hex case, a space as
    `%20` or `+`) and HTML-escaped. Base64 is not derived here: an auth that sends a secret base64-encoded
    (Basic credentials) lists the encoded value among its secrets, whose forms are then covered in turn."""
    json_forms = {json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
    json_forms |= {form.replace("/", "\\/") for form in json_forms}
    percent = {quote(secret, safe=""), quote(secret), quote_plus(secret), quote_plus(secret, safe="")}
    percent |= {_PERCENT_ESCAPE.sub(lambda m: m.group(0).lower(), form) for form in percent}
    return frozenset({secret, *json_forms, *percent, html.escape(secret), html.escape(secret, quote=False)})


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every occurrence of each of `secrets`, in any of its `encoded_forms`, replaced by `***`.

    For text the router did not write itself: a receiver's error body, a library's exception message.
    Longer forms go first, so a secret that contains another is masked whole; secrets shorter than
    `MIN_SCRUBBED` are left alone.
    """
    forms = {form for s in secrets if len(s) >= MIN_SCRUBBED for form in encoded_forms(s)}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, MASK)
    return text
