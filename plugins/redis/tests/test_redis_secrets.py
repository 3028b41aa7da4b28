"""The password in a Redis URL never shows: not in `check`, nor in the router's log while it connects, while
Redis refuses the password or cannot be reached, nor in a refused reload. Everything logged must still say
what happened, so the test cannot pass on a silent router."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from event_router.testing import (
    assert_check_hides_secrets,
    assert_no_secrets,
    free_port,
    router_refusing_a_reload,
    run_cli,
    url_secret_inputs,
)
from event_router_redis.testing import PrivateRedis

pytestmark = pytest.mark.slow

PASSWORD = "s3cr3t-CANARY-redis-password"
SECRETS = ("CANARY",)


def test_redis_url_password_is_never_shown(tmp_path: Path, private_redis: Callable[..., PrivateRedis]) -> None:
    server = private_redis(password=PASSWORD).start()
    closed = free_port()
    config = tmp_path / "router.toml"
    text = url_secret_inputs(
        "redis",
        env="REDIS_SECRET_TEST_URL",
        refused=f"redis://:{PASSWORD}-wrong@127.0.0.1:{server.port}/0",
        unreachable=f"redis://:{PASSWORD}@127.0.0.1:{closed}/0",
    )
    config.write_text(text)
    env = {"REDIS_SECRET_TEST_URL": f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"}

    assert_check_hides_secrets(
        config, SECRETS, expect=["ok: 3 input(s)", "inputs.refused.url: secret written in plain text"], env=env
    )

    broken = text.replace(f"@127.0.0.1:{closed}/0", "@127.0.0.1:notaport/0")
    with router_refusing_a_reload(config, broken, env) as router:  # inputs that never connect
        router.wait_log("subscribed to Redis channels")
        router.wait_log("cannot read from Redis", count=2)
    logs = router.logs()
    assert_no_secrets(
        logs,
        SECRETS,
        expect=[
            f'"redis":"redis://127.0.0.1:{server.port}/0"',
            f'"redis":"redis://127.0.0.1:{closed}/0"',
            "check the user and password in url",
            "Connection refused",
            "inputs.unreachable.url: not a valid URL",
        ],
        where="the router's log",
    )

    refused_check = run_cli("check", "-c", str(config), env=env)
    assert refused_check.returncode == 1
    assert_no_secrets(refused_check.stderr, SECRETS, expect=["inputs.unreachable.url: not a valid URL"], where="check")
