"""What an event announced: the key the spool keeps for every stored event that gap recovery could rebuild,
so recovery stores only what no event announced before (docs/recovery.md).

A key names the trigger, the id of the DTO the event is about and, where the same DTO is announced again in
another state, that state: a request's new status, a relationship's audit-log length or its peer's
deletion status.
A live event and the event recovery rebuilds from the Connector's REST state for the same change get the
same key. The spool keeps `<date>|<digest>`: the date of the change as the DTO states it (a message's
`createdAt`, the last audit-log entry's...), so keys sort by time, new ones are appended at the end of the
index rather than spread over it, and those older than the retention go in one range delete; then a
12-byte digest of the text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

__all__ = ["REBUILT_TRIGGERS", "announced_key", "announced_text", "key_cutoff"]

#: triggers whose data is `{request, oldStatus, newStatus}`
_STATUS_CHANGES = frozenset({"consumption.incomingRequestStatusChanged", "consumption.outgoingRequestStatusChanged"})
#: triggers whose data is a RelationshipDTO that recovery rebuilds
_RELATIONSHIPS = frozenset({"transport.relationshipChanged", "transport.peerToBeDeleted", "transport.peerDeleted"})
_PEER_DELETION = frozenset({"transport.peerToBeDeleted", "transport.peerDeleted"})
#: the triggers gap recovery may rebuild: only their events need a key (others cost nothing). Not
#: attributeDeleted: the Connector removes the attribute before it raises it, so recovery never lists it
REBUILT_TRIGGERS = frozenset(
    {
        "transport.messageReceived",
        "transport.messageSent",
        "consumption.incomingRequestReceived",
        *_STATUS_CHANGES,
        *_RELATIONSHIPS,
        "consumption.attributeCreated",
        "consumption.attributeSucceeded",
    }
)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def announced_text(trigger: str, data: Any) -> tuple[str, str] | None:
    """(date, key text) of what an event with `trigger` and `data` announced; None for a trigger recovery
    does not rebuild, or data without the id or date it needs."""
    if trigger not in REBUILT_TRIGGERS or not isinstance(data, Mapping):
        return None
    state = ""
    if trigger in _STATUS_CHANGES:
        request = data.get("request")
        if not isinstance(request, Mapping):
            return None
        ident = _text(request.get("id"))
        response = request.get("response")
        date = _text(response.get("createdAt")) if isinstance(response, Mapping) else None
        date = date or _text(request.get("createdAt"))
        state = str(data.get("newStatus", ""))
    elif trigger in _RELATIONSHIPS:
        log = data.get("auditLog")
        if not isinstance(log, list) or not log or not isinstance(log[-1], Mapping):
            return None
        ident = _text(data.get("id"))
        date = _text(log[-1].get("createdAt"))
        deletion = data.get("peerDeletionInfo")
        deleting = deletion.get("deletionStatus", "") if isinstance(deletion, Mapping) else ""
        # each trigger its own part of the state: a peer's deletion, announced by its own triggers, must not
        # make the relationship's last change look new
        state = deleting if trigger in _PEER_DELETION else str(len(log))
        if trigger in _PEER_DELETION:
            # a peer's deletion adds no audit-log entry: its key is dated by `deletionDate` (the end of the
            # grace period, or when it was deleted), so it is kept as long as recovery may list it
            date = _text(deletion.get("deletionDate")) if isinstance(deletion, Mapping) else None
    elif trigger == "consumption.attributeSucceeded":
        successor = data.get("successor")
        if not isinstance(successor, Mapping):
            return None
        ident, date = _text(successor.get("id")), _text(successor.get("createdAt"))
    else:
        ident, date = _text(data.get("id")), _text(data.get("createdAt"))
    if ident is None or date is None:
        return None
    return date, f"{trigger}\x1f{ident}\x1f{state}"


def announced_key(trigger: str, data: Any) -> bytes | None:
    """The key the spool keeps: `<date>|` and a 12-byte digest of `announced_text` (None: no key)."""
    found = announced_text(trigger, data)
    if found is None:
        return None
    date, text = found
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=12).digest()
    return date.encode("utf-8", "surrogatepass")[:40] + b"|" + digest


def key_cutoff(date: str) -> bytes:
    """Keys below this one are of changes before `date` (RFC 3339 UTC, the Connector's form)."""
    return date.encode()
