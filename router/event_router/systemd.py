"""sd_notify: a datagram to $NOTIFY_SOCKET. No-op when not started by systemd."""

from __future__ import annotations

import os
import socket


def notify(*messages: str) -> bool:
    """Send `READY=1`, `STATUS=...` etc. Returns False when there is no socket to send to."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        # never block: this runs on the event loop, and a peer that stops reading (its queue holds a
        # few datagrams) must not freeze the router; a dropped STATUS or WATCHDOG is resent soon
        sock.setblocking(False)
        try:
            sock.connect(address)
            sock.sendall("\n".join(messages).encode())
        except OSError:
            return False
    return True
