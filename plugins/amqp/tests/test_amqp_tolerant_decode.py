"""The tolerant pamqp decoders: valid UTF-8 exactly as pamqp decodes it, any other bytes kept as surrogates."""

from __future__ import annotations

import re
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pamqp import decode

from event_router_amqp import tolerant_decode
from event_router_amqp.common import json_safe, wire_text

#: pamqp's own decoders, as the module imported them (install() replaces only the table entries)
STRICT_SHORT_STR = decode.short_str
STRICT_FIELD_TABLE = decode.field_table


def is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def table(entries: dict[bytes, bytes]) -> bytes:
    """A field table of these keys, each with its value as a long string."""
    data = b"".join(bytes([len(k)]) + k + b"S" + struct.pack(">I", len(v)) + v for k, v in entries.items())
    return struct.pack(">I", len(data)) + data


@given(name=st.binary(max_size=255), rest=st.binary(max_size=8))
def test_a_short_string_decodes_as_pamqp_does_or_keeps_its_bytes(name: bytes, rest: bytes) -> None:
    data = bytes([len(name)]) + name + rest
    consumed, text = tolerant_decode.short_str(data)
    assert consumed == len(name) + 1
    assert text.encode("utf-8", "surrogateescape") == name
    if is_utf8(name):
        assert (consumed, text) == STRICT_SHORT_STR(data)
    else:
        with pytest.raises(UnicodeDecodeError):
            STRICT_SHORT_STR(data)


@given(entries=st.dictionaries(st.binary(max_size=20), st.binary(max_size=8), max_size=4))
def test_a_field_table_decodes_as_pamqp_does_or_keeps_its_keys_bytes(entries: dict[bytes, bytes]) -> None:
    data = table(entries)
    consumed, decoded = tolerant_decode.field_table(data + b"rest")
    assert consumed == len(data)
    assert {k.encode("utf-8", "surrogateescape") for k in decoded} == set(entries)
    if all(is_utf8(k) for k in entries):
        assert (consumed, decoded) == STRICT_FIELD_TABLE(data + b"rest")
    else:
        with pytest.raises(UnicodeDecodeError):
            STRICT_FIELD_TABLE(data)


def test_once_installed_nested_tables_and_properties_decode_tolerantly() -> None:
    tolerant_decode.install()
    tolerant_decode.install()  # again: nothing changes
    assert decode.METHODS["shortstr"] is tolerant_decode.short_str
    assert decode.METHODS["table"] is decode.TABLE_MAPPING[b"F"] is tolerant_decode.field_table
    inner = table({b"\xff": b"v"})
    array = b"A" + struct.pack(">I", len(inner) + 1) + b"F" + inner
    data = struct.pack(">I", 2 + len(array)) + b"\x01a" + array
    assert decode.by_type(data, "table") == (len(data), {"a": [{"\udcff": "v"}]})
    assert decode.by_type(b"\x02\xc3x", "shortstr") == (3, "\udcc3x")


@pytest.mark.parametrize(
    ("tolerant", "strict", "data"),
    [
        (tolerant_decode.short_str, STRICT_SHORT_STR, b""),
        (tolerant_decode.field_table, STRICT_FIELD_TABLE, b"\x00\x00"),
        (tolerant_decode.field_table, STRICT_FIELD_TABLE, b"\x00\x00\x00\x09\x05ab"),
        (tolerant_decode.field_table, STRICT_FIELD_TABLE, b"\x00\x00\x00\x03\x05ab"),
    ],
)
def test_truncated_data_fails_as_in_pamqp(tolerant: Any, strict: Any, data: bytes) -> None:
    with pytest.raises(ValueError) as expected:
        strict(data)
    with pytest.raises(ValueError, match=re.escape(str(expected.value))):
        tolerant(data)


@pytest.mark.parametrize(
    ("name", "stored"),
    [
        ("transport.messageReceived", "transport.messageReceived"),
        ("trånsport", "trånsport"),
        (b"transport.\xffbad".decode("utf-8", "surrogateescape"), "transport.\\xffbad"),
        (b"\xed\xa0\x80 \xc3\xa5".decode("utf-8", "surrogateescape"), "\\xed\\xa0\\x80 å"),
        ("\ud800", "\\ud800"),  # no decoder makes it; shown, not refused
    ],
)
def test_names_are_stored_as_their_text_other_bytes_as_escapes(name: str, stored: str) -> None:
    assert wire_text(name) == stored
    assert json_safe({name: [name]}) == {stored: [stored]}
