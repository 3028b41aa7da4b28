"""Process-wide settings of the interpreter and the C library that the router's processes run with."""

from __future__ import annotations

import gc
import sys


def tune_for_router_process() -> None:
    """Before the router starts any thread: a short GIL switch interval and at most two malloc arenas."""
    # The spool writer thread gives up the GIL around every SQLite call and then has to win it back
    # from a busy event loop: each hand-over can add a whole switch interval (5 ms by default) to a
    # commit, and with it to every acknowledgement and delivery (figures: bench/RESULTS.md).
    sys.setswitchinterval(0.0005)
    limit_malloc_arenas()


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Before any thread starts: glibc gives each thread that allocates (spool writer, file writes) its
    own malloc arena, whose freed event bodies are rarely returned; under a flapping output RSS then rose
    in steps; two arenas bound that growth (figures: bench/RESULTS.md). A no-op where glibc is not the
    libc."""
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
    first one came with the first requests and stopped the loop long enough to make the latency tail
    (bench/RESULTS.md). Frozen objects are still freed by reference counting
    when dropped (a reload's old configuration); only a reference cycle through them would stay.

    Then the youngest generation is collected every GC_YOUNG allocations of containers instead of 700: a
    request makes a few dozen containers, nearly all freed by reference counting at once, so at the default
    the collector ran every few dozen requests, on the loop's thread, holding the GIL, and found little.
    What a cycle holds waits longer to be freed: at most that many containers more (a few MB).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG, 20, 20)


#: allocations of containers between two collections of the youngest generation (see freeze_startup_heap)
GC_YOUNG = 20_000


def has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:  # optional on platforms without it: the stdlib loop works, only slower
        return False
    return True
