"""Which backend holds the spool of a `data_dir`: the one place that chooses it.

The daemon (`App`), the operator commands (`dlq`, `status`, `check`) and the test kit get their spool here,
so the backend is chosen here and nowhere else: SQLite, one file in `data_dir`
(`event_router.core.spool.sqlite`), unless `[router] spool` names PostgreSQL
(`event_router.core.spool.postgresql`, imported only then: its driver is the `postgresql` extra).

A separate module from the interface (`event_router.core.spool`): the backend imports the interface, so
the interface cannot import the backend without an import cycle.
"""

from __future__ import annotations

from pathlib import Path

from event_router.api.errors import SpoolError
from event_router.core.spool import OpenMode, Spool, SpoolMissing, SpoolSettings
from event_router.core.spool.sqlite import SQLiteSpool, directory_problem

__all__ = ["SpoolMissing", "describe", "directory_problem", "dsn_problem", "open_spool", "probe", "spool_for"]

#: what a router without the `postgresql` extra says when its config asks for the PostgreSQL spool
NEEDS_EXTRA = (
    "the PostgreSQL spool needs its driver: install enmeshed-event-router[postgresql] (psycopg) beside the router"
)


def spool_for(data_dir: Path, settings: SpoolSettings | None = None) -> Spool:
    """The spool of the router whose `data_dir` and `[router] spool` these are, not opened yet (`Spool.open`)."""
    if settings is not None and settings.backend == "postgresql":
        return _postgresql(settings)
    return _sqlite(data_dir)


def open_spool(data_dir: Path, mode: OpenMode, settings: SpoolSettings | None = None) -> Spool:
    """The spool of `data_dir` (or the database `settings` names), opened as `mode` says.

    Beside the daemon ("shared", "readonly": the operator commands, the test kit) only a spool a router
    made is opened; else `SpoolMissing`, naming where it looked. Creating an empty one (and its data_dir)
    would only show a healthy, empty router where the path is wrong or the router never ran.
    """
    spool = spool_for(data_dir, settings)
    if isinstance(spool, SQLiteSpool) and mode != "exclusive" and not spool.path.is_file():
        raise SpoolMissing(f"no spool at {spool.path}")
    spool.open(mode)  # the PostgreSQL spool raises SpoolMissing itself: it must connect to know
    return spool


def dsn_problem(dsn: str) -> str | None:
    """Why `dsn` is no PostgreSQL connection string (None when it is one), without connecting."""
    try:
        from event_router.core.spool import postgresql
    except ImportError:
        return NEEDS_EXTRA
    return postgresql.dsn_problem(dsn)


def dsn_has_password(dsn: str) -> bool:
    """Whether `dsn` carries a password (False when the driver is missing: `dsn_problem` says that)."""
    try:
        from event_router.core.spool import postgresql
    except ImportError:
        return False
    return postgresql.has_password(dsn)


def describe(data_dir: Path, settings: SpoolSettings | None = None) -> str:
    """Where the spool of `data_dir` / `settings` is, for people: a path, or the DSN without its password."""
    if settings is not None and settings.backend == "postgresql" and settings.dsn is not None:
        try:
            from event_router.core.spool import postgresql
        except ImportError:
            return "postgresql"
        return postgresql.describe(settings.dsn)
    return str(data_dir / "spool.db")


def probe(data_dir: Path, settings: SpoolSettings | None = None) -> str:
    """Try the spool's place without changing it (`check --connect`): what is there, or a SpoolError why it
    cannot be used. SQLite: whether `data_dir` is usable and holds a spool; PostgreSQL: connects."""
    if settings is not None and settings.backend == "postgresql":
        try:
            from event_router.core.spool import postgresql
        except ImportError as exc:
            raise SpoolError(NEEDS_EXTRA) from exc
        assert settings.dsn is not None, "the config loader requires a dsn for the PostgreSQL spool"
        return postgresql.probe(settings.dsn)
    problem = directory_problem(data_dir)
    if problem is not None:
        raise SpoolError(problem)
    path = data_dir / "spool.db"
    return f"{path}: " + (
        "a spool is there" if path.is_file() else "no spool yet (the router makes it at its first start)"
    )


def _postgresql(settings: SpoolSettings) -> Spool:
    try:
        from event_router.core.spool.postgresql import PostgreSQLSpool
    except ImportError as exc:
        raise SpoolError(NEEDS_EXTRA) from exc
    assert settings.dsn is not None, "the config loader requires a dsn for the PostgreSQL spool"
    return PostgreSQLSpool(settings.dsn, lease=settings.lease)


def _sqlite(data_dir: Path) -> SQLiteSpool:
    return SQLiteSpool(data_dir / "spool.db")
