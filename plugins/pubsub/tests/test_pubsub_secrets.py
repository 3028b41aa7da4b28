"""The service-account key never shows: a key file the client cannot use is reported by its path and the
reason, never by its content, in `check` and in the router's log (tracebacks included)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from event_router.testing import RouterProcess, assert_no_secrets, free_port, run_cli

pytestmark = pytest.mark.slow

SECRETS = ("CANARY",)


def test_service_account_key_is_never_shown(tmp_path: Path) -> None:
    key = tmp_path / "key.json"
    key.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "test-project",
                "private_key_id": "s3cr3t-CANARY-key-id",
                # not a key the client can sign with, so it fails before any request is made
                "private_key": "-----BEGIN PRIVATE KEY-----\ns3cr3t-CANARY-private-key\n-----END PRIVATE KEY-----\n",
                "client_email": "router@test-project.iam.gserviceaccount.com",
                # and were it used, only on loopback, where nothing listens
                "token_uri": f"http://127.0.0.1:{free_port()}/token",
            }
        )
    )
    config = tmp_path / "router.toml"
    config.write_text("""
[router]
data_dir = "./var"
log_level = "debug"
[inputs.pubsub]
type = "pubsub"
project = "test-project"
subscription = "enmeshed-events"
key_file = "key.json"
reconnect_max = "1s"
""")
    env = {"PUBSUB_EMULATOR_HOST": ""}  # the key file is only read without an emulator
    checked = run_cli("check", "-c", str(config), env=env)
    assert checked.returncode == 0, checked.stderr
    assert_no_secrets(checked.stdout + checked.stderr, SECRETS, expect=["ok: 1 input(s)"], where="check")

    with RouterProcess(config, env=env, ready=False) as router:  # inputs that never connect
        failure = router.wait_log("pubsub input cannot pull", timeout=60)
        assert router.terminate() == 0
    assert failure["endpoint"] == "pubsub.googleapis.com" and failure["error"]
    assert_no_secrets(router.logs(), SECRETS, expect=["pubsub input cannot pull"], where="the router's log")
