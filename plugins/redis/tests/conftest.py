"""Fixtures of the Redis input's tests: the machine's Redis, or a private redis-server a test starts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from event_router.testing import free_port, require_program, require_service
from event_router_redis.testing import HOST, SHARED_PORT, PrivateRedis, RedisKit

#: the test kit's fixtures, opted into (docs/plugins.md, "Testing a plugin")
pytest_plugins = ["event_router.testing.fixtures"]


@pytest.fixture
def redis_kit(tmp_path: Path) -> Iterator[RedisKit]:
    """The machine's Redis on 6379 with this test's own stream key, deleted afterwards."""
    require_service("Redis", HOST, SHARED_PORT)
    kit = RedisKit(tmp_path)
    yield kit
    with kit.client() as client:
        client.delete(kit.stream)


@pytest.fixture
def private_redis() -> Iterator[Callable[..., PrivateRedis]]:
    """`private_redis(port=None, password=None)`: a redis-server of this test's own (not started yet)."""
    program = require_program("redis-server")
    servers: list[PrivateRedis] = []

    def make(port: int | None = None, password: str | None = None) -> PrivateRedis:
        server = PrivateRedis(port or free_port(), password, program=program)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
