"""`host:port` listen addresses, as inputs and the admin endpoint take them."""

from __future__ import annotations

import errno
import ipaddress
import re
import socket
from dataclasses import dataclass

from event_router.api.errors import ConfigError

_LISTEN = re.compile(r"^(?P<host>\[[0-9a-fA-F:.]+\]|[^:\[\]]+):(?P<port>\d{1,5})$")


def parse_listen(value: str) -> tuple[str, int]:
    """(host, port) of "127.0.0.1:8787" or "[::1]:8787"; ValueError naming the accepted form otherwise."""
    match = _LISTEN.match(value)
    if not match or not 0 <= int(match["port"]) < 65536:
        raise ValueError(f"{value!r} is not host:port (e.g. 127.0.0.1:8787)")
    return match["host"].strip("[]"), int(match["port"])


def is_loopback(host: str) -> bool:
    """Whether `host` (a listen address's) is this machine's loopback only: `localhost`, 127.0.0.0/8, ::1.
    A wildcard (0.0.0.0, ::) or any other name or address is not: it may be reached from elsewhere."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost: whatever it resolves to, it is not ours to assume
        return False


def format_listen(host: str, port: int) -> str:
    """`host:port` as messages show it; an IPv6 host in brackets: `[::1]:8787`. The inverse of `parse_listen`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen_error(key: str, host: str, port: int, exc: OSError, *, file: str = "router.toml") -> ConfigError:
    """`exc` (from binding host:port) as one line naming `key`: `127.0.0.1:8787 is already in use`."""
    where = format_listen(host, port)
    if exc.errno == errno.EADDRINUSE:
        message = f"{where} is already in use"
    elif exc.errno == errno.EADDRNOTAVAIL:
        message = f"cannot listen on {where}: {host} is not an address of this host"
    elif exc.errno == errno.EACCES:
        message = f"cannot listen on {where}: permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)"
    else:
        message = f"cannot listen on {where}: {exc.strerror or exc}"
    return ConfigError(key, message, file=file)


@dataclass(slots=True, eq=False)
class Listener:
    """Where an input accepts connections: lets the router hand it a listening socket systemd passed.

    An input that listens on a TCP port sets `self.listener = Listener(host, port)` in its constructor. The
    router matches each socket systemd passes (`LISTEN_FDS`, a `.socket` unit) to an input, by the socket's
    `FileDescriptorName=` (the input's name) or by its address (the input's `host:port`), and sets `passed`
    before `run`. An input given one serves it instead of binding `host:port`, and never closes it (the
    router keeps it open for the life of the process, for the input's next run after a reload or a restart;
    serve a `os.dup` of it if the server closes what it is given): connections made meanwhile wait in the
    kernel's queue instead of being refused.
    """

    host: str
    port: int
    #: the input must not start without a passed socket (the webhook's `socket = "systemd"`): the router
    #: refuses to start, naming `required_key`, when none matches it
    required: bool = False
    #: the key that asks for one, as the refusal names it (relative to the input's table)
    required_key: str = "socket"
    #: the listening socket systemd passed for this input, or None: bind `host:port`
    passed: socket.socket | None = None
