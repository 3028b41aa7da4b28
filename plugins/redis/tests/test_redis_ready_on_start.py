"""READY=1 means the Redis input reads: every PSUBSCRIBE is confirmed (mode pubsub), or the consumer group
exists (mode stream), so what the Connector publishes from then on reaches it. A Redis that answers slowly
(a proxy holding back its replies) widens the time the input needs to subscribe; events published the
moment the router says ready must all be stored."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import redis

from event_router.testing import TcpProxy, free_port, published_at_ready, require_service, wait_for
from event_router_redis.testing import HOST, SHARED_PORT, RedisKit

pytestmark = pytest.mark.slow

COUNT = 30


@pytest.mark.parametrize(
    ("mode", "consuming"), [("pubsub", "subscribed to Redis channels"), ("stream", "reading the Redis stream")]
)
def test_events_published_when_ready_are_all_stored(tmp_path: Path, mode: str, consuming: str) -> None:
    require_service("Redis", HOST, SHARED_PORT)
    admin = free_port()
    direct = redis.Redis(host=HOST, port=SHARED_PORT, socket_timeout=10)
    with TcpProxy(HOST, SHARED_PORT, reply_delay=0.3) as proxy:
        kit = RedisKit(tmp_path, port=proxy.port)
        admin_table = f'[router.admin]\nlisten = "127.0.0.1:{admin}"'
        config = tmp_path / "router.toml"
        config.write_text(
            kit.stream_config(router_extra=admin_table) if mode == "stream" else kit.config("", admin_table)
        )
        messages = [kit.message() for _ in range(COUNT)]

        def publish() -> None:
            for message in messages:
                if mode == "stream":
                    direct.xadd(kit.stream, {"trigger": "transport.messageReceived", "data": orjson.dumps(message)})
                else:
                    direct.publish("transport.messageReceived", orjson.dumps(message))

        try:
            with published_at_ready(config, admin, consuming, publish):
                ids = {m["id"] for m in messages}
                wait_for(lambda: ids <= set(kit.message_ids()), timeout=20, what=f"{COUNT} events stored")
        finally:
            direct.delete(kit.stream)
            direct.close()
