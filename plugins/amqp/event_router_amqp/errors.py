"""What a broken AMQP connection raises: the exceptions the input and output catch to connect again.

They are aiormq's classes, so this module imports the client library: only code that connects imports it.
"""

from __future__ import annotations

import aiormq.exceptions

#: what a broken connection or channel raises, from the socket up to aio-pika
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    OSError,
    TimeoutError,
)

#: the same, plus the RuntimeError aio-pika raises when a channel is opened on a closed connection
CLOSED_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, *CONNECTION_ERRORS)
