"""READY=1, `router ready` and /readyz 200 come once every input takes events: for the webhook, once it
listens. An event posted the moment the router says ready is
accepted."""

from __future__ import annotations

from pathlib import Path

from event_router.testing import (
    RouterProcess,
    archive_all,
    assert_ready_means_consuming,
    example,
    free_port,
    post,
    read_jsonl,
    router_table,
    wait_for,
    webhook_input,
)


def test_webhook_takes_events_the_moment_the_router_is_ready(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    config = tmp_path / "router.toml"
    config.write_text(router_table(admin) + webhook_input(port, name="webhook", api_key=None) + archive_all())
    with RouterProcess(config) as router:
        status, body, _ = post(f"http://127.0.0.1:{port}/events", example("transport.messageReceived"))
        assert status == 202, body
        assert_ready_means_consuming(router, admin, "webhook listening")
        wait_for(lambda: [line["id"] for line in read_jsonl(tmp_path / "var/events.jsonl")] == [body["id"]])
        assert router.terminate() == 0
