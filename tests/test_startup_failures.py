"""A router that cannot start says why in one line naming the key, and exits non-zero: no traceback."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from event_router.testing import RouterProcess, free_port, run_cli

pytestmark = pytest.mark.slow

ENV = {"ROUTER_WEBHOOK_API_KEY": "startup-key"}


def write_config(tmp: Path, *, listen: int, admin: int | None = None, data_dir: str = "./var") -> Path:
    path = tmp / "router.toml"
    admin_table = f'[router.admin]\nlisten = "127.0.0.1:{admin}"\n' if admin is not None else ""
    path.write_text(f"""
[router]
data_dir = "{data_dir}"
shutdown_timeout = "2s"
{admin_table}
[inputs.webhook]
type = "webhook"
listen = "127.0.0.1:{listen}"
api_key = {{ env = "ROUTER_WEBHOOK_API_KEY" }}
[outputs.archive]
type = "file"
path = "./archive.jsonl"
[[routes]]
name = "all"
to = "archive"
""")
    return path


@contextmanager
def occupied() -> Iterator[int]:
    """A loopback port something else listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def failed_run(config: Path) -> str:
    """`event-router run`, which must fail: its one `error:` line."""
    result = run_cli("run", "-c", str(config), env=ENV, timeout=30)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_webhook_listen_in_use(tmp_path: Path) -> None:
    with occupied() as port:
        config = write_config(tmp_path, listen=port)
        assert failed_run(config) == (
            f"error: router.toml: inputs.webhook.listen: 127.0.0.1:{port} is already in use (plugin webhook)"
        )


def test_admin_listen_in_use(tmp_path: Path) -> None:
    with occupied() as admin:
        config = write_config(tmp_path, listen=free_port(), admin=admin)
        assert failed_run(config) == f"error: router.toml: router.admin.listen: 127.0.0.1:{admin} is already in use"


def test_a_second_router_on_the_same_ports(tmp_path: Path) -> None:
    """The common case: a router already runs (a unit and a manual start), the second one must say so."""
    port, admin = free_port(), free_port()
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    first = write_config(tmp_path / "first", listen=port, admin=admin)
    with RouterProcess(first, env=ENV) as router:
        second = write_config(tmp_path / "second", listen=port, admin=admin)
        assert failed_run(second) == (
            f"error: router.toml: inputs.webhook.listen: 127.0.0.1:{port} is already in use (plugin webhook)"
        )
        router.terminate()


def _unwritable_dir() -> str:
    """A directory that exists and takes no new file, even from root (chmod does not stop root)."""
    try:
        with tempfile.TemporaryFile(dir="/sys/kernel"):
            pytest.skip("/sys/kernel takes files on this machine")
    except OSError:
        return "/sys/kernel"


@pytest.mark.parametrize("case", ["unwritable", "under-proc", "file-in-the-way", "is-a-file"])
def test_data_dir_that_cannot_be_used(tmp_path: Path, case: str) -> None:
    (tmp_path / "a-file").write_text("")
    uid = os.geteuid()
    data_dir, expected = {
        "unwritable": (
            _unwritable_dir(),
            f"error: router.toml: router.data_dir: /sys/kernel is not writable by uid {uid} (",
        ),
        "under-proc": (
            "/proc/x",
            f"error: router.toml: router.data_dir: /proc/x cannot be created by uid {uid}: cannot write in /proc (",
        ),
        "file-in-the-way": (
            "./a-file/var",
            f"error: router.toml: router.data_dir: {tmp_path}/a-file/var cannot be created: "
            f"{tmp_path}/a-file is not a directory",
        ),
        "is-a-file": ("./a-file", f"error: router.toml: router.data_dir: {tmp_path}/a-file is not a directory"),
    }[case]
    config = write_config(tmp_path, listen=free_port(), data_dir=data_dir)
    # `check` finds it before `run` does
    checked = run_cli("check", "-c", str(config), env=ENV)
    assert checked.returncode == 1
    assert checked.stderr.startswith(expected), checked.stderr
    assert len(checked.stderr.splitlines()) == 1, checked.stderr
    assert failed_run(config).startswith(expected)


def test_check_of_data_dir_leaves_nothing_behind(tmp_path: Path) -> None:
    existing = tmp_path / "existing"
    existing.mkdir()
    for data_dir in ("./existing", "./not/yet"):
        config = write_config(tmp_path, listen=free_port(), data_dir=data_dir)
        checked = run_cli("check", "-c", str(config), env=ENV)
        assert checked.returncode == 0, checked.stderr
    assert list(existing.iterdir()) == []
    assert not (tmp_path / "not").exists()
