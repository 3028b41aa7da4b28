"""`host:port` listen addresses, as inputs and the admin endpoint take them."""

from __future__ import annotations

import re

_LISTEN = re.compile(r"^(?P<host>\[[0-9a-fA-F:.]+\]|[^:\[\]]+):(?P<port>\d{1,5})$")


def parse_listen(value: str) -> tuple[str, int]:
    """(host, port) of "127.0.0.1:8787" or "[::1]:8787"; ValueError naming the accepted form otherwise."""
    match = _LISTEN.match(value)
    if not match or not 0 <= int(match["port"]) < 65536:
        raise ValueError(f"{value!r} is not host:port (e.g. 127.0.0.1:8787)")
    return match["host"].strip("[]"), int(match["port"])
