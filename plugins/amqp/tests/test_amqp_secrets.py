"""The password in an AMQP URL never shows: not in `check`, the router's log (broker refusing the login,
broker unreachable, a refused reload), dead letters or `dlq` output. Everything logged must still say
what happened, so the test cannot pass on a silent router."""

from __future__ import annotations

from pathlib import Path

import pytest

from event_router.testing import (
    assert_check_hides_secrets,
    assert_no_secrets,
    example,
    free_port,
    post,
    require_service,
    router_refusing_a_reload,
    run_cli,
)

pytestmark = pytest.mark.slow

PASSWORD = "s3cr3t-CANARY-amqp-password"
SECRETS = ("CANARY",)


def test_amqp_url_password_is_never_shown(tmp_path: Path) -> None:
    require_service("RabbitMQ", "127.0.0.1", 5672)
    port, closed = free_port(), free_port()
    config = tmp_path / "router.toml"
    text = f"""
[router]
data_dir = "./var"
log_level = "debug"
retry = {{ max_attempts = 2, initial_backoff = "50ms", max_backoff = "100ms" }}
[inputs.hook]
type = "webhook"
listen = "127.0.0.1:{port}"
[inputs.refused]
type = "amqp"
url = {{ env = "AMQP_SECRET_TEST_URL" }}
exchange = "amq.topic"
queue = "er-test-secrets"
reconnect_max = "1s"
[outputs.unreachable]
type = "amqp"
url = "amqp://guest:{PASSWORD}@127.0.0.1:{closed}/"
exchange = "amq.topic"
[[routes]]
name = "all"
to = "unreachable"
"""
    config.write_text(text)
    # RabbitMQ's guest with a wrong password: the broker refuses the login
    env = {"AMQP_SECRET_TEST_URL": f"amqp://guest:{PASSWORD}@127.0.0.1:5672/"}

    assert_check_hides_secrets(
        config, SECRETS, expect=["ok: 2 input(s)", "outputs.unreachable.url: secret written in plain text"], env=env
    )

    broken = text.replace(f'url = "amqp://guest:{PASSWORD}@', f'url = "http://guest:{PASSWORD}@')
    with router_refusing_a_reload(config, broken, env) as router:  # inputs that never connect
        status, _, _ = post(f"http://127.0.0.1:{port}/events", example("transport.messageReceived"))
        assert status == 202
        refused = router.wait_log("cannot consume from the broker")
        router.wait_log("delivery dead-lettered")
    assert "ACCESS_REFUSED" in refused["error"]
    assert_no_secrets(
        router.logs(),
        SECRETS,
        expect=[
            '"url":"amqp://guest:***@127.0.0.1:5672/"',
            "check the user and password in url",
            f"cannot publish to amqp://guest:***@127.0.0.1:{closed}/",
            "'http://guest:***@127.0.0.1:",
            "is not an AMQP URL",
        ],
        where="the router's log",
    )

    refused_check = run_cli("check", "-c", str(config), env=env)
    assert refused_check.returncode == 1
    assert_no_secrets(
        refused_check.stderr, SECRETS, expect=["outputs.unreachable.url: 'http://guest:***@"], where="check"
    )
    config.write_text(text)
    for args in (["dlq", "list"], ["dlq", "show"]):
        shown = run_cli(*args, "-c", str(config), env=env)
        assert shown.returncode == 0, shown.stderr
        assert_no_secrets(shown.stdout, SECRETS, expect=["cannot publish to amqp://guest:***@"], where=" ".join(args))
