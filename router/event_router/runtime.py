"""Process-wide settings of the interpreter and the C library that the router's processes run with."""

from __future__ import annotations

import gc
import sys


def tune_for_router_process() -> None:
    """Before the router starts any thread: a short GIL switch interval and at most two malloc arenas."""
    # The spool writer thread gives up the GIL around every SQLite call and then has to win it back
    # from a busy event loop: at the default 5 ms switch interval each hand-over can add 5 ms to a
    # commit, and with it to every acknowledgement and delivery (benchmarked at 1,000 ev/s: p99 18-81 ms -> 6-14 ms).
    sys.setswitchinterval(0.0005)
    limit_malloc_arenas()


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Before any thread starts: glibc gives each thread that allocates (spool writer, file writes) its
    own malloc arena, whose freed event bodies are rarely returned; under a flapping output RSS then rose
    in steps. In a 3-minute probe (400 ev/s, flapping http output) two arenas levelled it at 104 MB
    instead of 126 MB. A no-op where glibc is not the libc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def freeze_startup_heap() -> None:
    """Once a process is ready to serve: collect, then hide every surviving object from the cyclic collector.

    What survives start-up (modules, classes, compiled schemas and routes, plugin objects) lives as long
    as the process, so scanning it never frees anything, yet every full collection walks all of it. The
    first one came with the first requests: 25-34 ms with the loop stopped, which made the slowest 1 % of
    the webhook -> http benchmark at 1,000 ev/s. Frozen objects are still freed by reference counting
    when dropped (a reload's old configuration); only a reference cycle through them would stay.
    """
    gc.collect()
    gc.freeze()


def has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:  # optional on platforms without it: the stdlib loop works, only slower
        return False
    return True
