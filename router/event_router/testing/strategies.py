"""hypothesis strategies for property tests of the inputs: JSON values, hostile payloads, odd names.

Needs hypothesis (a dev dependency); nothing in the router imports this module.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import strategies as st

from event_router.testing import example_events

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False), st.text(max_size=20)
)
#: any JSON value orjson can write
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=25,
)

#: the Connector's example events in broker form: (namespace, compact JSON of data, `{}` without data)
CONNECTOR_MESSAGES: list[tuple[str, bytes]] = [
    (e["trigger"], orjson.dumps(e.get("data", {}))) for e in example_events()
]
TRIGGERS: list[str] = sorted({t for t, _ in CONNECTOR_MESSAGES})

#: payloads that break parsers: nesting beyond orjson's 1,024 levels and beyond the 254 it writes, numbers
#: beyond a double or 64 bits, duplicate keys, NUL bytes, lone surrogates, a BOM, bytes after the document
HOSTILE_PAYLOADS: list[bytes] = [
    b"",
    b"\x00",
    b"{}",
    b"null",
    b"[" * 5000 + b"]" * 5000,
    b"[" * 1024 + b"]" * 1024,
    b'{"a":' * 600 + b"1" + b"}" * 600,
    b"[" * 300 + b"]" * 300,
    b"1e400",
    b'{"n":-1e400}',
    str(2**70).encode(),
    b'{"n":' + str(-(2**70)).encode() + b"}",
    b'{"n":18446744073709551616}',
    b'{"a":1,"a":2}',
    b'{"id":"MSG\x00"}',
    b'{"id":"MSG\\u0000"}',
    b'"\\ud800"',
    b"\xef\xbb\xbf{}",
    b"{}\x00",
    b"\xff\xfe\xfd",
    b"\xc3\x28",
    b" \n\t{} ",
]

#: what a broker may carry as a message body
payloads = st.one_of(
    st.binary(max_size=300),
    st.builds(orjson.dumps, json_values),
    st.sampled_from(HOSTILE_PAYLOADS),
    st.sampled_from([p for _, p in CONNECTOR_MESSAGES]),
    # a Connector body cut short or with a byte put in: invalid JSON close to valid JSON
    st.builds(
        lambda body, at, insert: body[: at % (len(body) + 1)] + insert,
        st.sampled_from([p for _, p in CONNECTOR_MESSAGES]),
        st.integers(0, 10_000),
        st.binary(max_size=2),
    ),
)

#: text with what names rarely hold: NULs, controls, dots and slashes in odd places, non-ASCII, lone surrogates
odd_texts = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(codec="utf-8"), max_size=40),
    st.text(st.characters(exclude_categories=()), max_size=10),
    st.sampled_from(
        [
            "",
            " ",
            ".",
            "..",
            "a..b",
            ".transport",
            "transport.",
            "\x00",
            "transport.message\x00Received",
            "consumption.relationshipEvent.REL00000000000000001",
            "trånsport.mëssage",
            "\ud800",
            "x" * 255,
            *TRIGGERS,
        ]
    ),
)


def utf8_bytes(text: str) -> bytes:
    """`text` as UTF-8, lone surrogates as the bytes a careless encoder writes for them (invalid UTF-8)."""
    return text.encode("utf-8", "surrogatepass")


#: a name as bytes on the wire: mostly text, sometimes bytes that are not UTF-8
odd_names = st.one_of(st.builds(utf8_bytes, odd_texts), st.binary(max_size=40))


def json_of(value: Any) -> bytes:
    """Compact JSON, as the Connector writes it."""
    return orjson.dumps(value)
