"""Publish exactly as the enmeshed Connector does, and the other helpers of this plugin's tests.

The Connector (amqplib) sends `basic.publish(exchange, routing_key = namespace)` with a content header that
carries no properties at all: no content type, headers, message id or delivery mode (transient). aio-pika
cannot publish like that (it always adds a message id), so `ConnectorPublisher` speaks AMQP 0-9-1 over a plain
socket with pamqp's frame codec, which aio-pika depends on anyway; it writes the publish frames itself, so
that a test can also send what pamqp would not encode (names that are not UTF-8). The rest: broker
administration with unique names, queue depths as the broker counts them, polling, a private RabbitMQ node
a test can kill and restart. Used by this plugin's tests and benchmark.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self
from urllib.parse import unquote, urlsplit

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq.abc import DeliveredMessage
from pamqp import commands, frame, header, heartbeat
from pamqp.encode import encode_table_value

from event_router.testing import ServerProcess, example, free_port
from event_router_amqp import tolerant_decode
from event_router_amqp.errors import CLOSED_ERRORS


class ConnectorPublisher:
    """A blocking AMQP client that only publishes, the way the Connector's AMQP broker does.

    `publish()` buffers frames; `flush()` sends them and waits until the broker has processed every
    publish before it (a `basic.qos` round trip on the same channel), so a test knows the messages are
    routed. A missing exchange or an access error surfaces as `RuntimeError` with the broker's text.

    Routed is not promised: without confirms the broker never says that a queue took a message (one that
    refuses it, full or gone, drops it silently). With `confirms` (which the Connector does not use)
    `flush()` waits instead until the broker confirmed every message and raises for one it refused, so a
    test that counts on the queue holding all of them knows it does.
    """

    def __init__(
        self, url: str = "amqp://guest:guest@127.0.0.1:5672/", timeout: float = 30.0, *, confirms: bool = False
    ):
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 5672
        self.user = unquote(parts.username or "guest")
        self.password = unquote(parts.password or "guest")
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        self.vhost = unquote(path) or "/"
        self.timeout = timeout
        self.frame_max = 131072
        self._sock: socket.socket | None = None
        self._buffer = bytearray()
        self._pending = b""
        self.confirms = confirms
        self._published = 0
        #: delivery tags published in confirm mode that the broker has not confirmed yet
        self._unconfirmed: set[int] = set()

    def __enter__(self) -> ConnectorPublisher:
        self.open()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def open(self) -> None:
        self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.sendall(frame.marshal(header.ProtocolHeader(), 0))
        self._expect(commands.Connection.Start)
        response = f"\0{self.user}\0{self.password}"
        self._send(
            commands.Connection.StartOk(
                client_properties={"product": "connector-like test publisher"},
                mechanism="PLAIN",
                response=response,
                locale="en_US",
            ),
            0,
        )
        tune = self._expect(commands.Connection.Tune)
        self.frame_max = tune.frame_max or self.frame_max
        self._send(commands.Connection.TuneOk(channel_max=1, frame_max=self.frame_max, heartbeat=0), 0)
        self._send(commands.Connection.Open(virtual_host=self.vhost), 0)
        self._expect(commands.Connection.OpenOk)
        self._send(commands.Channel.Open(), 1)
        self._expect(commands.Channel.OpenOk)
        if self.confirms:
            self._send(commands.Confirm.Select(), 1)
            self._expect(commands.Confirm.SelectOk)

    def publish(
        self,
        exchange: str,
        routing_key: str | bytes,
        payload: bytes,
        *,
        headers: Mapping[str | bytes, Any] | None = None,
    ) -> None:
        """Queue one message: routing key = namespace, body = the JSON of the event's data, no properties.

        A routing key given as bytes goes as exactly those bytes; `headers` (which the Connector never
        sends) are encoded as `delivered` encodes them, keys given as bytes as exactly those bytes.
        """
        key = routing_key.encode() if isinstance(routing_key, str) else routing_key
        # basic.publish: reserved short, exchange, routing key, mandatory and immediate bits (both off)
        self._buffer += _frame(1, struct.pack(">HHH", 60, 40, 0) + _short(exchange.encode()) + _short(key) + b"\0")
        self._buffer += _frame(2, _content_header(len(payload), headers=headers))
        step = self.frame_max - 8
        for start in range(0, len(payload), step):
            self._buffer += _frame(3, payload[start : start + step])
        self._published += 1
        if self.confirms:
            self._unconfirmed.add(self._published)
        if len(self._buffer) > 1 << 20:
            self._write()

    def publish_many(self, exchange: str, messages: Iterable[tuple[str, bytes]]) -> int:
        count = 0
        for routing_key, payload in messages:
            self.publish(exchange, routing_key, payload)
            count += 1
        self.flush()
        return count

    def flush(self) -> None:
        """Send what is buffered and return once the broker has handled all of it (confirmed it, with
        `confirms`); a message the broker refused (`basic.nack`) surfaces as `RuntimeError`."""
        self._write()
        if self.confirms:
            self._await_confirms()
            return
        # any synchronous method answers after every frame sent before it on the channel
        self._send(commands.Basic.Qos(prefetch_count=0), 1)
        self._expect(commands.Basic.QosOk)

    def _await_confirms(self) -> None:
        while self._unconfirmed:
            reply = self._expect(commands.Basic.Ack | commands.Basic.Nack)
            done = {t for t in self._unconfirmed if t <= reply.delivery_tag} if reply.multiple else {reply.delivery_tag}
            self._unconfirmed -= done
            if isinstance(reply, commands.Basic.Nack):
                raise RuntimeError(f"the broker refused {len(done)} message(s) up to delivery tag {reply.delivery_tag}")

    def close(self) -> None:
        if self._sock is None:
            return
        try:
            self._write()
            self._send(commands.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0), 0)
            self._expect(commands.Connection.CloseOk)
        except (OSError, RuntimeError):
            pass
        finally:
            self._sock.close()
            self._sock = None

    def _write(self) -> None:
        if self._buffer:
            assert self._sock is not None
            self._sock.sendall(self._buffer)
            self._buffer.clear()

    def _send(self, method: Any, channel: int) -> None:
        assert self._sock is not None
        self._sock.sendall(frame.marshal(method, channel))

    def _expect(self, kind: Any) -> Any:
        while True:
            value = self._read_frame()
            if isinstance(value, heartbeat.Heartbeat):
                continue
            if isinstance(value, commands.Channel.Close | commands.Connection.Close):
                raise RuntimeError(
                    f"the broker closed the {value.name.split('.')[0].lower()}: {value.reply_code} {value.reply_text}"
                )
            if not isinstance(value, kind):
                raise RuntimeError(f"expected {getattr(kind, '__name__', kind)}, the broker sent {value.name}")
            return value

    def _read_frame(self) -> Any:
        assert self._sock is not None
        while True:
            if len(self._pending) >= 7:
                size = int.from_bytes(self._pending[3:7], "big") + 8
                if len(self._pending) >= size:
                    consumed, _channel, value = frame.unmarshal(self._pending[:size])
                    self._pending = self._pending[consumed:]
                    return value
            chunk = self._sock.recv(65536)
            if not chunk:
                raise RuntimeError("the broker closed the connection")
            self._pending += chunk


def delivered(
    routing_key: bytes,
    body: bytes,
    *,
    exchange: bytes = b"",
    redelivered: bool = False,
    headers: Mapping[str | bytes, Any] | None = None,
    message_id: bytes | None = None,
    content_type: bytes | None = None,
    delivery_tag: int = 1,
) -> DeliveredMessage:
    """A message as aiormq hands it to the input: decoded by pamqp from the frames a broker sends, with the
    tolerant decoders the input installs (names that are not UTF-8 come as text with surrogates).

    Names are the bytes on the wire (at most 255). Header keys given as bytes are exactly those bytes, at any
    depth (str keys go as UTF-8); a header value of type bytes goes as a long string of exactly those bytes
    (pamqp hands it over as text when it is UTF-8, else as bytes), a mapping as a table, a list as an array,
    other values as pamqp encodes them. Raises pamqp's `UnmarshalingException` for frames it cannot decode.
    """
    tolerant_decode.install()
    method = (
        struct.pack(">HH", 60, 60)  # basic.deliver
        + _short(b"event-router-test")
        + struct.pack(">QB", delivery_tag, redelivered)
        + _short(exchange)
        + _short(routing_key)
    )
    content = _content_header(len(body), headers=headers, message_id=message_id, content_type=content_type)
    _, _, deliver = frame.unmarshal(_frame(1, method))
    _, _, content_header = frame.unmarshal(_frame(2, content))
    assert isinstance(deliver, commands.Basic.Deliver) and isinstance(content_header, header.ContentHeader)
    no_channel: Any = None  # decoding never touches it
    return DeliveredMessage(delivery=deliver, header=content_header, body=body, channel=no_channel)


def _content_header(
    size: int,
    *,
    headers: Mapping[str | bytes, Any] | None = None,
    message_id: bytes | None = None,
    content_type: bytes | None = None,
) -> bytes:
    """The payload of a basic content header frame with these properties (and no others)."""
    flags = 0
    props = b""
    if content_type is not None:
        flags |= 0x8000
        props += _short(content_type)
    if headers is not None:
        flags |= 0x2000
        props += _table(headers)
    if message_id is not None:
        flags |= 0x0080
        props += _short(message_id)
    return struct.pack(">HHQH", 60, 0, size, flags) + props


def _table(table: Mapping[str | bytes, Any]) -> bytes:
    data = b"".join(_short(k.encode() if isinstance(k, str) else k) + _value(v) for k, v in table.items())
    return struct.pack(">I", len(data)) + data


def _value(value: Any) -> bytes:
    if isinstance(value, bytes):
        return b"S" + struct.pack(">I", len(value)) + value
    if isinstance(value, Mapping):
        return b"F" + _table(value)
    if isinstance(value, list):
        data = b"".join(_value(v) for v in value)
        return b"A" + struct.pack(">I", len(data)) + data
    return encode_table_value(value)


def _short(value: bytes) -> bytes:
    if len(value) > 255:
        raise ValueError(f"an AMQP short string holds at most 255 bytes, not {len(value)}")
    return bytes([len(value)]) + value


def _frame(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, 1, len(payload)) + payload + b"\xce"


AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


def rabbitmqctl(*args: str, timeout: float = 60) -> str:
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout, check=True)
    return done.stdout


def queue_totals(name: str) -> dict[str, int]:
    """`messages` (ready + unacknowledged), `messages_ready`, `messages_unacknowledged` of a queue, as the broker
    counts them: unlike a passive declare, this sees the messages a consumer holds unacknowledged."""
    out = rabbitmqctl("list_queues", "-q", "--formatter", "json", "name", "messages", "messages_ready",
                      "messages_unacknowledged")  # fmt: skip
    for row in json.loads(out):
        if row["name"] == name:
            return {k: int(v) for k, v in row.items() if k != "name"}
    raise AssertionError(f"queue {name} does not exist")


def mail(seq: int) -> dict[str, Any]:
    """The example transport.messageReceived data with a unique message id (MSG + 17 characters)."""
    data: dict[str, Any] = json.loads(json.dumps(example("transport.messageReceived")["data"]))
    data["id"] = f"MSG{seq:017d}"
    return data


class Broker:
    """Admin access to a test broker (the machine's at `AMQP_URL` unless `url` says another): names that no
    other test uses, removed again after the test."""

    def __init__(self, connection: AbstractConnection, url: str = AMQP_URL):
        self.connection = connection
        self.url = url
        self.queues: list[str] = []
        self.exchanges: list[str] = []
        self.token = uuid.uuid4().hex[:10]

    def queue_name(self, label: str) -> str:
        name = f"er-test-{label}-{self.token}"
        self.queues.append(name)
        return name

    async def fresh_channel(self) -> AbstractChannel:
        """A new channel, on a new connection if a test had the broker close every connection (or killed it)."""
        try:
            return await self.connection.channel()
        except CLOSED_ERRORS:
            self.connection = await aio_pika.connect(self.url)
            return await self.connection.channel()

    async def topic_exchange(self, label: str = "ex") -> str:
        name = f"er-test-{label}-{self.token}"
        self.exchanges.append(name)
        channel = await self.fresh_channel()
        await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
        await channel.close()
        return name

    async def ready_count(self, queue: str) -> tuple[int, int]:
        """(ready messages, consumers) from a passive declare; unacknowledged messages are not counted."""
        channel = await self.fresh_channel()
        try:
            q = await channel.declare_queue(queue, passive=True)
            result = q.declaration_result
            return result.message_count or 0, result.consumer_count or 0
        finally:
            await channel.close()

    async def cleanup(self) -> None:
        channel = await self.fresh_channel()
        for queue in self.queues:
            await channel.queue_delete(queue)
        for exchange in self.exchanges:
            await channel.exchange_delete(exchange)
        await channel.close()


#: Debian's /usr/sbin/rabbitmq-server is a wrapper that switches to the rabbitmq user (which cannot write a
#: test's directories) and forks; this is the script it runs. Elsewhere the one on PATH is that script.
RABBITMQ_SERVER_SCRIPT = "/usr/lib/rabbitmq/bin/rabbitmq-server"


@dataclass
class PrivateRabbitMQ(ServerProcess):
    """A RabbitMQ node of the test's own on a free loopback port, with all its files under `base`.

    Its own node name (`er-test-…@localhost`), distribution port, configuration, data (`base/mnesia`),
    logs (`base/log`) and Erlang cookie (`base/home`); no plugins. Nothing of the machine's node is read or
    touched: neither /etc/rabbitmq (whose files name that node and its port) nor its cookie. The data stays
    in `base` across `kill()` and `start()`, so a test can crash the node and restart it on the same data.
    `script` is the server script (`require_program` finds it). RabbitMQ 3.10 boots in 4-10 s on the
    2-core test machine.
    """

    base: Path = field(kw_only=True)
    script: str = field(kw_only=True, default=RABBITMQ_SERVER_SCRIPT)
    nodename: str = field(init=False)
    dist_port: int = field(init=False)
    boot_timeout: ClassVar[float] = 60.0

    def __post_init__(self) -> None:
        self.nodename = f"er-test-{uuid.uuid4().hex[:10]}@localhost"
        self.dist_port = free_port()
        (self.base / "home").mkdir(parents=True, exist_ok=True)
        (self.base / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\n")
        (self.base / "enabled_plugins").write_text("[].\n")
        (self.base / "rabbitmq-env.conf").write_text("")

    @property
    def url(self) -> str:
        """guest/guest, which RabbitMQ accepts from loopback only."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def log_file(self) -> Path:
        """Where the node logs, for a test that fails to find out why."""
        return self.base / "log" / f"{self.nodename}.log"

    def command(self) -> list[str]:
        return [self.script]

    def start(self) -> Self:
        try:
            return super().start()
        except AssertionError as exc:
            raise AssertionError(f"{exc}; see {self.log_file}") from None

    def environment(self) -> dict[str, str]:
        # a developer's own RABBITMQ_* or ERL_* settings (or a systemd notify socket) must not reach this node
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_")) and k != "NOTIFY_SOCKET"}
        base = self.base
        env.update(
            HOME=str(base / "home"),  # Erlang creates the cookie here at the first start
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CONF_ENV_FILE=str(base / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(base / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(base / "advanced.config"),  # none: it must not be /etc's
            RABBITMQ_ENABLED_PLUGINS_FILE=str(base / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(base / "mnesia"),
            RABBITMQ_LOG_BASE=str(base / "log"),
            # the script then execs the Erlang VM instead of forking it: the process id is the node's, so
            # kill() is a SIGKILL of the broker itself; -noinput keeps the Erlang shell away from stdin
            RABBITMQ_ALLOW_INPUT="1",
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-noinput -kernel inet_dist_use_interface {127,0,0,1}",
            ERL_EPMD_ADDRESS="127.0.0.1",  # if this node has to start epmd, loopback only
        )
        return env


def input_toml(url: str, exchange: str, queue: str, *, extra: str = "", output: str = "./out/events.jsonl") -> str:
    """A router with one amqp input and a file output every event goes to."""
    return f"""
[router]
data_dir = "./var"
[inputs.broker]
type = "amqp"
url = "{url}"
exchange = "{exchange}"
queue = "{queue}"
{extra}
[outputs.archive]
type = "file"
path = "{output}"
[[routes]]
name = "everything"
to = ["archive"]
"""
