"""The one template mechanism of the router: `{{ field.path }}` placeholders filled from an event.

URL templates, file names, reshaped payloads and (later) Connector action parameters all use it, so it stays
deliberately tiny: a placeholder names a dotted field path of `Event.to_dict()` and nothing else. No
expressions, filters or eval: event data is untrusted and a template must not be able to run anything.
Templates are split once into literal and field parts so that rendering is a lookup and a join.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Final

__all__ = [
    "MISSING",
    "MissingValueError",
    "Template",
    "TemplateError",
    "compile_template",
    "get_path",
    "split_path",
]

OPEN: Final = "{{"
CLOSE: Final = "}}"


class _Missing:
    """Type of `MISSING`: a sentinel distinct from JSON null (`None`), which is a value that is present."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


#: what `get_path` returns when the path leads nowhere
MISSING: Final[object] = _Missing()


class TemplateError(ValueError):
    """A template cannot be compiled; `str()` names the template and the position of the mistake."""

    def __init__(self, template: str, position: int, message: str):
        self.template = template
        self.position = position
        self.message = message
        super().__init__(f"{message} at position {position} of template {template!r}")


class MissingValueError(LookupError):
    """A strict render needs a field the event does not have, or one that is not a scalar.

    A `LookupError` like `KeyError`, but with a readable `str()` (KeyError quotes its message).
    """

    def __init__(self, path: str, reason: str, template: str):
        self.path = path
        self.reason = reason
        self.template = template
        super().__init__(f"{path} {reason} (template {template!r})")


def split_path(path: str) -> tuple[str, ...]:
    """The segments of a dotted field path; `ValueError` (with a message for people) when it is not one.

    A segment is any text without whitespace, `.`, `{` or `}` (`@type` and `0` are segments).
    """
    if not path:
        raise ValueError("empty field path")
    segments = tuple(path.split("."))
    for segment in segments:
        if not segment:
            raise ValueError(f"{path!r} has an empty segment (two dots, or a dot at the start or end)")
        if "{" in segment or "}" in segment or any(c.isspace() for c in segment):
            raise ValueError(f"{path!r} is not a field path (no spaces or braces; segments are separated by '.')")
    return segments


def get_path(obj: Any, path: str | Sequence[str]) -> Any:
    """The value at a dotted path (`"data.content.@type"`) or a sequence of segments; `MISSING` if absent.

    A numeric segment indexes a list (`"data.recipients.0.address"`). Strings are never indexed: a path
    that runs into a scalar is absent. JSON null is a value (`None`), not `MISSING`.
    """
    node = obj
    for segment in path.split(".") if isinstance(path, str) else path:
        if type(node) is dict or isinstance(node, Mapping):  # the exact check first: it is the fast one
            node = node.get(segment, MISSING)
            if node is MISSING:
                return MISSING
        elif isinstance(node, list | tuple) and segment.isascii() and segment.isdigit():
            index = int(segment)
            if index >= len(node):
                return MISSING
            node = node[index]
        else:
            return MISSING
    return node


def _to_text(value: Any) -> str | None:
    """A scalar as template text: strings as is, numbers and booleans as JSON; None for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return None


class Template:
    """A compiled template: literal text and field paths, in order."""

    __slots__ = ("_literals", "_paths", "fields", "source")

    def __init__(self, source: str, literals: Sequence[str], paths: Sequence[tuple[str, ...]]):
        # literals[i] precedes paths[i]; literals has one more item than paths (the text after the last field)
        self.source = source
        self._literals = tuple(literals)
        self._paths = tuple(paths)
        self.fields: tuple[str, ...] = tuple(dict.fromkeys(".".join(p) for p in paths))

    def __repr__(self) -> str:
        return f"Template({self.source!r})"

    def render(
        self,
        event: Mapping[str, Any],
        *,
        quote: Callable[[str], str] | None = None,
        strict: bool = True,
    ) -> str:
        """Fill in the fields from `event` (an `Event.to_dict()`).

        `quote` is applied to every substituted value (never to the literal text), e.g.
        `lambda v: urllib.parse.quote(v, safe="")` so that event data cannot add a `/` or `?` to a URL.
        Strict: a missing, null or non-scalar value raises `MissingValueError`; otherwise it renders as "".
        """
        literals = self._literals
        if not self._paths:
            return literals[0]
        out = [literals[0]]
        for index, path in enumerate(self._paths):
            value = get_path(event, path)
            text = _to_text(value)
            if text is None:
                if strict:
                    raise MissingValueError(".".join(path), _why_not_text(value), self.source)
                text = ""
            out.append(quote(text) if quote is not None else text)
            out.append(literals[index + 1])
        return "".join(out)


def _why_not_text(value: Any) -> str:
    if value is MISSING:
        return "is missing"
    if value is None:
        return "is null"
    return f"is not a scalar ({'an array' if isinstance(value, list | tuple) else 'an object'})"


def compile_template(text: str, *, allowed_roots: Collection[str] | None = None) -> Template:
    """Split `text` into literals and `{{ field.path }}` placeholders; `TemplateError` on bad syntax.

    `allowed_roots` restricts the first segment of every path (e.g. to the keys of `Event.to_dict()`), so a
    typo fails when the config is loaded rather than at the first event.
    """
    literals: list[str] = []
    paths: list[tuple[str, ...]] = []
    position = 0
    while (start := text.find(OPEN, position)) >= 0:
        end = text.find(CLOSE, start + len(OPEN))
        if end < 0:
            raise TemplateError(text, start, f"unclosed {OPEN!r}")
        inner = text[start + len(OPEN) : end]
        field = inner.strip()
        if not field:
            raise TemplateError(text, start, f"empty placeholder {text[start : end + len(CLOSE)]!r}")
        try:
            segments = split_path(field)
        except ValueError as exc:
            raise TemplateError(text, start, str(exc)) from None
        if allowed_roots is not None and segments[0] not in allowed_roots:
            allowed = ", ".join(sorted(allowed_roots))
            raise TemplateError(text, start, f"unknown field {field!r} (paths start with one of: {allowed})")
        literals.append(text[position:start])
        paths.append(segments)
        position = end + len(CLOSE)
    literals.append(text[position:])
    return Template(text, literals, paths)
