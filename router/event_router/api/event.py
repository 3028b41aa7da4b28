"""The one normalised event model every input produces and every output receives."""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

#: the keys of an event's JSON form: what routes match on and templates may name
EVENT_FIELDS: tuple[str, ...] = ("data", "id", "meta", "received_at", "source", "trigger")


#: ids need uniqueness, not secrecy: a PRNG seeded from the OS once beats a getrandom() call per event
_random = random.Random(os.urandom(32))


def new_event_id() -> str:
    """A UUIDv7 string: unique, and sortable by creation time (spool order, log correlation)."""
    ms = time.time_ns() // 1_000_000
    rand = _random.getrandbits(74)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 62) << 64 | 0b10 << 62 | (rand & ((1 << 62) - 1))
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


#: (second, its "YYYY-MM-DDTHH:MM:SS"): every event gets a timestamp, most of them in the same second
_stamp: tuple[int, str] = (-1, "")


def utc_now() -> str:
    """Now as RFC 3339 UTC with milliseconds and `Z`, the form the Connector uses for its dates."""
    global _stamp
    second, milli = divmod(time.time_ns() // 1_000_000, 1000)
    cached = _stamp  # one read: another thread may replace it meanwhile
    if cached[0] != second:
        cached = _stamp = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{cached[1]}.{milli:03d}Z"


@dataclass(frozen=True, slots=True)
class SourceMessage:
    """The id a source gave the message an event came in, when it may send that message again (a retry)."""

    id: str
    #: Unix time (wall clock) until which a repeat may still arrive and is recognised as one
    until: float


@dataclass(slots=True)
class Event:
    """A Connector event as the router sees it, whatever input it came from.

    `data` is the Connector's payload untouched; `None` means the Connector sent none (the webhook body had
    no `data` key). `meta` holds transport details (headers, routing key, topic, redelivery count...).
    """

    trigger: str
    data: Any
    source: str
    id: str = field(default_factory=new_event_id)
    received_at: str = field(default_factory=utc_now)
    meta: dict[str, Any] = field(default_factory=dict)
    #: the bytes the input decoded `data` from, when it has them: kept until the event is stored, so
    #: an event that cannot be stored as JSON (nested too deeply) is dead-lettered without loss
    raw: bytes | None = field(default=None, repr=False, compare=False)
    #: set by an input whose source repeats messages (Standard Webhooks `webhook-id`): the spool stores the
    #: event only if it stored none with this id from this input before (until `until`), in the same commit;
    #: a repeat gets `SubmitResult.status` "duplicate". Not part of the event's JSON form.
    message: SourceMessage | None = field(default=None, repr=False, compare=False)

    @property
    def recovered(self) -> bool:
        """Rebuilt from the Connector's REST state by gap recovery (`meta.recovered` is true), not received as
        the Connector raised it: the spool stores it only if no event announced the same before."""
        return self.meta.get("recovered") is True

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written by the file output and matched by routes."""
        return {
            "id": self.id,
            "trigger": self.trigger,
            "source": self.source,
            "received_at": self.received_at,
            "data": self.data,
            "meta": self.meta,
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> Event:
        return cls(
            id=value["id"],
            trigger=value["trigger"],
            source=value["source"],
            received_at=value["received_at"],
            data=value.get("data"),
            meta=value.get("meta") or {},
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> Event:
        return cls.from_dict(orjson.loads(raw))
