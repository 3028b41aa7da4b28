"""The core's tests take the test kit's fixtures (event_router.testing), and here the spool backends' (`spool_at`,
`pg_dsn`): the spool's suites run on SQLite and on PostgreSQL."""

from __future__ import annotations

import importlib.util
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from event_router.core.spool import Spool
from event_router.testing import IN_CI

#: the test kit's fixtures (`make_app`, `anyio_backend`, and the autouse `reap_routers`): opted into here, in
#: a conftest.py pytest reads before the session (a testpath of its own), as any plugin's suite does
pytest_plugins = ["event_router.testing.fixtures"]


def _load_sibling(name: str) -> None:
    """tests/<name>.py as the module `name`, before the test modules import it: with --import-mode=importlib a
    sibling module is not on the path."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


# the Connector's REST API and token endpoint, faked to its OpenAPI contract
_load_sibling("fake_connector")
# what the tests of real routers share beside the test kit
_load_sibling("router_helpers")

#: the PostgreSQL server the spool's tests make their scratch databases on (scripts/services starts one)
PG_DSN = os.environ.get("ROUTER_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
#: the spool backends the parametrised suites run on
SPOOL_BACKENDS = ("sqlite", "postgresql")


def require_postgresql() -> None:
    """Skip on a developer's machine without PostgreSQL; fail in CI, where scripts/services starts it."""
    import psycopg

    try:
        psycopg.connect(PG_DSN, connect_timeout=3).close()
    except psycopg.Error as exc:
        message = f"PostgreSQL is not reachable at {PG_DSN} ({exc}); see README 'Running the tests'"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    """The DSN of a scratch database of its own, dropped after the test."""
    import urllib.parse

    import psycopg

    require_postgresql()
    name = f"pg18_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_DSN, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield urllib.parse.urlsplit(PG_DSN)._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def pg_server() -> str:
    """The DSN of the server's maintenance database, where `pg_dsn`'s scratch databases are made: a session
    there is none of a scratch database's (a test that kills them all, or closes the database, runs its
    statements from here)."""
    require_postgresql()
    return PG_DSN


@pytest.fixture(params=SPOOL_BACKENDS)
def spool_at(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Spool]:
    """Makes a spool (not opened) at one place per test, again and again (a reopen): a SQLite file, or a
    scratch PostgreSQL database."""
    if request.param == "sqlite":
        from event_router.core.spool.sqlite import SQLiteSpool

        return lambda: SQLiteSpool(tmp_path / "spool.db")
    from event_router.core.spool.postgresql import PostgreSQLSpool

    dsn: str = request.getfixturevalue("pg_dsn")
    return lambda: PostgreSQLSpool(dsn)


@pytest.fixture(params=SPOOL_BACKENDS)
def router_spool(request: pytest.FixtureRequest) -> tuple[str, dict[str, str]]:
    """For a real router process on each backend: the `[router]` line choosing its spool ("" for SQLite,
    the default) and the environment it needs (the scratch database's DSN in ROUTER_PG_DSN)."""
    if request.param == "sqlite":
        return "", {}
    dsn: str = request.getfixturevalue("pg_dsn")
    return 'spool = { backend = "postgresql", dsn = { env = "ROUTER_PG_DSN" } }', {"ROUTER_PG_DSN": dsn}
