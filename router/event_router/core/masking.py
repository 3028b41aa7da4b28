"""Masking events' data for people who may not see it (the live tap, the console).

Events carry personal data (identities, messages, attribute values), so what the admin endpoint shows of
an event's `data` is masked: every string and number becomes `MASKED`, except

- values under the DTOs' bookkeeping keys (ids, types, statuses, `...Id`, `...At` dates), and
- a value the event's JSON Schema fixes at that place (`enum` or `const`: a relationship's
  `peerDeletionInfo.deletionStatus`, a Mail's `bodyFormat`), and only when the value is one of those the
  schema lists there. What such a value can show is text of the schema itself, never something a person
  wrote; an event that does not validate shows no more than a valid one.

`fixed_values` derives, once per schema when the schemas are loaded, a tree of the places whose values are
fixed (`Fixed`); `mask` follows that tree beside the data, so masking an event costs no schema walk.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urldefrag, urljoin

#: what a masked value shows
MASKED = "***"
#: keys whose values are the DTOs' own bookkeeping, not personal data: shown in masked records too
_PLAIN_KEYS = frozenset({"@type", "id", "status", "oldStatus", "newStatus", "isOwn", "type", "result", "code"})

Literal = str | int | float


@dataclass(eq=False, slots=True)
class Fixed:
    """One place in an event's data (the root, a key of an object, the items of an array) as the schema
    describes it: the values a string or number here may show (`values`), and the places below it that
    have some (`keys`, `items`). A place the schema leaves open has no `Fixed`."""

    values: frozenset[Literal] = frozenset()
    keys: dict[str, Fixed] = field(default_factory=dict)
    items: Fixed | None = None


def mask(value: Any, fixed: Fixed | None = None, key: str | None = None) -> Any:
    """`value` with every string and number replaced by `MASKED`, except under bookkeeping keys and where
    `fixed` (`fixed_values` of the event's schema; None: no schema) lists it; the structure, booleans and
    nulls stay."""
    if isinstance(value, Mapping):
        keys = fixed.keys if fixed is not None else {}
        return {k: mask(v, keys.get(k), k) for k, v in value.items()}
    if isinstance(value, list):
        items = fixed.items if fixed is not None else None
        return [mask(v, items, key) for v in value]
    if value is None or isinstance(value, bool):
        return value
    if key is not None and (key in _PLAIN_KEYS or key.endswith(("Id", "At"))):
        return value
    if fixed is not None and isinstance(value, str | int | float) and value in fixed.values:
        return value
    return MASKED


# --- deriving the tree from the schemas ----------------------------------------------------------------
#
# A place in the data is described by an expression over the subschemas that apply to it: a conjunction
# ("all": a schema's own keywords, its `$ref`, its `allOf`) of leaves and disjunctions ("any": the
# alternatives of `anyOf`/`oneOf`, the `then`/`else` branches of a conditional; `if` and `not` only test).
# A subschema that says nothing of a place (no such property) drops out of both. Per kind of value
# (strings, numbers) a place is then
# - fixed to a set of literals: a leaf with `enum`/`const`; in a conjunction, any fixed part fixes it
#   (the value must satisfy them all); in a disjunction, only when every part that says something fixes it;
# - open: a leaf that takes any string (number) of some shape (`type`, `pattern`, `minLength`, ...) and
#   lists none; an open alternative opens the disjunction, whatever the others fix.
# A branch of a conditional counts as if its condition held: a Mail's `bodyFormat` is fixed although the
# schema of message content fixes it only for `@type: Mail`. A value shows only if it is one of the literals
# (`mask`), so where the condition did not hold, what can show is still only text of the schema.

#: what a place is, per kind of value: the literals it is fixed to, or open (None); absent: nothing said
_Status = dict[str, frozenset[Literal] | None]
#: a leaf (a subschema where it applies: base URI, the schema's id()) or ("all"|"any", parts)
_Expr = tuple[Any, ...]

#: keywords that describe a string, or a number, without fixing it
_OPEN_BY = {
    "string": frozenset({"pattern", "format", "minLength", "maxLength"}),
    "number": frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}),
}
_TYPES = {"string": "string", "number": "number", "integer": "number"}


class _Resolver:
    """`$ref`s among the loaded schema documents, as the validator resolves them (base URIs from `$id`,
    JSON pointers in fragments); nothing is fetched. A reference it cannot follow (an `$anchor`, a
    `$dynamicRef`) says nothing of the place, which masks more, never less."""

    def __init__(self, documents: Mapping[str, Mapping[str, Any]]):
        self._resources: dict[str, Mapping[str, Any]] = {}
        for uri, document in documents.items():
            self._index(uri, document)

    def _index(self, base: str, schema: Any) -> None:
        if isinstance(schema, Mapping):
            if isinstance(schema.get("$id"), str):
                base = urljoin(base, schema["$id"])
                self._resources.setdefault(urldefrag(base).url, schema)
            for value in schema.values():
                self._index(base, value)
        elif isinstance(schema, list):
            for value in schema:
                self._index(base, value)

    def resolve(self, base: str, ref: str) -> tuple[str, Mapping[str, Any]] | None:
        uri, fragment = urldefrag(urljoin(base, ref))
        target: Any = self._resources.get(uri)
        if target is None or (fragment and not fragment.startswith("/")):
            return None
        for token in fragment.split("/")[1:] if fragment else ():
            part = unquote(token).replace("~1", "/").replace("~0", "~")
            if isinstance(target, Mapping) and part in target:
                target = target[part]
            elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            else:
                return None
        return (uri, target) if isinstance(target, Mapping) else None


def _join(kind: str, parts: Iterable[_Expr | None]) -> _Expr | None:
    found = frozenset(part for part in parts if part is not None)
    if not found:
        return None
    if len(found) == 1:
        return next(iter(found))
    return (kind, found)


class _Builder:
    def __init__(self, resolver: _Resolver):
        self._resolver = resolver
        #: the schema objects of the leaves, by id(): they live as long as the documents
        self._schemas: dict[int, Mapping[str, Any]] = {}
        self._expanded: dict[tuple[str, int], _Expr | None] = {}
        #: one Fixed per expression: shared DTOs are built once, and a recursive schema (request item
        #: groups) becomes a cycle in the tree rather than an endless walk
        self._built: dict[_Expr, Fixed] = {}
        self._statuses: dict[_Expr, _Status] = {}

    def expand(self, base: str, schema: Mapping[str, Any]) -> _Expr | None:
        """The expression for the place `schema` applies to."""
        if isinstance(schema.get("$id"), str):
            base = urljoin(base, schema["$id"])
        key = (base, id(schema))
        if key in self._expanded:  # also a `$ref` loop at one place: it adds nothing the first pass has not
            return self._expanded[key]
        self._expanded[key] = None
        self._schemas[id(schema)] = schema
        parts: list[_Expr | None] = [("leaf", base, id(schema))]
        if isinstance(schema.get("$ref"), str) and (target := self._resolver.resolve(base, schema["$ref"])):
            parts.append(self.expand(*target))
        parts.extend(self.expand(base, sub) for sub in schema.get("allOf", ()) if isinstance(sub, Mapping))
        for keyword in ("anyOf", "oneOf"):
            alternatives = [self.expand(base, sub) for sub in schema.get(keyword, ()) if isinstance(sub, Mapping)]
            parts.append(_join("any", alternatives))
        branches = [self.expand(base, schema[k]) for k in ("then", "else") if isinstance(schema.get(k), Mapping)]
        parts.append(_join("any", branches))
        expr = self._expanded[key] = _join("all", parts)
        return expr

    def _below(self, expr: _Expr, step: str | None) -> _Expr | None:
        """The expression for the value under key `step` (None: an array's items) of the place `expr`."""
        if expr[0] == "leaf":
            schema = self._schemas[expr[2]]
            sub = schema.get("items") if step is None else (schema.get("properties") or {}).get(step)
            return self.expand(expr[1], sub) if isinstance(sub, Mapping) else None
        return _join(expr[0], (self._below(part, step) for part in expr[1]))

    def _names(self, expr: _Expr) -> set[str]:
        if expr[0] == "leaf":
            properties = self._schemas[expr[2]].get("properties")
            return {name for name in properties if isinstance(name, str)} if isinstance(properties, Mapping) else set()
        return set().union(*(self._names(part) for part in expr[1]))

    def _status(self, expr: _Expr) -> _Status:
        if expr in self._statuses:
            return self._statuses[expr]
        if expr[0] == "leaf":
            status = self._statuses[expr] = _leaf_status(self._schemas[expr[2]])
            return status
        statuses = [self._status(part) for part in expr[1]]
        result: _Status = {}
        for kind in _OPEN_BY:
            said = [status[kind] for status in statuses if kind in status]
            fixed = [values for values in said if values is not None]
            if not said:
                continue
            if expr[0] == "all":
                result[kind] = frozenset().union(*fixed) if fixed else None
            else:
                result[kind] = None if len(fixed) < len(said) else frozenset().union(*fixed)
        self._statuses[expr] = result
        return result

    def build(self, expr: _Expr) -> Fixed:
        if expr in self._built:
            return self._built[expr]
        status = self._status(expr)
        node = self._built[expr] = Fixed(values=frozenset().union(*(v for v in status.values() if v is not None)))
        for name in sorted(self._names(expr)):
            below = self._below(expr, name)
            if below is not None:
                node.keys[name] = self.build(below)
        items = self._below(expr, None)
        node.items = None if items is None else self.build(items)
        return node


def _leaf_status(schema: Mapping[str, Any]) -> _Status:
    """What `schema`'s own keywords say of a string or number (nothing of the subschemas it holds)."""
    if "const" in schema or "enum" in schema:
        listed = [schema["const"]] if "const" in schema else list(schema["enum"])
        # booleans and nulls show anyway (and True == 1 would let a 1 through a `const: true`)
        strings = frozenset(v for v in listed if isinstance(v, str))
        numbers = frozenset(v for v in listed if isinstance(v, int | float) and not isinstance(v, bool))
        return {"string": strings, "number": numbers}
    kind = schema.get("type")
    types = {_TYPES.get(t) for t in ([kind] if isinstance(kind, str) else kind if isinstance(kind, list) else [])}
    return {k: None for k, keywords in _OPEN_BY.items() if k in types or keywords & schema.keys()}


def _useful(roots: Iterable[Fixed]) -> set[int]:
    """The ids of the places under `roots` that show something, or have such a place below them; the
    others are left out of the trees (a place without a `Fixed` is masked the same)."""
    nodes: list[Fixed] = []
    stack, seen = list(roots), set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        nodes.append(node)
        stack.extend(_children(node))
    useful = {id(node) for node in nodes if node.values}
    grew = True
    while grew:  # a fixed point: cycles (recursive schemas) settle once nothing new is found
        grew = False
        for node in nodes:
            if id(node) not in useful and any(id(child) in useful for child in _children(node)):
                useful.add(id(node))
                grew = True
    for node in nodes:
        node.keys = {k: child for k, child in node.keys.items() if id(child) in useful}
        if node.items is not None and id(node.items) not in useful:
            node.items = None
    return useful


def _children(node: Fixed) -> Iterator[Fixed]:
    yield from node.keys.values()
    if node.items is not None:
        yield node.items


def fixed_values(documents: Mapping[str, Mapping[str, Any]], roots: Mapping[str, str]) -> dict[str, Fixed | None]:
    """Per name in `roots` (an x-trigger), the `Fixed` tree of the schema document whose `$id` it maps to;
    `documents`: every loaded schema document by `$id` (what `$ref`s may reach)."""
    builder = _Builder(_Resolver(documents))
    trees: dict[str, Fixed | None] = {}
    for name, uri in roots.items():
        expr = builder.expand(uri, documents[uri])
        trees[name] = None if expr is None else builder.build(expr)
    useful = _useful(tree for tree in trees.values() if tree is not None)
    return {name: tree if tree is not None and id(tree) in useful else None for name, tree in trees.items()}
