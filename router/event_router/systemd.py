"""systemd: sd_notify (a datagram to $NOTIFY_SOCKET; a no-op when not started by systemd), and the listening
sockets a `.socket` unit passes (`LISTEN_FDS`), matched to the inputs that serve them."""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
from collections.abc import Mapping
from dataclasses import dataclass

from event_router.api import ConfigError, Listener, RouterError, format_listen


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


#: the first descriptor systemd passes (after stdin, stdout, stderr): sd_listen_fds(3)
LISTEN_FDS_START = 3


@dataclass(frozen=True, slots=True)
class PassedSocket:
    """A listening socket systemd passed (`LISTEN_FDS`), as the router found it."""

    fd: int
    #: its `FileDescriptorName=` (systemd's default: the socket unit's name; "unknown" without LISTEN_FDNAMES)
    name: str
    sock: socket.socket
    host: str
    port: int

    def describe(self) -> str:
        return f"{format_listen(self.host, self.port)} (fd {self.fd}, FileDescriptorName={self.name})"


@dataclass(frozen=True, slots=True)
class PassedSockets:
    """What `listen_fds` found: the sockets, in descriptor order."""

    sockets: tuple[PassedSocket, ...] = ()
    #: why LISTEN_FDS was ignored (it was meant for another process), for the error of an input that needs one
    ignored: str | None = None


_passed: PassedSockets | None = None


def listen_fds() -> PassedSockets:
    """The listening sockets systemd passed to this process, read from the environment once per process.

    As `sd_listen_fds(unset_environment=1)`: `LISTEN_*` are removed from the environment (nothing the router
    starts takes them for its own) and the descriptors are made close-on-exec. They stay open for the life
    of the process: an input serves them again after a reload or a restart. RouterError for a descriptor
    that is not a listening TCP socket.
    """
    global _passed
    if _passed is None:
        _passed = _read_listen_fds()
    return _passed


def _read_listen_fds() -> PassedSockets:
    count = os.environ.pop("LISTEN_FDS", None)
    pid = os.environ.pop("LISTEN_PID", None)
    names = os.environ.pop("LISTEN_FDNAMES", None)
    if count is None:
        return PassedSockets()
    if pid != str(os.getpid()):
        # systemd gives LISTEN_PID the service's main process: a shell or wrapper in ExecStart= that starts
        # the router as its child keeps the sockets to itself
        return PassedSockets(ignored=f"LISTEN_FDS was meant for process {pid}, not for the router ({os.getpid()})")
    try:
        number = int(count)
    except ValueError:
        raise RouterError(f"LISTEN_FDS={count!r} is not a number of descriptors") from None
    labels = names.split(":") if names is not None else ["unknown"] * number
    if len(labels) != number:
        raise RouterError(f"LISTEN_FDNAMES has {len(labels)} names for {number} descriptors (LISTEN_FDS)")
    found = []
    for fd, name in zip(range(LISTEN_FDS_START, LISTEN_FDS_START + number), labels, strict=True):
        what = f"descriptor {fd} (FileDescriptorName={name}) that systemd passed"
        try:
            is_socket = stat.S_ISSOCK(os.fstat(fd).st_mode)
        except OSError as exc:
            raise RouterError(f"{what} cannot be used: {exc.strerror}") from None
        if not is_socket:
            raise RouterError(f"{what} is not a socket: the router takes ListenStream= sockets only")
        sock = socket.socket(fileno=fd)  # family and type are read from the descriptor
        if (
            sock.family not in (socket.AF_INET, socket.AF_INET6)
            or sock.type != socket.SOCK_STREAM
            or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        ):
            sock.detach()
            raise RouterError(
                f"{what} is not a listening TCP socket: the router takes ListenStream= with an address and port"
                " (not a Unix socket, datagrams or Accept=yes)"
            )
        sock.set_inheritable(False)
        host, port = sock.getsockname()[:2]
        found.append(PassedSocket(fd, name, sock, host, port))
    return PassedSockets(tuple(found))


def _same_address(listener: Listener, passed: PassedSocket) -> bool:
    if listener.port != passed.port:
        return False
    try:
        return ipaddress.ip_address(listener.host) == ipaddress.ip_address(passed.host)
    except ValueError:  # a host name: the socket's address is a number
        return False


def assign_sockets(
    listeners: Mapping[str, Listener | None], passed: PassedSockets, *, file: str = "router.toml"
) -> list[ConfigError]:
    """Give each passed socket to its input (`Listener.passed`), or, if anything does not fit, none: the errors.

    A socket whose `FileDescriptorName=` is an input's name is that input's, and must listen on the input's
    address; any other goes to the input that listens on its address. A socket that fits no input, and an
    input that requires one and has none, are errors: connections would wait for ever on the one, and the
    other would bind a port of its own and refuse connections while it restarts.
    """
    errors: list[ConfigError] = []
    taken: dict[str, PassedSocket] = {}
    for item in passed.sockets:
        name = item.name if item.name in listeners else None
        if name is not None:
            listener = listeners[name]
            if listener is None:
                errors.append(
                    ConfigError(
                        f"inputs.{name}",
                        f"systemd passed a socket named after this input, {item.describe()}, but it does not"
                        " listen on a port",
                        file=file,
                    )
                )
                continue
            if not _same_address(listener, item):
                errors.append(
                    ConfigError(
                        f"inputs.{name}.listen",
                        f"is {format_listen(listener.host, listener.port)}, but the socket systemd passed for"
                        f" this input listens on {item.describe()}: make them the same (ListenStream= in the"
                        " .socket unit)",
                        file=file,
                    )
                )
                continue
        else:
            name = next(
                (n for n, lst in listeners.items() if lst is not None and _same_address(lst, item)),
                None,
            )
            if name is None:
                listening = [
                    f"{n} on {format_listen(lst.host, lst.port)}" for n, lst in listeners.items() if lst is not None
                ]
                errors.append(
                    ConfigError(
                        "inputs",
                        f"systemd passed a socket on {item.describe()} that no input listens on: set an input's"
                        " listen to its address, or FileDescriptorName= in the .socket unit to the input's name"
                        f" (inputs that listen: {', '.join(listening) or 'none'})",
                        file=file,
                    )
                )
                continue
        if name in taken:
            errors.append(
                ConfigError(
                    f"inputs.{name}",
                    f"systemd passed two sockets for this input: {taken[name].describe()} and {item.describe()}",
                    file=file,
                )
            )
            continue
        taken[name] = item
    for name, listener in listeners.items():
        if listener is not None and listener.required and name not in taken:
            if passed.ignored is not None:
                why = passed.ignored + ": ExecStart= must run the router itself"
            elif not passed.sockets:
                why = "no LISTEN_FDS: start the router through its .socket unit (packaging/event-router.socket)"
            else:
                why = "none has FileDescriptorName= this input's name or listens on its address"
            errors.append(
                ConfigError(
                    f"inputs.{name}.{listener.required_key}",
                    f"requires a listening socket from systemd, but systemd passed none for this input ({why})",
                    file=file,
                )
            )
    if not errors:  # all or nothing: a refused reload leaves the running inputs' sockets as they were
        for name, listener in listeners.items():
            if listener is not None:
                listener.passed = taken[name].sock if name in taken else None
    return errors
