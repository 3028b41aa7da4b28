"""Standard Webhooks signatures (https://www.standardwebhooks.com), so a receiver can verify a POST came from us.

Three headers: `webhook-id` (the event id: the same on every retry, so receivers can drop duplicates),
`webhook-timestamp` (Unix seconds of this attempt) and `webhook-signature` = `v1,<base64 HMAC-SHA256 of
"<id>.<timestamp>.<body>">`. The secret is `whsec_<base64 of the key>`, as Standard Webhooks libraries
generate and read it; the key itself is the base64-decoded part.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Final

__all__ = ["PLACEHOLDER_SECRET", "SECRET_PREFIX", "WebhookSigner", "decode_secret", "sign", "verify"]

SECRET_PREFIX: Final = "whsec_"
#: Standard Webhooks asks for keys of 24 to 64 bytes
MIN_KEY_BYTES: Final = 24
#: a well-formed secret standing in for one not resolved (`secret_schema`): a key of 32 zero bytes
PLACEHOLDER_SECRET: Final = SECRET_PREFIX + base64.b64encode(bytes(32)).decode("ascii")
#: how far a timestamp may be from now when verifying (the spec's suggestion)
DEFAULT_TOLERANCE: Final = 300


def decode_secret(secret: str) -> bytes:
    """The key in a `whsec_<base64>` secret; `ValueError` (without the secret in it) when it is not one."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"a signing secret starts with {SECRET_PREFIX!r} followed by base64")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the part after {SECRET_PREFIX!r} is not valid base64") from None
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the key is {len(key)} bytes; Standard Webhooks asks for at least {MIN_KEY_BYTES}")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256>` of `<msg_id>.<timestamp>.<body>`."""
    # surrogateescape: an id received with bytes that are not UTF-8 is signed as those bytes, not a failure
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode("utf-8", "surrogateescape") + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


class WebhookSigner:
    """Signs request bodies with one secret."""

    def __init__(self, secret: str) -> None:
        self._key = decode_secret(secret)

    def headers(self, msg_id: str, body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
        ts = int(time.time()) if timestamp is None else timestamp
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": sign(self._key, msg_id, ts, body),
        }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> bool:
    """What a receiver does: True when one of the `v1` signatures matches and the timestamp is recent.

    `headers` must look names up case-insensitively (aiohttp's and the stdlib's header objects do) or use
    the lower-case names.
    """
    key = decode_secret(secret)
    msg_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    given = headers.get("webhook-signature")
    if not msg_id or not stamp or not given or not stamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(stamp)) > tolerance:
        return False
    expected = sign(key, msg_id, int(stamp), body)
    # several space-separated signatures are allowed (key rotation)
    # compared as bytes: compare_digest refuses strings with characters beyond ASCII, which a client may send
    wanted = expected.encode()
    return any(hmac.compare_digest(wanted, candidate.encode("utf-8", "surrogateescape")) for candidate in given.split())
