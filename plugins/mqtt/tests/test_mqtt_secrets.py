"""The password in an MQTT URL never shows: not in `check`, nor in the router's log while it connects, while
a broker refuses the login or cannot be reached, nor in a refused reload. Everything logged must still say
what happened, so the test cannot pass on a silent router."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from event_router.testing import (
    assert_check_hides_secrets,
    assert_no_secrets,
    free_port,
    router_refusing_a_reload,
    url_secret_inputs,
)
from event_router_mqtt.testing import PrivateBroker

pytestmark = pytest.mark.slow

PASSWORD = "s3cr3t-CANARY-mqtt-password"
SECRETS = ("CANARY",)


@pytest.fixture
def password_file() -> Iterator[Path]:
    """Mosquitto's password file with the user `router`, in a directory the broker can read: started as
    root, it runs as the `mosquitto` user, which pytest's private tmp_path keeps out."""
    with tempfile.TemporaryDirectory(prefix="er-mqtt-") as directory:
        os.chmod(directory, 0o755)
        path = Path(directory) / "passwords"
        subprocess.run(["mosquitto_passwd", "-c", "-b", str(path), "router", PASSWORD], check=True)
        path.chmod(0o644)
        yield path


def test_mqtt_url_password_is_never_shown(
    tmp_path: Path, private_broker: Callable[..., PrivateBroker], password_file: Path
) -> None:
    broker = private_broker(extra=f"allow_anonymous false\npassword_file {password_file}").start()
    closed = free_port()
    config = tmp_path / "router.toml"
    text = url_secret_inputs(
        "mqtt",
        env="MQTT_SECRET_TEST_URL",
        refused=f"mqtt://router:{PASSWORD}-wrong@127.0.0.1:{broker.port}",
        unreachable=f"mqtt://router:{PASSWORD}@127.0.0.1:{closed}",
    )
    config.write_text(text)
    env = {"MQTT_SECRET_TEST_URL": f"mqtt://router:{PASSWORD}@127.0.0.1:{broker.port}"}

    assert_check_hides_secrets(
        config, SECRETS, expect=["ok: 3 input(s)", "inputs.refused.url: secret written in plain text"], env=env
    )

    broken = text.replace(f"@127.0.0.1:{closed}", f"@127.0.0.1:{closed}/path")
    with router_refusing_a_reload(config, broken, env) as router:  # inputs that never connect
        router.wait_log("subscribed to the MQTT broker")
        router.wait_log("cannot connect to the MQTT broker", count=2)
    logs = router.logs()
    assert_no_secrets(
        logs,
        SECRETS,
        expect=[
            f'"broker":"mqtt://router@127.0.0.1:{broker.port}"',
            f'"broker":"mqtt://router@127.0.0.1:{closed}"',
            "Connection refused",
            "inputs.unreachable.url: must not have a path",
        ],
        where="the router's log",
    )
    # the broker's refusal is logged as such
    assert any(
        r.get("logger", "").endswith("inputs.refused") and "not authori" in r.get("error", "").lower()
        for r in router.log_records()
    ), logs
