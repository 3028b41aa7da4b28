"""Length-prefixed frames over a stream socket: how the router talks to the processes it starts itself.

A frame is a 9-byte header (payload length, one kind byte, a 32-bit request id) and its payload. Both ends
are asyncio protocols: `FrameReader.feed` takes whatever `data_received` got and returns the whole frames
in it, so a burst of small requests costs one read and one loop wake-up, not one each.
"""

from __future__ import annotations

import struct

HEADER = struct.Struct("!IBI")
#: a frame larger than this is a protocol error, not a big request: bodies are bounded by max_body_bytes
MAX_PAYLOAD = 128 * 1024 * 1024


class FrameError(Exception):
    """The peer sent something that is not a frame: the channel cannot be trusted any more."""


def encode(kind: bytes, rid: int, *parts: bytes) -> bytes:
    """One frame of `kind` (a single byte) for request `rid`, its payload the concatenated `parts`."""
    payload = b"".join(parts)
    return HEADER.pack(len(payload), kind[0], rid) + payload


class FrameReader:
    """Reassembles frames from a byte stream cut anywhere."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        """The frames completed by `data`, as (kind byte, request id, payload)."""
        buffer = self._buffer
        buffer += data
        frames: list[tuple[int, int, bytes]] = []
        start = 0
        size = HEADER.size
        while len(buffer) - start >= size:
            length, kind, rid = HEADER.unpack_from(buffer, start)
            if length > MAX_PAYLOAD:
                raise FrameError(f"frame of {length} bytes is larger than {MAX_PAYLOAD}")
            end = start + size + length
            if end > len(buffer):
                break
            frames.append((kind, rid, bytes(buffer[start + size : end])))
            start = end
        if start:
            del buffer[:start]
        return frames
