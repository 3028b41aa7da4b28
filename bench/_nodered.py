"""Node-RED as a same-run peer of `webhook_to_file`: installed on demand, started headless on loopback.

The pinned Node-RED is npm-installed once into `bench/out/node-red-<version>/` (ignored by git) and reused
by later runs. Each run gets its own user directory with a settings file and a flow file: http in (POST
/events) -> json -> file (append, one line per event) -> http response 204. The editor and the admin API
are off (`httpAdminRoot: false`), nothing asks for credentials, and the only listener is on 127.0.0.1.

The file node hands each line to the kernel (a write on an append stream) and answers once the write is
done; it never fsyncs. Node-RED is a throughput peer here, not a durability baseline: the router answers
only after the event is committed to its spool.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _common import BENCH, child

#: Node-RED 5 needs Node >= 22.9; 4.1 runs on Node >= 18.5 (this machine has Node 20)
NODE_RED_VERSION = "4.1.8"
INSTALL_DIR = BENCH / "out" / f"node-red-{NODE_RED_VERSION}"
INSTALL_TIMEOUT = 300.0
START_TIMEOUT = 60.0


class Unavailable(Exception):
    """Node-RED cannot be measured on this machine; the message says why."""


def _tail(text: str, limit: int = 400) -> str:
    return " ".join(text.split())[-limit:]


def _head(text: str, limit: int = 400) -> str:
    return " ".join(text.split())[:limit]


def node_version() -> str:
    node = shutil.which("node")
    if node is None:
        raise Unavailable("node is not installed")
    return subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout.strip()


def install(target: Path = INSTALL_DIR) -> Path:
    """The pinned Node-RED's `red.js`, npm-installed into `target` unless that version is already there."""
    node_version()
    red = target / "node_modules" / "node-red" / "red.js"
    package = red.with_name("package.json")
    if package.exists() and json.loads(package.read_text()).get("version") == NODE_RED_VERSION:
        return red
    npm = shutil.which("npm")
    if npm is None:
        raise Unavailable("npm is not installed")
    target.mkdir(parents=True, exist_ok=True)
    manifest = target / "package.json"
    if not manifest.exists():  # npm installs into the nearest package.json's folder: make it this one
        manifest.write_text('{"private": true, "description": "Node-RED for bench/run.py (webhook_to_file)"}\n')
    cmd = [npm, "install", "--no-audit", "--no-fund", "--omit=dev", f"node-red@{NODE_RED_VERSION}"]
    try:
        proc = subprocess.run(cmd, cwd=target, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        raise Unavailable(f"npm install node-red@{NODE_RED_VERSION} took more than {INSTALL_TIMEOUT:g}s") from exc
    if proc.returncode != 0 or not red.exists():
        raise Unavailable(
            f"npm install node-red@{NODE_RED_VERSION} failed ({proc.returncode}): {_head(proc.stderr or proc.stdout)}"
        )
    return red


def settings(port: int, user_dir: Path) -> str:
    """settings.js: headless (no editor, no admin API, no diagnostics), loopback only, no credentials."""
    values: dict[str, Any] = {
        "uiHost": "127.0.0.1",
        "uiPort": port,
        "userDir": str(user_dir),
        "flowFile": "flows.json",
        "credentialSecret": False,
        "httpAdminRoot": False,
        "httpNodeRoot": "/",
        "diagnostics": {"enabled": False, "ui": False},
        "runtimeState": {"enabled": False, "ui": False},
        "telemetry": {"enabled": False, "updateNotification": False},
        "externalModules": {"autoInstall": False, "palette": {"allowInstall": False}},
        "editorTheme": {"projects": {"enabled": False}},
        "logging": {"console": {"level": "warn", "metrics": False, "audit": False}},
    }
    return f"module.exports = {json.dumps(values, indent=2)};\n"


def flow(events_file: Path) -> list[dict[str, Any]]:
    """http in (POST /events) -> json (object to a JSON string) -> file (append + newline) -> http response 204.

    The http in node already parses an `application/json` body into an object, so the json node turns it
    back into one line of JSON, as the baseline and the router's file output write it."""
    tab = "b0000000000000001"
    return [
        {"id": tab, "type": "tab", "label": "webhook_to_file"},
        {
            "id": "b0000000000000002",
            "type": "http in",
            "z": tab,
            "url": "/events",
            "method": "post",
            "upload": False,
            "wires": [["b0000000000000003"]],
        },
        {
            "id": "b0000000000000003",
            "type": "json",
            "z": tab,
            "property": "payload",
            "action": "str",
            "pretty": False,
            "wires": [["b0000000000000004"]],
        },
        {
            "id": "b0000000000000004",
            "type": "file",
            "z": tab,
            "filename": str(events_file),
            "filenameType": "str",
            "appendNewline": True,
            "createDir": False,
            "overwriteFile": "false",
            "encoding": "none",
            "wires": [["b0000000000000005"]],
        },
        {"id": "b0000000000000005", "type": "http response", "z": tab, "statusCode": "204", "headers": {}, "wires": []},
    ]


def _await_flow(url: str, body: bytes, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Until the flow answers a POST with 204: the port opens before the flows are started."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Unavailable(f"Node-RED exited with {proc.returncode} before its flow answered")
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 204:
                    return
                last = f"status {response.status}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.1)
    raise Unavailable(f"the Node-RED flow did not answer 204 within {timeout:g}s ({last})")


@contextmanager
def running(red: Path, work: Path, port: int, events_file: Path, body: bytes) -> Iterator[subprocess.Popen[bytes]]:
    """Node-RED serving the flow on 127.0.0.1:port from the user directory `work`, stopped on exit.

    `body` is POSTed until the flow answers, so `events_file` holds a few lines before any load."""
    node = shutil.which("node")
    if node is None:
        raise Unavailable("node is not installed")
    work.mkdir(parents=True, exist_ok=True)
    (work / "settings.js").write_text(settings(port, work))
    (work / "flows.json").write_text(json.dumps(flow(events_file), indent=2))
    log = work / "node-red.log"
    cmd = [node, str(red), "--settings", str(work / "settings.js"), "--userDir", str(work), "--port", str(port)]
    with child(cmd, log=log) as proc:
        try:
            _await_flow(f"http://127.0.0.1:{port}/events", body, proc, START_TIMEOUT)
        except Unavailable as exc:
            raise Unavailable(f"{exc}; log: {_tail(log.read_text(errors='replace'))}") from exc
        yield proc
