"""Helpers shared by the benchmark scenarios: machine facts, percentiles, RSS/CPU of a process, child servers.

Every child process a scenario starts goes through `child()`, which kills it (and waits) in a finally block,
so a failing or interrupted scenario never leaves a server behind.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100) of unsorted values; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, round(p / 100 * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def status_kb(pid: int, field: str) -> int | None:
    """A `kB` field of /proc/<pid>/status (VmRSS, VmHWM...); None once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def rss_mb(pid: int) -> float | None:
    kb = status_kb(pid, "VmRSS")
    return None if kb is None else round(kb / 1024, 1)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads (fields 14 and 15 of /proc/<pid>/stat)."""
    return stat_cpu_seconds(Path(f"/proc/{pid}/stat"))


def stat_cpu_seconds(stat: Path) -> float:
    """User + system CPU time in a /proc `stat` file: a process's, or one thread's (/proc/<pid>/task/<tid>/stat)."""
    text = stat.read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children(pid: int) -> list[int]:
    """Pids of a process's live children: a server that forks has its children's CPU counted with its own."""
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def tree_cpu_seconds(pid: int) -> float:
    """`cpu_seconds` of a process plus its live children."""
    total = cpu_seconds(pid)
    for child in children(pid):
        try:
            total += cpu_seconds(child)
        except (FileNotFoundError, ProcessLookupError):  # exited meanwhile
            continue
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Poll until something accepts on 127.0.0.1:port; fail early if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time; always reaped."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@contextmanager
def child(
    args: Sequence[str], *, port: int | None = None, log: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A child process (ready once `port` accepts connections), stopped in a finally block."""
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(list(args), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    if log is not None:
        out.close()  # type: ignore[union-attr]
    try:
        if port is not None:
            wait_port(port, proc)
        yield proc
    finally:
        stop(proc)


@contextmanager
def router(config: Path, *, env: dict[str, str] | None = None, timeout: float = 60) -> Iterator[Any]:
    """`event-router run` through the test kit's RouterProcess, killed in a finally block whatever happens."""
    from event_router.testing import RouterProcess

    proc = RouterProcess(config, env=env)
    try:
        proc.start(timeout=timeout)
        yield proc
    finally:
        if proc.proc is not None and proc.proc.poll() is None:
            try:
                proc.terminate(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.close()


def example_body(size: int = 1200) -> bytes:
    """The Connector's webhook body for the example transport.messageReceived, the Mail body padded to `size` bytes."""
    from event_router.testing import example

    body = example("transport.messageReceived")
    base = json.dumps(body, separators=(",", ":")).encode()
    pad = max(0, size - len(base))
    text = body["data"]["content"]["body"] + " " + ("Lorem ipsum dolor sit amet. " * (pad // 28 + 1))
    body["data"]["content"]["body"] = text[: len(body["data"]["content"]["body"]) + pad]
    return json.dumps(body, separators=(",", ":")).encode()


def emit(result: dict[str, Any], out: Path | None) -> None:
    line = json.dumps(result, separators=(", ", ": "))
    print(line, flush=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as f:
            f.write(line + "\n")


def rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)
