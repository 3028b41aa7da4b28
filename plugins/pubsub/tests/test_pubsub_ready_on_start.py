"""READY=1 means the Pub/Sub input pulls from a subscription that exists (here: that it creates), so what
the Connector publishes from then on is kept for it. An emulator that answers slowly (a proxy holding back
its replies) widens the time the input needs to create the subscription; events published the moment the
router says ready must all be stored."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from event_router.testing import (
    RouterProcess,
    TcpProxy,
    assert_ready_means_consuming,
    example,
    free_port,
    read_jsonl,
    readyz,
)

pytestmark = [pytest.mark.anyio, pytest.mark.broker("pubsub"), pytest.mark.slow]

COUNT = 30


async def test_events_published_when_ready_are_all_stored(until, pubsub, router_toml, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    topic = await pubsub.create_topic()
    name = pubsub.unique("ready")
    admin = free_port()
    host, port = pubsub.host.rsplit(":", 1)
    out = tmp_path / "out/events.jsonl"
    with TcpProxy(host, int(port), reply_delay=0.3) as proxy:
        text = router_toml(
            name,
            input_extra=f'topic = "{topic}"\ncreate_subscription = true',
            router_extra=f'[router.admin]\nlisten = "127.0.0.1:{admin}"',
            emulator=False,
        )
        config = tmp_path / "router.toml"
        config.write_text(text)
        router = RouterProcess(config, env={"PUBSUB_EMULATOR_HOST": f"127.0.0.1:{proxy.port}"})
        await anyio.to_thread.run_sync(router.start)
        try:
            published = set(await pubsub.publish(topic, [example("transport.messageReceived")] * COUNT))
            await anyio.to_thread.run_sync(assert_ready_means_consuming, router, admin, "pubsub input pulling")
            await until(
                lambda: {line["meta"]["message_id"] for line in read_jsonl(out)} >= published,
                20,
                f"{COUNT} events stored",
            )
            assert (await anyio.to_thread.run_sync(readyz, admin))[0] == 200
        finally:
            assert await anyio.to_thread.run_sync(router.terminate) == 0
