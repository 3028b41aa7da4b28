"""Sampling profiles of a running router with py-spy (`.venv/bin/pip install py-spy`), summarised by function.

Only used with `run.py --profile DIR`, on an extra load run whose figures are not reported: py-spy's
sampling costs the profiled process some time.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _common import stop

EXTRA: list[str] = []
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+)(?::\d+)?\)$")


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
    return found


@contextmanager
def py_spy(pid: int, out: Path, seconds: float) -> Iterator[None]:
    """Sample `pid` (all threads, idle ones excluded) for `seconds` into a collapsed-stack file."""
    cmd = [_py_spy(), "record", "-p", str(pid), "-d", str(max(1, round(seconds))), "-r", "200"]
    cmd += ["-f", "raw", "-o", str(out), "--nonblocking", *EXTRA]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield
        proc.wait(seconds + 30)
    finally:
        stop(proc)


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match["file"]
    for marker in ("site-packages/", "/router/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match['func']} ({path})"


def summarise(raw: Path, top: int = 12) -> list[dict[str, Any]]:
    """The functions taking most samples: `self_pct` (leaf) and `total_pct` (anywhere on the stack)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";") if f]
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    if not samples:
        return []
    return [
        {"function": name, "self_pct": round(100 * n / samples, 1), "total_pct": round(100 * total[name] / samples, 1)}
        for name, n in own.most_common(top)
    ]
