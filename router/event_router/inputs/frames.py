"""Length-prefixed frames over a stream socket: how the router talks to the processes it starts itself.

A frame is a 9-byte header (payload length, one kind byte, a 32-bit request id) and its payload. Both ends
are asyncio protocols: `FrameReader.feed` takes whatever `data_received` got and returns the whole frames
in it, so a burst of small requests costs one read and one loop wake-up, not one each.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import cast

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


class FrameChannel(asyncio.Protocol):
    """One end of a channel: frames in (`on_frame`), frames out (`send`), written together once per loop pass
    (one syscall and one wake-up of the peer for a burst, not one each)."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.transport: asyncio.Transport | None = None
        self.reader = FrameReader()
        self._out: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.reader.feed(data)
        except FrameError as exc:
            self.log.error("broken frame on a channel: closing it", extra={"error": str(exc)})
            self.close()
            return
        for kind, rid, payload in frames:
            self.on_frame(kind, rid, payload)

    def on_frame(self, kind: int, rid: int, payload: bytes) -> None:
        """One whole frame from the peer."""
        raise NotImplementedError

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def send(self, frame: bytes) -> None:
        if not self._out:
            asyncio.get_running_loop().call_soon(self.flush)
        self._out.append(frame)

    def flush(self) -> None:
        out, self._out = self._out, []
        if out and self.open:
            assert self.transport is not None
            self.transport.write(b"".join(out))

    def close(self) -> None:
        """Write what is queued, then close."""
        self.flush()
        if self.transport is not None:
            self.transport.close()
