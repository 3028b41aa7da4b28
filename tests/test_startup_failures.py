"""A router that cannot start says why in one line naming the key, and exits non-zero: no traceback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
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


#: the service user of these tests: nobody (a router's user is rarely root, and the spool's files may not be its)
NOBODY = 65534


def as_nobody(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`event-router ARGS` as uid and gid 65534, the way a service user meets what root left behind."""
    setpriv = shutil.which("setpriv")
    assert setpriv is not None, "setpriv (util-linux) runs a command as another user"
    return subprocess.run(
        [
            setpriv,
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            sys.executable,
            "-m",
            "event_router",
            *args,
        ],
        cwd=cwd,
        env={**os.environ, **ENV},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can leave spool files owned by another user")
@pytest.mark.parametrize("left", ["spool.db", "spool.db-wal"])
def test_spool_files_another_user_left(left: str) -> None:
    """A router once run as root leaves root's spool files in data_dir; the service user cannot make them
    private (the router chmods them 0600), whatever their mode. `check` says so, and `run` in one line, which
    was a traceback ending in `PermissionError: ... Operation not permitted`."""
    # not tmp_path: pytest's base directory is root's alone, and nobody must reach the config
    with tempfile.TemporaryDirectory(prefix="event-router-owner-") as name:
        tmp = Path(name)
        tmp.chmod(0o755)
        probe = as_nobody("--version", cwd=tmp)
        if probe.returncode != 0:
            pytest.skip(f"this interpreter cannot be run as uid {NOBODY}: {probe.stderr.strip()[-200:]}")
        data = tmp / "var"
        config = write_config(tmp, listen=free_port(), data_dir=str(data))
        config.chmod(0o644)
        with RouterProcess(config, env=ENV) as router:  # as root, the way `sudo event-router run` once did
            assert router.terminate() == 0
        (data / "spool.db-wal").touch()  # an empty write-ahead log, as a router killed at the wrong moment leaves
        for path in (tmp, data, *data.iterdir()):
            if path.name != left:
                os.chown(path, NOBODY, NOBODY)
        expected = (
            f"error: router.toml: router.data_dir: {data / left} belongs to uid 0, not to uid {NOBODY}, which must "
            "own the spool's files (chown them)"
        )
        checked = as_nobody("check", "-c", str(config), cwd=tmp)
        assert (checked.returncode, checked.stderr.splitlines()) == (1, [expected]), checked.stderr
        run = as_nobody("run", "-c", str(config), cwd=tmp)
        assert run.returncode == 1, run.stderr
        assert "Traceback" not in run.stderr, run.stderr
        assert [line for line in run.stderr.splitlines() if line.startswith("error:")] == [expected], run.stderr
        # once they are the service user's, both go ahead
        os.chown(data / left, NOBODY, NOBODY)
        checked = as_nobody("check", "-c", str(config), cwd=tmp)
        assert checked.returncode == 0, checked.stderr
