"""Who runs an operator command, for what the spool records of it (who paused an output, who replayed a
dead letter)."""

from __future__ import annotations

import getpass
import os
import socket


def operator() -> str:
    """The user (the one behind sudo) at this host."""
    try:
        user = os.environ.get("SUDO_USER") or getpass.getuser()
    except (OSError, KeyError):  # no name for this uid (a container)
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()}"
