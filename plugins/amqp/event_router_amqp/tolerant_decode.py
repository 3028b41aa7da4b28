"""Tolerant decoding of AMQP short strings and field-table keys, installed into pamqp's decode tables.

pamqp (4.0.1) decodes every short string (exchange, routing key, consumer tag, message id, content type...)
and every field-table key with a strict `.decode("utf-8")` (upstream issue gmr/pamqp#32). RabbitMQ does not
check them: it routes a message whose routing key or header key is not UTF-8 and delivers it. aiormq's frame
reader then fails on the `basic.deliver` or its content header and drops the connection, the broker requeues
the unacknowledged message and delivers it again: a poison message that loops forever and stalls everything
behind it in the queue, before the input ever sees it.

`install()` makes those decoders fall back to the `surrogateescape` error handler: each byte that is not
UTF-8 becomes a lone surrogate, so the original bytes stay recoverable (`name.encode("utf-8",
"surrogateescape")`) and the input can dead-letter the message and acknowledge it (see `input.py`). Valid
UTF-8 decodes exactly as before: only what strict decoding would have rejected changes. The tables are
process-wide, so this applies to every pamqp user in the process; it is installed from the code that
connects, which imports the client library anyway (routers without AMQP never import pamqp).
"""

from __future__ import annotations

import struct

from pamqp import common, decode

_strict_short_str = decode.short_str


def short_str(value: bytes) -> tuple[int, str]:
    """pamqp's `short_str`, with bytes that are not UTF-8 decoded as surrogates instead of an error."""
    try:
        return _strict_short_str(value)
    except UnicodeDecodeError:
        # strict decoding read the length byte before it failed on the text
        length = value[0]
        return length + 1, value[1 : length + 1].decode("utf-8", "surrogateescape")


def field_table(value: bytes) -> tuple[int, common.FieldTable]:
    """pamqp's `field_table` (4.0.1), with keys that are not UTF-8 decoded as surrogates instead of an error.

    Nested tables and arrays come back here through `decode.TABLE_MAPPING[b"F"]`, so their keys do too.
    """
    try:
        length = common.Struct.integer.unpack(value[0:4])[0]
        offset = 4
        data: common.FieldTable = {}
        field_table_end = offset + length
        if field_table_end > len(value):
            raise ValueError("Field table length exceeds available data")
        while offset < field_table_end:
            key_length = common.Struct.byte.unpack_from(value, offset)[0]
            offset += 1
            if offset + key_length > field_table_end:
                raise ValueError("Field table key length exceeds data")
            key = value[offset : offset + key_length].decode("utf-8", "surrogateescape")
            offset += key_length
            consumed, result = decode.embedded_value(value[offset:])
            offset += consumed
            data[key] = result
        return field_table_end, data
    except (struct.error, TypeError) as err:
        raise ValueError("Could not unpack data") from err


def install() -> None:
    """Put the tolerant decoders into pamqp's tables; calling it again changes nothing.

    `pamqp.base` looks decoders up in `decode.METHODS` for every method and property it unmarshals, and
    `decode.embedded_value` in `decode.TABLE_MAPPING` for every value in a table or array, at each call.
    """
    decode.METHODS["shortstr"] = short_str
    decode.METHODS["table"] = field_table
    decode.TABLE_MAPPING[b"F"] = field_table
