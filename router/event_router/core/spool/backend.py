"""Which backend holds the spool of a `data_dir`: the one place that chooses it.

The daemon (`App`), the operator commands (`dlq`, `status`, `check`) and the test kit get their spool here,
so another backend (PostgreSQL) is chosen here and nowhere else. Today every spool is SQLite, one file in
`data_dir` (`event_router.core.spool.sqlite`).

A separate module from the interface (`event_router.core.spool`): the backend imports the interface, so
the interface cannot import the backend without an import cycle.
"""

from __future__ import annotations

from pathlib import Path

from event_router.api.errors import SpoolError
from event_router.core.spool import OpenMode, Spool
from event_router.core.spool.sqlite import SQLiteSpool, directory_problem

__all__ = ["SpoolMissing", "directory_problem", "open_spool", "spool_for"]


class SpoolMissing(SpoolError):
    """`open_spool` was asked for the spool of a `data_dir` where no router has made one."""


def spool_for(data_dir: Path) -> Spool:
    """The spool of the router whose `data_dir` this is, not opened yet (`Spool.open`)."""
    return _sqlite(data_dir)


def open_spool(data_dir: Path, mode: OpenMode) -> Spool:
    """The spool of `data_dir`, opened as `mode` says.

    Beside the daemon ("shared", "readonly": the operator commands, the test kit) only a spool a router
    made is opened; else `SpoolMissing`, naming where it looked. Creating an empty one (and its data_dir)
    would only show a healthy, empty router where the path is wrong or the router never ran.
    """
    spool = _sqlite(data_dir)
    if mode != "exclusive" and not spool.path.is_file():
        raise SpoolMissing(f"no spool at {spool.path}")
    spool.open(mode)
    return spool


def _sqlite(data_dir: Path) -> SQLiteSpool:
    return SQLiteSpool(data_dir / "spool.db")
