"""Webhook hardening over real sockets: allow-list, rate limit, TLS, hostile bodies."""

from __future__ import annotations

import http.client
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from event_router.testing import DeadLetterFilter, MakeApp, dead_letters, example, free_port, post, read_jsonl, wait_for

pytestmark = pytest.mark.anyio


def config(port: int, tmp: Path, extra: str = "") -> str:
    return f"""
[router]
data_dir = "{tmp}/var"
[inputs.connector]
type = "webhook"
listen = "127.0.0.1:{port}"
validation = "warn"
{extra}
[outputs.archive]
type = "file"
path = "{tmp}/out.jsonl"
[[routes]]
name = "all"
to = ["archive"]
"""


async def call(url: str, body: bytes | dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
    return await anyio.to_thread.run_sync(lambda: post(url, body))


async def test_allow_list(make_app: MakeApp, tmp_path: Path) -> None:
    port = free_port()
    async with make_app(config(port, tmp_path, 'allow_networks = ["10.0.0.0/8", "::1/128"]')):
        status, body, _ = await call(f"http://127.0.0.1:{port}/events", example("transport.messageReceived"))
    assert status == 403 and body["error"] == "client 127.0.0.1 is not in allow_networks"
    port = free_port()
    async with make_app(config(port, tmp_path, 'allow_networks = ["127.0.0.0/8"]')):
        status, _, _ = await call(f"http://127.0.0.1:{port}/events", example("transport.messageReceived"))
    assert status == 202


async def test_rate_limit_per_client(make_app: MakeApp, tmp_path: Path) -> None:
    port = free_port()
    async with make_app(config(port, tmp_path, "rate_limit = { per_second = 1, burst = 2 }")):
        answers = [
            await call(f"http://127.0.0.1:{port}/events", example("transport.messageReceived")) for _ in range(3)
        ]
    assert [a[0] for a in answers] == [202, 202, 429]
    assert answers[2][2]["Retry-After"] == "1"


def make_cert(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_tls_listener(make_app: MakeApp, tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    port = free_port()
    async with make_app(config(port, tmp_path, f'tls = {{ cert_file = "{cert}", key_file = "{key}" }}')):
        context = ssl.create_default_context(cafile=str(cert))
        assert await anyio.to_thread.run_sync(https_post, port, context) == 202
        context.maximum_version = ssl.TLSVersion.TLSv1_2  # docs/security.md: TLS 1.2 and later
        assert await anyio.to_thread.run_sync(https_post, port, context) == 202
        # plain HTTP is not served: the TLS stack answers it with a TLS alert (not HTTP), or closes
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
            await anyio.to_thread.run_sync(lambda: post(f"http://127.0.0.1:{port}/events", b"{}"))


def https_post(port: int, context: ssl.SSLContext) -> int:
    """POST an event to the webhook on loopback `port` over TLS with `context`; the answer's status."""
    request = urllib.request.Request(
        f"https://127.0.0.1:{port}/events",
        data=orjson.dumps(example("transport.messageReceived")),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        return int(response.status)


def make_client_cert(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a client certificate it signed (X.509 v3 with clientAuth: rustls takes no v1 certificate)."""
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    cert, key, request = directory / "client.pem", directory / "client.key", directory / "client.csr"
    extensions = directory / "client.ext"
    extensions.write_text("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n")
    for command in (
        f"req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=ca -keyout {ca_key} -out {ca}",
        f"req -newkey rsa:2048 -nodes -subj /CN=client -keyout {key} -out {request}",
        f"x509 -req -in {request} -CA {ca} -CAkey {ca_key} -CAcreateserial -days 1 -extfile {extensions} -out {cert}",
    ):
        subprocess.run(["openssl", *command.split()], check=True, capture_output=True, cwd=directory)
    return ca, cert, key


async def test_tls_client_certificates(make_app, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A control (the Python TLS stack did it too): with client_ca_file, only clients it signed are served."""
    cert, key = make_cert(tmp_path)
    ca, client_cert, client_key = make_client_cert(tmp_path)
    port = free_port()
    tls = f'tls = {{ cert_file = "{cert}", key_file = "{key}", client_ca_file = "{ca}" }}'
    async with make_app(config(port, tmp_path, tls)):
        context = ssl.create_default_context(cafile=str(cert))
        with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
            await anyio.to_thread.run_sync(https_post, port, context)
        context.load_cert_chain(str(client_cert), str(client_key))
        assert await anyio.to_thread.run_sync(https_post, port, context) == 202


def test_tls_files_must_exist(tmp_path: Path) -> None:
    import tomllib

    from event_router.config import ConfigErrors, build_config
    from event_router.plugin_loader import load_plugins

    text = config(1, tmp_path, 'tls = { cert_file = "nope.pem", key_file = "nope.key" }')
    with pytest.raises(ConfigErrors, match=r"inputs.connector.tls.cert_file: 'nope.pem' is not a readable file"):
        build_config(tomllib.loads(text), path=tmp_path / "router.toml", registry=load_plugins())


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"[" * 2000 + b"]" * 2000, 400, "body is not valid JSON"),
        (b'{"trigger": "transport.messageReceived", "data": {"x": 1e999999}}', 400, "body is not valid JSON"),
        (b'{"trigger": "transport.messageReceived", "data": "\xff\xfe"}', 400, "body is not valid JSON"),
        (b'{"trigger": "transport.messageReceived\x00", "data": {}}', 400, "body is not valid JSON"),
        (b"\x00\x00\x00", 400, "body is not valid JSON"),
    ],
    ids=["nested-2000", "huge-number", "invalid-utf8", "nul-in-json-string", "nul-bytes"],
)
async def test_hostile_bodies_get_clear_errors(
    make_app: MakeApp, tmp_path: Path, body: bytes, status: int, message: str
) -> None:
    port = free_port()
    async with make_app(config(port, tmp_path)) as app:
        got, answer, _ = await call(f"http://127.0.0.1:{port}/events", body)
        assert got == status, answer
        assert message in answer["error"]
        assert "Traceback" not in str(answer)
        assert app.stats.get("dead_letters", reason="undecodable") == 1  # kept, not lost


def nested(levels: int) -> object:
    value: object = {}
    for _ in range(levels // 2):
        value = {"x": [value]}
    return value


async def test_deep_nesting_odd_keys_big_numbers_duplicates(make_app: MakeApp, tmp_path: Path) -> None:
    port = free_port()
    odd = {"trigger": "custom.event", "data": {"a": 1, "\u0000key": "nul in key", "big": 0, "nested": nested(200)}}
    # orjson writes no integer beyond 64 bits, so the big number travels as raw JSON text
    raw = orjson.dumps(odd).replace(b'"big":0', b'"big":' + str(10**30).encode())
    dup = b'{"trigger": "custom.dup", "data": {"k": 1, "k": 2}}'
    async with make_app(config(port, tmp_path)):
        status, body, _ = await call(f"http://127.0.0.1:{port}/events", raw)
        assert status == 202, body
        status, body, _ = await call(f"http://127.0.0.1:{port}/events", dup)
        assert status == 202, body
        lines = await anyio.to_thread.run_sync(
            lambda: wait_for(
                lambda: len(read_jsonl(tmp_path / "out.jsonl")) == 2 and read_jsonl(tmp_path / "out.jsonl")
            )
        )
    by_trigger = {line["trigger"]: line for line in lines}
    assert by_trigger["custom.event"]["data"]["\u0000key"] == "nul in key"
    # numbers are IEEE doubles beyond 64-bit integers, as JSON.parse reads them in the Connector itself
    assert by_trigger["custom.event"]["data"]["big"] == 1e30
    assert by_trigger["custom.dup"]["data"] == {"k": 2}  # duplicate keys: the last one wins, as in JSON.parse


async def test_nesting_too_deep_to_store_is_dead_lettered_with_its_bytes(make_app: MakeApp, tmp_path: Path) -> None:
    port = free_port()
    # 600 levels: orjson reads it (limit 1,024) but cannot write it back (limit 254)
    raw = b'{"trigger": "custom.deep", "data": ' + b'{"x": [' * 300 + b"{}" + b"]}" * 300 + b"}"
    async with make_app(config(port, tmp_path)) as app:
        status, body, _ = await call(f"http://127.0.0.1:{port}/events", raw)
        assert status == 422 and body["status"] == "dead_lettered", body
        (dl,) = dead_letters(app.config.data_dir, DeadLetterFilter(ids=[body["dead_letter"]]))
    assert dl.reason == "undecodable" and "nests too deeply" in (dl.error or "")
    assert orjson.loads(dl.body)["raw"] == raw.decode()  # the bytes are all there


async def test_wrong_content_type_is_still_json(make_app: MakeApp, tmp_path: Path) -> None:
    port = free_port()
    async with make_app(config(port, tmp_path)):

        def send() -> int:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/events",
                data=orjson.dumps(example("transport.messageReceived")),
                headers={"Content-Type": "text/plain"},
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status)

        # the Connector always sends application/json; a relay that rewrites it must not lose events
        assert await anyio.to_thread.run_sync(send) == 202


OLD_SECRET = "whsec_" + __import__("base64").b64encode(b"o" * 32).decode()
NEW_SECRET = "whsec_" + __import__("base64").b64encode(b"n" * 32).decode()


async def test_standard_webhooks_signatures(make_app: MakeApp, tmp_path: Path) -> None:
    import time

    from event_router.web.signing import WebhookSigner

    port = free_port()
    extra = f'signing_secrets = ["{NEW_SECRET}", "{OLD_SECRET}"]\nsignature_tolerance = 60'
    body = orjson.dumps(example("transport.messageReceived"))
    url = f"http://127.0.0.1:{port}/events"
    async with make_app(config(port, tmp_path, extra)) as app:

        async def signed(
            secret: str, msg_id: str, payload: bytes = body, stamp: int | None = None
        ) -> tuple[int, dict[str, Any], dict[str, str]]:
            headers = WebhookSigner(secret).headers(msg_id, body, timestamp=stamp)
            return await anyio.to_thread.run_sync(lambda: post(url, payload, headers))

        assert (await signed(NEW_SECRET, "msg-1"))[0] == 202
        assert (await signed(OLD_SECRET, "msg-2"))[0] == 202, "the previous key still works during a rotation"
        status, answer, _ = await signed(NEW_SECRET, "msg-1")
        assert (status, answer) == (200, {"status": "duplicate", "webhook_id": "msg-1"})
        tampered = body.replace(b"New postal address", b"Send me money")
        status, answer, _ = await signed(NEW_SECRET, "msg-3", tampered)
        assert status == 401 and "signature" in answer["error"]
        status, _, _ = await signed(NEW_SECRET, "msg-4", stamp=int(time.time()) - 3600)
        assert status == 401, "a replay outside the tolerance is refused"
        other = "whsec_" + __import__("base64").b64encode(b"x" * 32).decode()
        assert (await signed(other, "msg-5"))[0] == 401
        assert (await call(url, body))[0] == 401, "unsigned"
        await anyio.to_thread.run_sync(lambda: wait_for(lambda: len(read_jsonl(tmp_path / "out.jsonl")) == 2))
        assert app.stats.get("events_received") == 2
    lines = read_jsonl(tmp_path / "out.jsonl")
    assert sorted(line["meta"]["headers"]["webhook-id"] for line in lines) == ["msg-1", "msg-2"]


def test_signing_secret_must_be_a_standard_webhooks_secret(tmp_path: Path) -> None:
    import tomllib

    from event_router.config import ConfigErrors, build_config
    from event_router.plugin_loader import load_plugins

    text = config(1, tmp_path, 'signing_secrets = ["not-a-secret"]')
    with pytest.raises(
        ConfigErrors, match=r"inputs.connector.signing_secrets\[0\]: a signing secret starts with 'whsec_'"
    ):
        build_config(tomllib.loads(text), path=tmp_path / "router.toml", registry=load_plugins())
