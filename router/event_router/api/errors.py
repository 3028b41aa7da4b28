"""Exceptions shared by the core and plugins."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class RouterError(Exception):
    """Base class of every error the router raises on purpose."""


def closest(word: str, known: Iterable[str]) -> str | None:
    """The known name a misspelt `word` most likely meant, or None when none is close."""
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.75)
    return close[0] if close else None


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """`"; did you mean 'x'?"` for the known name closest to `word`, or "" when none is close."""
    close = closest(word, known)
    return f"; did you mean {close!r}?" if close is not None else ""


class ConfigError(RouterError):
    """router.toml (or a plugin's table in it) is wrong; `path` is the dotted key that is wrong."""

    def __init__(self, path: str, message: str, *, plugin: str | None = None, file: str = "router.toml"):
        self.path = path
        self.message = message
        self.plugin = plugin
        self.file = file
        where = f"{file}: {path}: " if path else f"{file}: "
        suffix = f" (plugin {plugin})" if plugin else ""
        super().__init__(f"{where}{message}{suffix}")


#: bytes of a receiver's answer an attempt's record keeps (`answer_excerpt`)
ANSWER_EXCERPT = 1024


def answer_excerpt(text: str | None) -> str | None:
    """The start of a receiver's answer as an attempt's record keeps it: its first KiB (ANSWER_EXCERPT bytes of
    UTF-8, never half a character). Give it text already scrubbed of the output's secrets, scrubbed before it
    is cut, so a secret at the cut cannot survive in part."""
    if text is None:
        return None
    if len(text) * 4 <= ANSWER_EXCERPT:  # short enough whatever its characters: no encoding needed
        return text
    return text.encode()[:ANSWER_EXCERPT].decode(errors="ignore")


class DeliveryError(RouterError):
    """An output could not deliver. Raise one of the two subclasses.

    `status` and `answer`: what the receiver answered, when it did (an HTTP status, the start of its body,
    scrubbed of the output's secrets): the attempt's record keeps them for `event-router trace` and `dlq show`
    (`answer` cut to its first KiB here). Leave them None when nothing answered (a refused connection, a
    timeout): the message says what happened.
    """

    retryable: bool = True

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        code: str | None = None,
        status: int | None = None,
        answer: str | None = None,
    ):
        super().__init__(message)
        self.retry_after = retry_after
        self.code = code
        self.status = status
        self.answer = answer_excerpt(answer)


class RetryableError(DeliveryError):
    """Try again later (connection refused, timeout, 408, 429, 5xx...). `retry_after` overrides the computed
    backoff, within the same bounds (`max_backoff`, `max_age`)."""

    retryable = True


class PermanentError(DeliveryError):
    """Trying again cannot help (4xx, a template that refers to a missing field...): dead-letter it."""

    retryable = False


class SpoolFull(RouterError):
    """The spool reached its configured limit: inputs must push back (503, stop consuming), never drop."""

    def __init__(self, depth: int, limit: int, retry_after: float = 1.0):
        super().__init__(f"spool is full ({depth} of {limit} events pending); try again later")
        self.retry_after = retry_after


class SpoolError(RouterError):
    """The spool cannot be opened or written (disk full, read-only, corrupt...).

    `transient`: the same write may succeed later unchanged (disk full, I/O error, database busy, the
    spool's files detached until a restart); any other failure repeats however often it is tried.
    """

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.transient = transient
