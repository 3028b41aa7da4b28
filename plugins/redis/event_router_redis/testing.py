"""Helpers of this plugin's tests: PUBLISH and XADD like the Connector or a bridge would, a private Redis.

The Connector's Redis broker (node-redis) sends `PUBLISH <namespace> <compact JSON of data>`. `RedisKit`
publishes the same way, XADDs stream entries (`trigger`, `data`), writes the router.toml of a test and reads
the file output back. Used by plugins/redis/tests.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis

from event_router.testing import ServerProcess, example, read_jsonl, until

HOST = "127.0.0.1"
SHARED_PORT = 6379


@dataclass
class RedisKit:
    """One test's corner of a Redis: a unique tag and stream key, a router.toml, the output file."""

    tmp: Path
    port: int = SHARED_PORT
    password: str | None = None
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:10])

    @property
    def stream(self) -> str:
        return f"ert-{self.tag}"

    @property
    def out(self) -> Path:
        return self.tmp / "out" / "events.jsonl"

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{HOST}:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, password=self.password, socket_timeout=10)

    def config(self, input_extra: str = "", router_extra: str = "", *, outputs: str = "", to: str = '"archive"') -> str:
        return f"""
[router]
data_dir = "{self.tmp}/var"
unmatched = "dead-letter"
{router_extra}
[inputs.rd]
type = "redis"
url = "{self.url}"
reconnect_max = "500ms"
{input_extra}
[outputs.archive]
type = "file"
path = "{self.out}"
{outputs}
[[routes]]
name = "all"
match = {{ trigger = ["**"] }}
to = [{to}]
"""

    def stream_config(self, extra: str = "", router_extra: str = "", **kwargs: Any) -> str:
        return self.config(f'mode = "stream"\nstream = "{self.stream}"\n{extra}', router_extra, **kwargs)

    @staticmethod
    def message() -> dict[str, Any]:
        """The data of a valid `transport.messageReceived` with an id no other test uses."""
        data: dict[str, Any] = example("transport.messageReceived")["data"]
        data["id"] = "MSG" + uuid.uuid4().hex[:17].upper()
        return data

    def xadd(self, *entries: dict[str, Any]) -> list[bytes]:
        """XADD each entry; dict and list values become JSON strings, as a bridge would write `data`."""
        with self.client() as client:
            pipe = client.pipeline(transaction=False)
            for entry in entries:
                pipe.xadd(
                    self.stream, {k: orjson.dumps(v) if isinstance(v, dict | list) else v for k, v in entry.items()}
                )
            return list(pipe.execute())

    def pending(self, group: str = "event-router") -> int:
        with self.client() as client:
            return int(client.xpending(self.stream, group)["pending"])

    def lines(self) -> list[dict[str, Any]]:
        return read_jsonl(self.out)

    def message_ids(self) -> list[str]:
        return [line["data"]["id"] for line in self.lines() if line["trigger"] == "transport.messageReceived"]


async def eventually(check: Callable[[], Any], within: float = 30.0, what: str = "condition") -> Any:
    """The test kit's `until`, with this plugin's longer default wait."""
    return await until(check, what, within=within, interval=0.05)


@dataclass
class PrivateRedis(ServerProcess):
    """A redis-server this test started on its own port (no persistence), stopped by process id.

    `program` is the redis-server binary: in tests the path `require_program("redis-server")` found, so a
    missing one fails in CI instead of skipping; elsewhere (the soak bench) the one on PATH.
    """

    password: str | None = None
    program: str = field(kw_only=True, default="redis-server")

    def command(self) -> list[str]:
        args = [self.program, "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no"]
        return args + (["--requirepass", self.password] if self.password else [])
