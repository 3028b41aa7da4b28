"""The spool's PostgreSQL backend (`PostgreSQLSpool`): one database several routers share.

The same guarantee as the SQLite spool: `store` returns once the transaction holding its events is
committed with `synchronous_commit` on (or stronger: with a synchronous standby the operator configured,
on two machines), so an input may then acknowledge its source. Writes go through one writer thread per
router that applies everything queued in one transaction and commits once (group commit,
`event_router.core.spool.writer`), each table's rows in one statement (unnest of arrays, binary parameters),
the group's statements sent in pipeline mode (`_run_transaction`): a round trip up to the sync point before
the commit and one for the commit, but for the answers a store reads at once (a message id's claim).

Several routers share the database. A delivery `store` inserts (the pipeline hands it to this router's
workers in memory) or `fetch_due` hands out is leased to this router (its `owner`, a lease expiry in the
server's clock), the latter claimed with `FOR UPDATE SKIP LOCKED`: no other live router is handed it while
the lease runs. The writer renews the leases of the deliveries this router holds every
third of a lease; a router that dies stops renewing, and once its leases expire another router delivers
them (at least once, with the same delivery id, hence the same `Idempotency-Key`). `settle` forgets a
delivery or gives it back due later (lease cleared).

Times in this spool (due, first attempt) are the database server's clock: each router's `clock` is
anchored to it at open and advances with monotonic time, so the routers' times agree whatever their hosts'
clocks say, and a jump of one host's wall clock moves nothing (the clock's jump threshold is infinite:
`rebase` is never needed). The counts the gauges read are the cluster's: the writer counts them again
about every second, and between counts adds its own writes. Each output's backlog limit (`store`'s
`limits`) is held by these counts in the storing transaction, like SQLite's: exact for this router's own
writes, while other routers' writes since the last count are not in them (`_park`). What each stored
event announced (gap recovery, `Spool.store`) is kept in the storing transaction too, and a claim is
decided there across routers: two routers rebuilding the same change store it once
(`_claim_announcements`).

Deliveries with an ordering key wait behind the pending ones of their output and key (`BLOCKED`) and
become due when those are finished, in the finishing transaction; whoever stores or finishes deliveries of
a key holds the key's advisory lock until its commit (`_lock_keys`), so routers storing and finishing one
key at once neither leave it with nothing due nor with two due. A key's first delivery, leased to the router
`fetch_due` handed it to, keeps the whole key from the others; `store` leases no keyed delivery (no worker
holds one in memory: it is read when due).

Every group takes its locks in one order, the same in every router, so two routers' groups storing and
settling do not wait for each other in a cycle (a deadlock, which PostgreSQL breaks after `deadlock_timeout`,
a second, by failing one of them): first its advisory locks, at the start of each attempt of its transaction
and before any row lock or write (`_take_locks`): the ordering keys it stores or finishes, sorted, then
ANNOUNCE_LOCK when it writes announced keys; then its ops' rows; then the events of all the deliveries it
finishes, in one statement in seq order (`_finish_send`); its live announced keys last, sorted
(`_write_announcements`). Left out of that order: message ids, each store claiming its own in a statement of
its own (two groups claiming the same ids in two orders); a delivery two routers settle at once (its lease
ran out); the breaker states a group upserts in its queue's order (`record_breaker`); the event rows an
operator's `replay_dead_letters` or `requeue_kept` locks before its finishing pass; `retry_now`'s bulk update;
`forget_announced`, which deletes announced keys without ANNOUNCE_LOCK; and the late key lock of
`_finish_read` (a key the group did not know at its start, not expected). Such a deadlock's group runs again
(`_run_group`).

The schema is versioned (`MIGRATIONS`); the daemon applies what is missing at open, in one transaction
under an advisory lock, so routers starting together upgrade once; a database of a newer schema is
refused. Tables live in the `event_router` schema of the database the DSN names.

The server may go away at any time (a restart, a failover, `pg_terminate_backend`): the writer and the reader
each make their connection again when they find it dead (at most every RECONNECT_PAUSE while the server
refuses), and a transaction found dead before its commit runs again at once on the new connection, since
nothing of it can have committed. While connecting fails, stores fail (transient SpoolErrors: nothing is
acknowledged) and `last_error` says why, which readiness reports.

The driver is psycopg 3 (the `postgresql` extra; bench/RESULTS.md has the measurement against asyncpg):
its synchronous connections serve the writer thread, `fetch_due` and the operator commands alike.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hashlib
import logging
import math
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import orjson
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from event_router.api.errors import SpoolError
from event_router.core.clock import SpoolClock
from event_router.core.spool import (
    ATTEMPTS_FIRST,
    BLOCKED,
    Attempt,
    Dead,
    DeadLetter,
    DeadLetterFilter,
    DeliveryRow,
    EventHistory,
    KeptCursor,
    KeptEvent,
    NewDelivery,
    OpenMode,
    OutputBacklog,
    OutputState,
    Parked,
    Refused,
    Requeue,
    Retry,
    SeenMessage,
    SpoolMissing,
    SpoolStatus,
    StillDead,
    StoreDeadLetter,
    StoredEvent,
    StoreEvent,
    records,
    storing,
)
from event_router.core.spool.history import event_history
from event_router.core.spool.writer import Op, gather, resolve_all

log = logging.getLogger("event_router.core.spool")
_T = TypeVar("_T")

#: the PostgreSQL schema (namespace) holding the spool's tables
NAMESPACE = "event_router"
#: the advisory lock migrations run under (any bigint the operator's other software is unlikely to use)
MIGRATION_LOCK = 0x6576_5F72_6F75_7465
#: the advisory lock announced keys are written under: shared by the groups writing live events' keys,
#: exclusive for a group claiming keys (`_claim_announcements`); taken with a group's other advisory locks,
#: after its ordering keys' (`_take_locks`)
ANNOUNCE_LOCK = MIGRATION_LOCK + 1
#: held (tried, never waited for) by the router pruning kept events: the others skip their turn
PRUNE_LOCK = MIGRATION_LOCK + 2
#: what each schema version adds, applied in order in one transaction; never edit a released one, add one
MIGRATIONS: Mapping[int, str] = {
    1: """
CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE events (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id text NOT NULL,
    trigger text NOT NULL,
    stored_at double precision NOT NULL,
    body bytea NOT NULL
);
CREATE TABLE deliveries (
    did bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    seq bigint NOT NULL REFERENCES events(seq),
    output text NOT NULL,
    route text NOT NULL,
    payload bytea,
    attempts integer NOT NULL DEFAULT 0,
    due double precision NOT NULL,
    first_at double precision NOT NULL,
    last_error text,
    lease_owner text,
    lease_until timestamptz
);
CREATE INDEX deliveries_due ON deliveries (output, due, did);
CREATE INDEX deliveries_seq ON deliveries (seq);
CREATE TABLE dead_letters (
    dlid bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id text,
    trigger text,
    source text,
    output text,
    route text,
    reason text NOT NULL,
    error text,
    attempts integer NOT NULL DEFAULT 0,
    created_at double precision NOT NULL,
    body bytea NOT NULL,
    payload bytea
);
CREATE INDEX dead_letters_output ON dead_letters (output, dlid);
CREATE INDEX dead_letters_trigger ON dead_letters (trigger, dlid);
CREATE INDEX dead_letters_created ON dead_letters (created_at);
CREATE TABLE seen_message_ids (
    input text NOT NULL,
    message_id text NOT NULL,
    expires_at double precision NOT NULL,
    PRIMARY KEY (input, message_id)
);
CREATE INDEX seen_message_ids_expiry ON seen_message_ids (expires_at);
""",
    # what each stored event announced, for gap recovery (`Spool.store`). Keys start with the change's date:
    # new ones land at the right edge of the primary key's b-tree, and forgetting is a range delete on it
    2: """
CREATE TABLE announced (key bytea PRIMARY KEY);
""",
    # outputs an operator paused and breakers a router holds open (`Spool.output_states`): one row per output
    # that has either; `breaker_until` is in the server's clock, so every router and `status` agree on a lapse.
    # IF NOT EXISTS: a step of its own, whatever number it ends up with among others
    3: """
CREATE TABLE IF NOT EXISTS output_states (
    output text PRIMARY KEY,
    paused boolean NOT NULL DEFAULT false,
    pause_changed_at double precision,
    pause_changed_by text,
    breaker_open_since double precision,
    breaker_until double precision,
    breaker_router text,
    breaker_error text
);
""",
    # retention: when the router received an event stored while `[router] retention` is on; such an event is
    # kept after its last delivery, for `event-router replay`, until pruned (`prune_kept`). Events stored before
    # have none and go with their last delivery. IF NOT EXISTS: a test re-runs the steps after the first
    4: """
ALTER TABLE events ADD COLUMN IF NOT EXISTS received double precision;
CREATE INDEX IF NOT EXISTS events_received ON events (received, seq) WHERE received IS NOT NULL;
""",
    # ordering keys (`NewDelivery.ordering_key`): NULL, unordered, for every delivery stored before (adding a
    # nullable column rewrites no row). The index holds keyed rows only: unordered ones cost no entry in it.
    # IF NOT EXISTS: a database whose recorded version was set back runs the step again without failing
    5: """
ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS ordering_key text;
CREATE INDEX IF NOT EXISTS deliveries_key ON deliveries (output, ordering_key, did) WHERE ordering_key IS NOT NULL;
""",
    # each delivery attempt (`settle`'s attempts), kept with its event while it is stored (`seq`) or with the
    # dead letter its delivery became (`dlid`); and the indexes `event-router trace` looks an event up by.
    # IF NOT EXISTS: a step of its own, whatever number it ends up with among others
    6: """
CREATE TABLE IF NOT EXISTS attempts (
    seq bigint NOT NULL,
    did bigint NOT NULL,
    dlid bigint,
    output text NOT NULL,
    route text NOT NULL,
    number integer NOT NULL,
    at double precision NOT NULL,
    duration double precision NOT NULL,
    outcome text NOT NULL,
    status integer,
    error text,
    answer text
);
CREATE INDEX IF NOT EXISTS attempts_seq ON attempts (seq);
CREATE INDEX IF NOT EXISTS attempts_did ON attempts (did, number);
CREATE INDEX IF NOT EXISTS attempts_dead_letter ON attempts (dlid) WHERE dlid IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_id ON events (id);
CREATE INDEX IF NOT EXISTS dead_letters_event ON dead_letters (event_id);
""",
    # replay history: a replayed dead letter's record (`replays`) and its attempts (`attempts.replayed`: the
    # dead letter their delivery was) stay with the event it was replayed into (`seq`), or with the dead letter
    # the delivery it went on as (`head`) became (`held_by`), and go with it: `_FORGET_ATTEMPTS`,
    # `purge_dead_letters`. Attempts recorded before have none (adding a nullable column rewrites no row).
    # IF NOT EXISTS: a step of its own, whatever number it ends up with among others
    7: """
ALTER TABLE attempts ADD COLUMN IF NOT EXISTS replayed bigint;
CREATE INDEX IF NOT EXISTS attempts_replayed ON attempts (replayed) WHERE replayed IS NOT NULL;
CREATE TABLE IF NOT EXISTS replays (
    dlid bigint PRIMARY KEY,
    seq bigint NOT NULL,
    held_by bigint,
    head bigint NOT NULL,
    replayed_as bigint NOT NULL,
    output text,
    route text,
    reason text NOT NULL,
    error text,
    attempts integer NOT NULL,
    created_at double precision NOT NULL,
    replayed_at double precision NOT NULL,
    replayed_by text
);
CREATE INDEX IF NOT EXISTS replays_seq ON replays (seq);
CREATE INDEX IF NOT EXISTS replays_head ON replays (head);
CREATE INDEX IF NOT EXISTS replays_held ON replays (held_by) WHERE held_by IS NOT NULL;
""",
}
SCHEMA_VERSION = max(MIGRATIONS)

#: what "pending" means, as in the SQLite spool: an event is pending while a delivery of it is left
PENDING_EVENTS = "SELECT count(DISTINCT seq) FROM deliveries"
PENDING_PER_OUTPUT = "SELECT output, count(*) FROM deliveries GROUP BY output"
#: the oldest pending delivery by id (ids follow the order of the stores), its `first_at`
OLDEST_PENDING = "SELECT first_at FROM deliveries ORDER BY did LIMIT 1"
_NOW = "SELECT extract(epoch FROM clock_timestamp())::float8"

#: SQLSTATE classes of a failure that is no fault of the statement: the connection (08), resources (53),
#: the server shutting down or restarting (57), a serialization failure or deadlock (40)
_TRANSIENT_CLASSES = ("08", "40", "53", "57")
#: the advisory locks of ordering keys (`_lock_keys`) use the two-key form, a key space apart from the
#: one-key locks above: (KEY_LOCK_CLASS, a 32-bit digest of output and key)
KEY_LOCK_CLASS = 0x6F72_6B65


def key_lock(output: str, key: str) -> int:
    """The advisory lock of one output's ordering key: a 32-bit digest (a collision only makes two keys'
    writes wait for each other)."""
    digest = hashlib.blake2b(f"{output}\0{key}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


#: SQLSTATE deadlock_detected, and how often a group PostgreSQL rolled back for one runs again (`_run_group`)
DEADLOCK = "40P01"
DEADLOCK_RETRIES = 3


def dsn_problem(dsn: str) -> str | None:
    """Why `dsn` is no connection string libpq reads (None when it is one); connects nowhere."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        # libpq's message may quote the string, password and all: say what is wrong without it
        reason = str(exc).splitlines()[0] if str(exc) else "unreadable"
        if dsn in reason:
            reason = "unreadable"
        return f"not a PostgreSQL connection string (a postgresql://user@host/db URL or key=value pairs): {reason}"
    if not dsn.strip():
        return "empty: give a postgresql://user@host/db URL or key=value pairs"
    if "dbname" not in params and not params.get("user"):
        return "names no database: add it (postgresql://user@host/DATABASE, or dbname=DATABASE)"
    return None


def has_password(dsn: str) -> bool:
    """Whether `dsn` carries a password (written in router.toml as plain text, `check` warns then)."""
    try:
        return bool(conninfo_to_dict(dsn).get("password"))
    except psycopg.ProgrammingError:
        return False


def probe(dsn: str, timeout: float = 10.0) -> str:
    """Connect to the spool's database as the router would and say what is there (`check --connect`):
    its schema version, or that no router has made the spool yet. A SpoolError says why not, without
    the DSN's password; nothing is written."""
    where = describe(dsn)
    try:
        with (
            psycopg.connect(
                make_conninfo(dsn, application_name="event-router check"), connect_timeout=max(1, int(timeout))
            ) as conn,
            conn.cursor() as cur,
        ):
            cur.execute(f"SET search_path = {NAMESPACE}")
            version = _schema_version(cur)
    except psycopg.Error as exc:
        raise SpoolError(f"cannot connect to the spool database {where}: {str(exc).strip()}") from exc
    if version is None:
        return f"{where}: reachable; no spool yet (the router makes its tables at its first start)"
    if version > SCHEMA_VERSION:
        raise SpoolError(
            f"spool {where} has schema {version}, newer than this router's {SCHEMA_VERSION}: upgrade this router"
        )
    if version < SCHEMA_VERSION:
        return f"{where}: reachable; spool schema {version}, upgraded to {SCHEMA_VERSION} at the router's next start"
    return f"{where}: reachable; spool schema {version} (current)"


def describe(dsn: str) -> str:
    """Where the spool is, for people and logs: the DSN without its password."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "postgresql (unreadable connection string)"
    host = params.get("host") or "localhost"
    port = params.get("port") or "5432"
    user = str(params.get("user") or "")
    return f"postgresql://{user + '@' if user else ''}{host}:{port}/{params.get('dbname') or user}"


def _session_lost(conn: psycopg.Connection[Any] | None) -> bool:
    """Whether the failure that just happened on `conn` was its session ending (psycopg marks it broken)."""
    return conn is not None and conn.broken


def _spool_error(exc: BaseException, doing: str = "write") -> SpoolError:
    """The SpoolError a failure raises to the callers, transient when PostgreSQL's SQLSTATE (or a lost
    connection) says the same write may succeed later: no psycopg exception leaves this module."""
    if isinstance(exc, SpoolError):
        return exc
    state = getattr(exc, "sqlstate", None) or ""
    transient = isinstance(exc, psycopg.OperationalError) or state[:2] in _TRANSIENT_CLASSES
    error = SpoolError(f"spool {doing} failed: {exc}".strip(), transient=transient)
    error.__cause__ = exc  # also when returned, not raised: `_run_group` reads the SQLSTATE
    return error


@dataclass(frozen=True, slots=True)
class SpoolCounts:
    """What the cluster's spool holds as of the writer's last count, plus this router's writes since."""

    pending: Mapping[str, int] = field(default_factory=dict)
    dead_letters: int = 0
    oldest_first_at: float | None = None


@dataclass(frozen=True, slots=True)
class _Pipelined:
    """A write (`Op.apply`) written for pipeline mode (`_run_transaction`): it reads no statement's answer
    but through a cursor's fetch (which waits for it: a round trip) or a `_Later` it returns (read at the
    group's sync point, before the commit); never `rowcount` or `statusmessage`, which are set only once the
    answer is in."""

    apply: Callable[[psycopg.Connection[Any]], Any]
    #: ANNOUNCE_LOCK as the write needs it, taken with the group's other advisory locks (`_take_locks`):
    #: "shared" to write live events' announced keys, "exclusive" to claim keys; None, not at all
    announces: Literal["shared", "exclusive"] | None = None
    #: deliveries the write finishes whose ordering key this router does not know (it does not hold them):
    #: their keys are read before the group's locks are taken (`_take_locks`)
    unknown: tuple[int, ...] = ()

    def __call__(self, conn: psycopg.Connection[Any]) -> Any:
        return self.apply(conn)


@dataclass(frozen=True, slots=True)
class _Later:
    """A write's result that reads its statements' answers: `_run_transaction` reads it at the group's sync
    point, before the commit (a connection lost during the commit may still have committed it)."""

    read: Callable[[], Any]


#: announced keys asked for in one statement (`announced`)
_KEYS_PER_READ = 1000


class PostgreSQLSpool:
    """The spool (`event_router.core.spool.Spool`) in a PostgreSQL database several routers share."""

    #: ops one transaction takes at most
    MAX_GROUP = 2000
    #: how long a lazy write (a delivery outcome) waits for other writes to share its commit
    LAZY_DELAY = 0.002
    #: how often the writer counts the cluster's spool again (and renews leases) when no write comes
    WATCH_INTERVAL = 1.0
    #: counting takes at most this share of the writer's time (O(n) in pending deliveries)
    RECOUNT_SHARE = 0.1
    #: after a failed connect, how long the writer and the reader each fail at once with its error instead of
    #: trying again: while the server is down, stores are refused without a connect each, and the event loop
    #: (the reader's) is not held by a connect at every delivery poll
    RECONNECT_PAUSE = 0.5

    def __init__(self, dsn: str, *, lease: float = 30.0, clock: SpoolClock | None = None, owner: str | None = None):
        self.dsn = dsn
        self.lease = lease
        #: never a jump: the server's clock is the base (see the module's doc)
        self.clock = clock or SpoolClock(threshold=math.inf)
        #: this router's name on its leases: unique per process and open
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.location = describe(dsn)
        self.exclusive = False
        self.depth = 0
        self.counts = SpoolCounts()
        self.commits = 0
        self.last_error: str | None = None
        self._queue: queue.SimpleQueue[Op | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        #: per connection ("writer", "reader"), its last failure to be made again: (monotonic time, why),
        #: until one is made; see RECONNECT_PAUSE
        self._down: dict[str, tuple[float, str]] = {}
        #: housekeeping failed, and has not succeeded since (it logs the first failure and the recovery)
        self._housekeeping_failed = False
        self._reader: psycopg.Connection[Any] | None = None
        #: the reader is used from the event loop and from operator commands' threads
        self._reader_lock = threading.Lock()
        #: deliveries leased to this router (by `store`, or by `fetch_due`) and not settled yet: did -> output
        #: (renewed by the writer)
        self._held: dict[int, str] = {}
        #: of those, the ones with an ordering key (all `fetch_due`'s): did -> (output, key), the keys `settle` locks
        self._held_keys: dict[int, tuple[str, str]] = {}
        #: outputs `release`d (no longer configured here) and not fetched again since: nothing of theirs is held
        self._released: set[str] = set()
        #: the key locks the transaction being applied holds already
        self._locked: set[int] = set()
        self._pending: dict[str, int] = {}
        self._dead = 0
        self._oldest: float | None = None
        self._next_count = 0.0
        self._next_renewal = 0.0
        #: announced keys of the group being applied -> already inserted (a claim's); the others are written
        #: in one statement just before its commit
        self._announcing: dict[bytes, bool] = {}
        #: deliveries the group's settles finished, forgotten in one pass just before its commit: every
        #: statement is a round trip the writer thread waits for, and then waits to take the GIL back from
        #: the event loop, so an output delivering one event per settle would otherwise cost the group three
        #: round trips per delivery
        self._finishing: list[int] = []
        #: of those, the ones the group's settles moved to dead letters (`_dead_letter`): one dead letter each
        self._dying: set[int] = set()
        #: the attempts the group's settles record (but a dead letter's, which `_dead_letter` records with it):
        #: in one statement just before the group's finishing pass, while the deliveries' rows say their
        #: event, output and route
        self._attempting: list[Attempt] = []

    # --- lifecycle -------------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(
            make_conninfo(self.dsn, application_name=f"event-router {self.owner}", **_dead_peer_settings(self.dsn)),
            autocommit=False,
            connect_timeout=10,
        )
        try:
            with conn.cursor() as cur:
                cur.execute(f"SET search_path = {NAMESPACE}")
                # the guarantee: a commit returns once durable (with a synchronous standby, there too). A
                # stronger setting of the operator's (remote_apply) is kept, a weaker one raised to `on`
                cur.execute("SHOW synchronous_commit")
                row = cur.fetchone()
                if row is None or row[0] not in ("on", "remote_apply"):
                    cur.execute("SET synchronous_commit = on")
            conn.commit()
        except BaseException:
            conn.close()
            raise
        return conn

    def open(self, mode: OpenMode = "shared") -> None:
        """Connect, bring the schema up to date ("exclusive", the daemon: under an advisory lock, so
        routers starting together upgrade once) or check it is current ("shared", "readonly": an older
        router may still run on an older one), and anchor the clock to the server's."""
        self.exclusive = mode == "exclusive"
        try:
            conn = self._connect()
        except psycopg.Error as exc:
            raise SpoolError(f"cannot connect to the spool database {self.location}: {exc}".strip()) from exc
        try:
            self._prepare(conn, mode)
            started = time.monotonic()
            server_now = float(_one(conn, _NOW))
            conn.commit()
            self.clock.offset = server_now - (started + time.monotonic()) / 2
            if self.exclusive:
                self._count_all(conn)
                conn.commit()
        except psycopg.Error as exc:
            conn.close()
            raise SpoolError(f"cannot open spool {self.location}: {exc}".strip()) from exc
        except BaseException:
            conn.close()
            raise
        if mode == "readonly":
            self._reader = conn
            return
        try:
            self._reader = self._connect()
        except psycopg.Error as exc:
            conn.close()
            raise SpoolError(f"cannot connect to the spool database {self.location}: {exc}".strip()) from exc
        self._thread = threading.Thread(target=self._writer, args=(conn,), name="spool-writer", daemon=True)
        self._thread.start()

    def _prepare(self, conn: psycopg.Connection[Any], mode: OpenMode) -> None:
        with conn.cursor() as cur:
            if mode == "exclusive":
                # the lock first: CREATE SCHEMA IF NOT EXISTS itself races with another router's
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                cur.execute(f"CREATE SCHEMA IF NOT EXISTS {NAMESPACE}")
            version = _schema_version(cur)
            if version is None and mode != "exclusive":
                raise SpoolMissing(f"no spool in {self.location}: no router has used this database yet")
            if version is not None and version > SCHEMA_VERSION:
                raise SpoolError(
                    f"spool {self.location} has schema {version}, newer than this router's {SCHEMA_VERSION}: "
                    "a newer router upgraded it; upgrade this router"
                )
            if version is not None and version < SCHEMA_VERSION and mode != "exclusive":
                raise SpoolError(
                    f"spool schema {version} is older than this router's: start the upgraded router once "
                    f"to upgrade it ({self.location})"
                )
            for step in range((version or 0) + 1, SCHEMA_VERSION + 1):
                cur.execute(MIGRATIONS[step])
                cur.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(step),),
                )
            if version is not None and version < SCHEMA_VERSION:
                log.info("spool upgraded", extra={"schema_version": SCHEMA_VERSION, "from": version})
        conn.commit()

    def close(self) -> None:
        """Let the writer finish what is queued, give back the leases held, then close. Safe to call twice."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._reader is not None:
            with self._reader_lock:
                self._reader.close()
                self._reader = None

    # --- the writer ------------------------------------------------------------------------------

    def _writer(self, conn: psycopg.Connection[Any] | None) -> None:
        running = True
        while running:
            try:
                first = self._queue.get(timeout=self.WATCH_INTERVAL)
            except queue.Empty:
                conn = self._housekeeping(conn)
                continue
            if first is None:
                break
            batch = [first]
            running = gather(self._queue, batch, max_group=self.MAX_GROUP, lazy_delay=self.LAZY_DELAY)
            conn = self._housekeeping(conn)
            conn = self._run_group(conn, batch)
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._release(conn, list(self._held))
            conn.close()

    def _live(self, conn: psycopg.Connection[Any] | None) -> psycopg.Connection[Any]:
        """The writer's connection, made again when the server went away (a restart, a failover); a transient
        SpoolError when it cannot be made (for RECONNECT_PAUSE after a failure, without trying)."""
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        if conn is not None:
            conn.close()
        return self._reconnect("writer")

    def _reconnect(self, which: str) -> psycopg.Connection[Any]:
        """A new connection for `which` ("writer", "reader"); a transient SpoolError naming the database when
        it cannot be made, raised again without trying for RECONNECT_PAUSE."""
        down = self._down.get(which)
        if down is not None and time.monotonic() - down[0] < self.RECONNECT_PAUSE:
            raise SpoolError(down[1], transient=True)
        try:
            conn = self._connect()
        except psycopg.Error as exc:
            why = f"cannot connect to the spool database {self.location}: {str(exc).strip()}"
            self._down[which] = time.monotonic(), why
            raise SpoolError(why, transient=True) from exc
        if self._down.pop(which, None) is not None:
            log.info("connected to the spool database again", extra={"spool": self.location, "connection": which})
        return conn

    def _housekeeping(self, conn: psycopg.Connection[Any] | None) -> psycopg.Connection[Any] | None:
        """Renew the leases held and count the cluster's spool again, when they are due; a failure is
        looked at again next time (the writer thread must go on)."""
        now = time.monotonic()
        renewing, counting = now >= self._next_renewal, now >= self._next_count
        if not (renewing or counting):
            return conn
        for attempt in range(2):
            used = conn is not None and not conn.closed and not conn.broken
            try:
                conn = self._live(conn)
                if renewing:
                    self._renew(conn)
                if counting:
                    started = time.monotonic()
                    self._count_all(conn)
                    took = time.monotonic() - started
                    self._next_count = started + max(self.WATCH_INTERVAL, took / self.RECOUNT_SHARE)
                conn.commit()
            except (psycopg.Error, SpoolError) as exc:
                if conn is not None and not conn.closed:
                    with contextlib.suppress(psycopg.Error):
                        conn.rollback()
                if attempt == 0 and used and _session_lost(conn):
                    continue  # killed while idle (a restart, pg_terminate_backend): again on a new connection
                # what was due is tried again in WATCH_INTERVAL (a lease renewal well before it runs out), not
                # at every group while the server is away
                retry = now + self.WATCH_INTERVAL
                if renewing:
                    self._next_renewal = retry
                if counting:
                    self._next_count = retry
                self.last_error = str(_spool_error(exc))
                if not self._housekeeping_failed:
                    self._housekeeping_failed = True
                    log.warning("could not renew leases or count the spool", extra={"error": str(exc)})
                return conn
            if renewing:
                self._next_renewal = now + self.lease / 3
            # a commit on the writer's connection: the spool takes writes again (readiness says so without
            # waiting for a store, which a load balancer that took this router out would never send)
            self.last_error = None
            if self._housekeeping_failed:
                self._housekeeping_failed = False
                log.info("leases renewed and the spool counted again", extra={"held": len(self._held)})
            return conn
        return conn

    def _renew(self, conn: psycopg.Connection[Any]) -> None:
        held = list(self._held)
        if held:
            conn.execute(
                "UPDATE deliveries SET lease_until = clock_timestamp() + %b * interval '1 second' "
                "WHERE did = ANY(%b) AND lease_owner = %b",
                (self.lease, held, self.owner),
                binary=True,
            )

    def _release(self, conn: psycopg.Connection[Any], dids: Sequence[int]) -> None:
        """Give back leases: another router (or this one's next worker) may take the deliveries now."""
        if dids:
            conn.execute(
                "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL WHERE did = ANY(%b) AND lease_owner = %b",
                (list(dids), self.owner),
                binary=True,
            )
            conn.commit()

    def _count_all(self, conn: psycopg.Connection[Any]) -> None:
        self.depth = int(_one(conn, PENDING_EVENTS))
        self._pending = {str(o): int(n) for o, n in conn.execute(PENDING_PER_OUTPUT).fetchall()}
        self._dead = int(_one(conn, "SELECT count(*) FROM dead_letters"))
        row = conn.execute(OLDEST_PENDING).fetchone()
        self._oldest = None if row is None else float(row[0])
        self._publish()

    def _publish(self) -> None:
        self.counts = SpoolCounts(dict(self._pending), self._dead, self._oldest)

    def _run_group(self, conn: psycopg.Connection[Any] | None, batch: list[Op]) -> psycopg.Connection[Any] | None:
        """Apply `batch` in one transaction; when a group of several fails for a reason that is not
        transient (one op's own fault), each op runs again alone, so one bad op never fails the others.

        A group PostgreSQL rolled back to break a deadlock with another router's runs again at once: the
        other group has gone on, so a new attempt waits for it at most, and the stores it holds need not fail
        for a conflict that is no fault of theirs. Groups take their locks in one order (see the module's
        doc), but for message ids (each store's claim inserts its ids sorted, but a group has a claim per
        store) and a delivery two routers settle at once.
        """
        conn, error = self._run_transaction(conn, batch)
        for _ in range(DEADLOCK_RETRIES):
            if error is None or error.__cause__ is None or getattr(error.__cause__, "sqlstate", None) != DEADLOCK:
                break
            log.info("spool group rolled back to break a deadlock, run again", extra={"ops": len(batch)})
            conn, error = self._run_transaction(conn, batch)
        if error is None:
            return conn
        if len(batch) == 1 or error.transient:
            self.last_error = str(error)
            resolve_all([(op, None, error) for op in batch])
            return conn
        for op in batch:
            conn, single = self._run_transaction(conn, [op])
            if single is not None:
                if single.transient:
                    self.last_error = str(single)
                resolve_all([(op, None, single)])
        return conn

    def _run_transaction(
        self, conn: psycopg.Connection[Any] | None, batch: list[Op]
    ) -> tuple[psycopg.Connection[Any] | None, SpoolError | None]:
        """Apply `batch` in one transaction.

        The server may end the session at any time (a restart, `pg_terminate_backend`, a failover). Found
        dead before the commit was sent, the transaction committed nothing: the batch runs again at once on a
        new connection. Ended during the commit, the transaction may have committed or not: its outcome is
        asked for on a new connection (`pg_xact_status` of the id it had), and the batch succeeds, runs again
        or fails accordingly; when that cannot be asked (the server away), it fails, kept or not (a store
        refused that was kept is delivered all the same: at least once).
        """
        counted = self.depth, dict(self._pending), self._dead, self._oldest
        # the group's advisory locks, first in each attempt (`_take_locks`): the (output, ordering key) pairs
        # it adds to or finishes (those of the deliveries `unknown` names read first), then ANNOUNCE_LOCK
        keys = {pair for op in batch for pair in op.keys}
        written = [op.apply for op in batch if isinstance(op.apply, _Pipelined)]
        unknown = sorted({did for op in written for did in op.unknown})
        modes = {op.announces for op in written}
        announces: Literal["shared", "exclusive"] | None = (
            "exclusive" if "exclusive" in modes else "shared" if "shared" in modes else None
        )
        # in pipeline mode when every op is written for it (`_Pipelined`): the statements go to the server
        # without waiting for each one's answer, all in one round trip up to the sync point but for those whose
        # answer an op reads at once (a message id's claim, a dead letter's id)
        pipelined = all(isinstance(op.apply, _Pipelined) for op in batch)
        for attempt in range(2):
            used = conn is not None and not conn.closed and not conn.broken
            xid: str | None = None
            committing = False
            # each attempt is a transaction of its own: the locks an earlier one took went with it
            self._locked = set()
            try:
                conn = self._live(conn)
                finishing: psycopg.Cursor[Any] | None = None
                # psycopg's own BEGIN waits for its answer in pipeline mode; sent as a statement, it goes with
                # the others (autocommit on only makes psycopg leave the transaction to the statements: the
                # commit and a rollback are sent all the same, and it is off again once they are)
                conn.autocommit = pipelined
                with conn.pipeline() if pipelined else contextlib.nullcontext():
                    if pipelined:
                        conn.execute("BEGIN")
                    asked = conn.execute("SELECT pg_current_xact_id()::text")
                    self._take_locks(conn, keys, unknown, announces)
                    applied = [op.apply(conn) for op in batch]
                    if self._attempting:
                        _record_attempts(conn, self._attempting, finished=self._finishing)
                        self._attempting.clear()
                    if self._finishing:
                        # in this transaction too: each finished delivery with a key makes the key's next due here
                        finishing = self._finish_send(conn, self._finishing)
                        self._finishing.clear()
                        self._dying.clear()
                    if self._announcing:
                        _write_announcements(conn, [key for key, written in self._announcing.items() if not written])
                        self._announcing.clear()
                # the sync point (leaving pipeline mode): every answer is in, none of it committed yet. The
                # transaction's id is known before its commit is sent, for `_outcome`
                row = asked.fetchone()
                xid = None if row is None else str(row[0])
                results = [result.read() if isinstance(result, _Later) else result for result in applied]
                if finishing is not None:
                    self._finish_read(conn, finishing)
                committing = True
                conn.commit()
                conn.autocommit = False
            except Exception as exc:  # one failed commit fails every op in it: none of them is durable
                self._finishing.clear()
                self._dying.clear()
                self._attempting.clear()
                self._announcing.clear()
                if conn is not None and not conn.closed:
                    with contextlib.suppress(psycopg.Error):
                        conn.rollback()
                        conn.autocommit = False
                lost = _session_lost(conn)
                outcome = None
                if committing and lost and xid is not None:
                    conn, outcome = self._outcome(conn, xid)
                    if outcome == "committed":
                        log.info("spool connection lost during a commit that went through", extra={"ops": len(batch)})
                        break
                depth, pending, dead, oldest = counted
                self.depth, self._pending, self._dead, self._oldest = depth, dict(pending), dead, oldest
                if attempt == 0 and lost and ((used and not committing) or outcome == "aborted"):
                    log.info("spool connection lost; its group runs again on a new one", extra={"ops": len(batch)})
                    continue
                return conn, _spool_error(exc)
            break
        self.commits += 1
        self.last_error = None
        self._publish()
        resolve_all([(op, result, None) for op, result in zip(batch, results, strict=True)])
        return conn, None

    def _outcome(self, conn: psycopg.Connection[Any] | None, xid: str) -> tuple[psycopg.Connection[Any] | None, Any]:
        """Whether transaction `xid`, whose session ended during its commit, committed: "committed", "aborted",
        "in progress" (its backend still ending), or None when the server cannot be asked now."""
        try:
            conn = self._live(conn)
            status = _one(conn, "SELECT pg_xact_status(%s::xid8)", (xid,))
            conn.commit()
        except (psycopg.Error, SpoolError):
            return conn, None
        return conn, status

    def _writer_running(self) -> None:
        if self._thread is None:
            raise SpoolError("spool is closed" if self._reader is None else "spool is open for reading only")

    async def _write(
        self,
        apply: Callable[[psycopg.Connection[Any]], Any],
        *,
        lazy: bool = False,
        keys: frozenset[tuple[str, str]] = frozenset(),
    ) -> Any:
        self._writer_running()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put(Op(apply, loop, future, lazy, keys))
        return await future

    def _write_sync(
        self, apply: Callable[[psycopg.Connection[Any]], Any], keys: frozenset[tuple[str, str]] = frozenset()
    ) -> Any:
        self._writer_running()
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put(Op(apply, None, future, keys=keys))
        return future.result()

    def _take_locks(
        self,
        conn: psycopg.Connection[Any],
        keys: Collection[tuple[str, str]],
        unknown: Sequence[int],
        announces: Literal["shared", "exclusive"] | None,
    ) -> None:
        """Take a group's advisory locks, at the start of its transaction: before any row lock or write, so
        that a group holding one of them never waits for a row another group holds (see the module's doc).

        The ordering keys first (`keys`, and those of the deliveries `unknown` names, read here: a round trip
        more, only for a group that finishes a delivery this router was not handed, which no worker of its
        does), then ANNOUNCE_LOCK. A key's lock taken after a row lock or write would let two routers' groups
        wait for each other: one waiting for a key's lock after writing an announced key, the other holding
        that key's lock and inserting the same announced key, which waits for the first one's commit.
        """
        wanted = set(keys)
        if unknown:
            rows = conn.execute(
                "SELECT DISTINCT output, ordering_key FROM deliveries WHERE did = ANY(%b) AND ordering_key IS NOT NULL",
                (list(unknown),),
                binary=True,
            ).fetchall()
            wanted.update((str(output), str(key)) for output, key in rows)
        if wanted:
            self._lock_keys(conn, wanted)
        if announces == "exclusive":
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (ANNOUNCE_LOCK,))
        elif announces == "shared":
            conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (ANNOUNCE_LOCK,))

    def _lock_keys(self, conn: psycopg.Connection[Any], pairs: Collection[tuple[str, str]]) -> None:
        """Take the advisory locks of these (output, ordering key) pairs until the commit, those this
        transaction does not hold yet, in ascending order (one statement: taken in the array's order).

        Whoever adds deliveries of a key, or finishes one and makes the next due, holds its lock: a router
        storing a key another is finishing waits for the other's commit, so it never finds the finished
        delivery still there and stores the new one behind it, where nothing would make it due; nor do two
        routers each store a first one. And a key's delivery ids then follow the order of the commits that
        stored them. The writer takes a group's locks before any of its ops applies (`Op.keys`,
        `_take_locks`), in one order in every router, so groups never wait for each other in a cycle.
        """
        wanted = sorted({key_lock(output, key) for output, key in pairs} - self._locked)
        if wanted:
            conn.execute(
                "SELECT pg_advisory_xact_lock(%b::int4, k) FROM unnest(%b::int4[]) AS k", (KEY_LOCK_CLASS, wanted)
            )
            self._locked.update(wanted)

    # --- the clock ---------------------------------------------------------------------------------

    def claim_clock(self) -> float:
        """Nothing to record: every router's clock is anchored to the database server's at open."""
        return 0.0

    async def rebase(self, shift: float) -> None:
        """Never needed (the clock's threshold is infinite); the shared rows are in the server's base and
        one router's host clock is no reason to move them."""

    # --- writes ------------------------------------------------------------------------------------

    async def store(
        self, items: Sequence[StoreEvent | StoreDeadLetter], limits: Mapping[str, int] | None = None
    ) -> list[list[int | Parked | Refused] | int | None]:
        """Persist events (per delivery: its id, `Parked` or `Refused`) and dead letters (the dead letter id);
        see `Spool.store`. `limits`: see `_park`. Announced keys: see `_claim_announcements`. Ordering keys:
        see `_lock_keys`."""
        now = self.clock.now()
        announced = [item.announced for item in items if item.announced is not None]
        # ANNOUNCE_LOCK, taken with the group's other advisory locks: exclusive to claim keys
        mode: Literal["shared", "exclusive"] | None = None
        if announced:
            mode = "exclusive" if any(a.claim for a in announced) else "shared"
        keys = _keys_of(items)

        def apply(conn: psycopg.Connection[Any]) -> list[list[int | Parked | Refused] | int | None] | _Later:
            out: list[list[int | Parked | Refused] | int | None] = [[] for _ in items]
            repeats = _claim_messages(conn, items, time.time())
            if announced:
                repeats |= _claim_announcements(conn, items, repeats, self._announcing)
            events: list[tuple[int, StoreEvent]] = []
            for index, item in enumerate(items):
                if index in repeats:
                    out[index] = None
                elif isinstance(item, StoreDeadLetter):
                    out[index] = _insert_dead_letter(conn, item, time.time())
                    self._dead += 1
                elif item.deliveries:
                    events.append((index, item))
            if not events:
                return out
            given = [item for _, item in events]
            kept, parked = storing.park(given, limits or {}, self._pending)
            dlids = self._park(conn, parked)
            left = [item for item in kept if item.deliveries]
            stored = self._insert_events(conn, left, now, leased=True) if left else list

            def read() -> list[list[int | Parked | Refused] | int | None]:
                for (index, _), result in zip(
                    events, storing.results(given, kept, parked, dlids, stored()), strict=True
                ):
                    out[index] = result
                return out

            return _Later(read)

        result: list[list[int | Parked | Refused] | int | None] = await self._write(
            _Pipelined(apply, announces=mode), keys=keys
        )
        # held from here, in the same step of the event loop as the pipeline hands them to the workers (no
        # await between): renewed while in memory, and let go by the next `fetch_due` of a worker that did not
        # take one. An output `release`d meanwhile holds nothing: its new leases run out. A delivery with an
        # ordering key was not leased (`_insert_events`): no worker holds it in memory
        for item, stored in zip(items, result, strict=True):
            if isinstance(item, StoreEvent) and isinstance(stored, list):
                for delivery, did in zip(item.deliveries, stored, strict=True):
                    if isinstance(did, int) and delivery.ordering_key is None and delivery.output not in self._released:
                        self._held[did] = delivery.output
        return result

    async def forget_announced(self, before: bytes) -> int:
        """Forget the announced keys that sort before `before`: one range delete on the key, a lazy commit.
        Every router runs it; whichever comes first deletes, the others find nothing."""

        def apply(conn: psycopg.Connection[Any]) -> int:
            return conn.execute("DELETE FROM announced WHERE key < %b", (before,), binary=True).rowcount

        result: int = await self._write(apply, lazy=True)
        return result

    def _park(self, conn: psycopg.Connection[Any], parked: Sequence[storing.Parking]) -> list[int]:
        """Keep the deliveries `storing.park` parked as dead letters (writer thread, in the storing transaction):
        one statement; their ids, in order.

        `park` counts pending by `_pending`: the cluster's count at the writer's last count (about every second,
        see WATCH_INTERVAL), plus this router's own commits since, plus the deliveries admitted before it in
        this group. Exact for this router's writes; other routers' stores and deliveries since the last count
        are not in it, so with several routers on one database an output may go past its limit by what the
        others stored within a count's interval (and park a little early by what they delivered). No lock
        across routers: a shared counter row would serialise every store of the cluster.
        """
        if not parked:
            return []
        # identity values are drawn in unnest's (array) order: the sorted ids are the rows' in order
        inserted = conn.execute(
            "INSERT INTO dead_letters (event_id, trigger, source, output, route, reason, error, created_at, "
            "body, payload) SELECT i, t, s, o, r, w, e, %b, b, p FROM unnest(%b::text[], "
            "%b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::bytea[], %b::bytea[]) "
            "AS u(i, t, s, o, r, w, e, b, p) RETURNING dlid",
            (
                time.time(),
                [p.event.event_id for p in parked],
                [p.event.trigger for p in parked],
                [p.event.source for p in parked],
                [p.delivery.output for p in parked],
                [p.delivery.route for p in parked],
                [p.reason for p in parked],
                [p.error for p in parked],
                [p.event.body for p in parked],
                [p.delivery.payload for p in parked],
            ),
            binary=True,
        ).fetchall()
        self._dead += len(parked)
        return sorted(int(r[0]) for r in inserted)

    def _insert_events(
        self,
        conn: psycopg.Connection[Any],
        events: Sequence[StoreEvent],
        now: float,
        *,
        leased: bool = False,
        kept: Sequence[int | None] = (),
    ) -> Callable[[], list[list[int]]]:
        """Insert events that have deliveries, all due at `now` (one with an ordering key whose output and key
        have pending deliveries already: `BLOCKED`); what reads each one's delivery ids, in order, once the
        statement's answer is in (in pipeline mode: at the group's sync point). The keys' locks are held
        (`_lock_keys`).

        `leased`: the deliveries without an ordering key are this router's from the start (`store`: the
        pipeline hands them to its workers in memory, and no other router may take them meanwhile); else any
        router's (a replay, from an operator command that ends at once; a keyed delivery, read when due).
        `kept` (a replay's, `_kept_seqs`, rows locked): per event, the seq of the kept event it is, which is
        given its deliveries instead of a copy of it being stored; None (or `kept` empty): stored.

        Identity values are drawn in the order the rows are produced, and unnest produces them in array
        order: the returned ids, sorted, are the rows' in input order (RETURNING's own order is unspecified).
        """
        known = list(kept) if kept else [None] * len(events)
        fresh = [e for e, seq in zip(events, known, strict=True) if seq is None]
        again = sorted({seq for seq in known if seq is not None})
        if again:
            # a kept event is pending again from here, unless a delivery of it already is
            row = conn.execute(
                "SELECT count(*) FROM unnest(%b::int8[]) AS u(seq) "
                "WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.seq = u.seq)",
                (again,),
                binary=True,
            ).fetchone()
            self.depth += int(row[0]) if row is not None else 0
        # per delivery: the seq of its kept event, or the (1-based) index of its fresh event among those the
        # statement inserts, whose seqs it reads sorted: identity values are drawn in unnest's (array) order
        numbers: list[int | None] = []
        index = 0
        for seq in known:
            if seq is None:
                index += 1
            numbers.append(index if seq is None else None)
        rows = [
            (seq, number, d) for item, seq, number in zip(events, known, numbers, strict=True) for d in item.deliveries
        ]
        owner, lease = (self.owner, self.lease) if leased else (None, None)
        # each delivery's due time, in the statement: now, or `BLOCKED` behind the pending deliveries of its
        # output and ordering key (`storing.due`: the first of a pair among these is the one that may be due;
        # the keys' locks are held, so what the statement reads of a key is all there is of it). A delivery
        # with an ordering key is never leased here, `leased` or not: no worker holds it in memory (it is read
        # from the spool once due), and a lease would keep its key from the other routers until this one's
        # worker let it go
        firsts: set[tuple[str, str]] = set()
        first: list[bool] = []
        for _, _, d in rows:
            pair = (d.output, d.ordering_key or "")
            first.append(d.ordering_key is not None and pair not in firsts)
            firsts.add(pair)
        # one statement (one round trip, the writer reads its answer at the group's sync point): the events,
        # then their deliveries, ids in input order as above (no join: the insert reads unnest's rows in order)
        cur = conn.cursor(binary=True)
        cur.execute(
            "WITH ev AS (INSERT INTO events (id, trigger, stored_at, received, body) "
            "SELECT * FROM unnest(%b::text[], %b::text[], %b::float8[], %b::float8[], %b::bytea[]) RETURNING seq), "
            "new AS (SELECT array_agg(seq ORDER BY seq) AS seqs FROM ev) "
            "INSERT INTO deliveries (seq, output, route, payload, due, first_at, ordering_key, lease_owner, "
            "lease_until) SELECT coalesce(u.s, (SELECT seqs FROM new)[u.i]), u.o, u.r, u.p, "
            "CASE WHEN u.k IS NULL OR (u.f AND NOT EXISTS (SELECT 1 FROM deliveries x WHERE x.output = u.o "
            "AND x.ordering_key = u.k)) THEN %b ELSE %b END, %b, u.k, CASE WHEN u.k IS NULL THEN %b::text END, "
            "CASE WHEN u.k IS NULL THEN clock_timestamp() + %b::float8 * interval '1 second' END "
            "FROM unnest(%b::int8[], %b::int4[], %b::text[], %b::text[], %b::bytea[], %b::text[], %b::bool[]) "
            "AS u(s, i, o, r, p, k, f) RETURNING did",
            (
                [e.event_id for e in fresh],
                [e.trigger for e in fresh],
                [now] * len(fresh),
                [e.received for e in fresh],
                [e.body for e in fresh],
                now,
                BLOCKED,
                now,
                owner,
                lease,
                [seq for seq, _, _ in rows],
                [number for _, number, _ in rows],
                [d.output for _, _, d in rows],
                [d.route for _, _, d in rows],
                [d.payload for _, _, d in rows],
                [d.ordering_key for _, _, d in rows],
                first,
            ),
        )
        for item in events:
            for d in item.deliveries:
                self._pending[d.output] = self._pending.get(d.output, 0) + 1
        self.depth += len(fresh)
        if self._oldest is None:
            self._oldest = now

        def read() -> list[list[int]]:
            dids = iter(sorted(int(r[0]) for r in cur.fetchall()))
            return [[next(dids) for _ in item.deliveries] for item in events]

        return read

    async def settle(
        self,
        *,
        done: Sequence[int] = (),
        retry: Sequence[Retry] = (),
        dead: Sequence[Dead] = (),
        attempts: Sequence[Attempt] = (),
        lazy: bool = False,
    ) -> list[int | None]:
        if not (done or retry or dead):
            return []
        finished = (*done, *(d[0] for d in dead))
        held = self._held_keys
        keys = frozenset(held[did] for did in finished if did in held) if held else frozenset()
        # what this router holds it knows the key of (`_held_keys`, or none); the others' are read before the
        # group takes its locks (`_take_locks`): finishing one locks its key too
        unknown = tuple(did for did in finished if did not in self._held)
        # a dead letter's attempt is recorded by `_dead_letter`, with its dead letter's id
        dying = {a.delivery: a for a in attempts if a.outcome in ("permanent", "retries_exhausted")}

        def apply(conn: psycopg.Connection[Any]) -> list[int | None]:
            self._finishing.extend(done)  # with the group's other settles, before its commit
            self._attempting.extend(a for a in attempts if a.delivery not in dying)
            if retry:
                # given back: due again later, for whichever router is free then. Not a delivery another
                # router took meanwhile (this one's lease expired): that one's state is its own
                conn.execute(
                    "UPDATE deliveries SET attempts = u.a, due = u.due, last_error = u.e, lease_owner = NULL, "
                    "lease_until = NULL "
                    "FROM unnest(%b::int8[], %b::int4[], %b::float8[], %b::text[]) AS u(did, a, due, e) "
                    "WHERE deliveries.did = u.did AND (lease_owner IS NULL OR lease_owner = %b)",
                    (
                        [r[0] for r in retry],
                        [r[1] for r in retry],
                        [r[2] for r in retry],
                        [r[3][:2000] for r in retry],
                        self.owner,
                    ),
                    binary=True,
                )
            return [self._dead_letter(conn, *item, attempt=dying.get(item[0])) for item in dead]

        result: list[int | None] = await self._write(_Pipelined(apply, unknown=unknown), lazy=lazy, keys=keys)
        for did in (*done, *(r[0] for r in retry), *(d[0] for d in dead)):
            self._held.pop(did, None)
            self._held_keys.pop(did, None)
        return result

    async def release(self, output: str, keep: Collection[int] = ()) -> None:
        """Give back the leases held on `output`'s deliveries, but `keep`: no longer renewed from now on, and
        cleared in a lazy commit so another router may take them at once. Should the commit fail (the
        database away), they are let go all the same: each lease runs out within `lease`."""
        self._released.add(output)
        kept = keep if isinstance(keep, (set, frozenset, dict)) else set(keep)
        dids = [did for did, o in list(self._held.items()) if o == output and did not in kept]
        for did in dids:
            self._held.pop(did, None)
            self._held_keys.pop(did, None)
        if not dids:
            return

        def apply(conn: psycopg.Connection[Any]) -> None:
            conn.execute(
                "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL WHERE did = ANY(%b) AND lease_owner = %b",
                (dids, self.owner),
                binary=True,
            )

        try:
            await self._write(_Pipelined(apply), lazy=True)
        except SpoolError as exc:
            log.warning(
                "could not give back the leases of an output no longer configured; they run out within the lease",
                extra={"output": output, "deliveries": len(dids), "lease": self.lease, "error": str(exc)},
            )

    def _dead_letter(
        self,
        conn: psycopg.Connection[Any],
        did: int,
        reason: str,
        error: str,
        attempts: int,
        *,
        attempt: Attempt | None = None,
    ) -> int | None:
        if did in self._dying:  # an earlier op of the group moved it: finished (as its finishing pass will)
            return None
        row = conn.execute(
            "SELECT e.id, e.trigger, e.body, d.output, d.route, d.payload FROM deliveries d "
            "JOIN events e ON e.seq = d.seq WHERE d.did = %s",
            (did,),
        ).fetchone()
        if row is None:  # finished already: nothing left to move
            return None
        event_id, trigger, body, output, route, payload = row
        dlid = _one(
            conn,
            "INSERT INTO dead_letters (event_id, trigger, source, output, route, reason, error, attempts,"
            " created_at, body, payload) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) RETURNING dlid",
            (
                event_id,
                trigger,
                _source(bytes(body)),
                output,
                route,
                reason,
                error[:4000],
                attempts,
                time.time(),
                bytes(body),
                None if payload is None else bytes(payload),
            ),
        )
        # its attempts go with the dead letter (the finishing pass forgets the attempts of the events it
        # deletes but a dead letter's), before that pass: the last one too, while the delivery's row says its
        # event and route
        conn.execute("UPDATE attempts SET dlid = %s WHERE did = %s", (dlid, did))
        # and so do the records of the dead letters it was replayed from (migration 7): two probes of an index,
        # of an empty range unless it was
        conn.execute(
            "UPDATE attempts SET dlid = %s WHERE replayed IN "
            "(SELECT dlid FROM replays WHERE head = %s AND held_by IS NULL)",
            (dlid, did),
        )
        conn.execute("UPDATE replays SET held_by = %s WHERE head = %s AND held_by IS NULL", (dlid, did))
        if attempt is not None:
            _record_attempts(conn, [attempt], dead_letter=int(dlid))
        # forgotten in the group's finishing pass, with its other finished deliveries: their events are locked
        # in one statement, in one order (a pass of its own here would lock its event before the group's)
        self._finishing.append(did)
        self._dying.add(did)
        self._dead += 1
        return int(dlid)

    def _finish_send(self, conn: psycopg.Connection[Any], dids: Sequence[int]) -> psycopg.Cursor[Any]:
        """Forget deliveries, each event once no delivery of it is left, and make the next of each finished
        ordering key due: the group's finishing pass, two statements (in pipeline mode, queued: the writer reads
        the answer at the group's sync point, `_finish_read`).

        The events are locked first, all of the group's in one statement in seq order (so two routers' groups
        never deadlock on them): two routers finishing an event's last two deliveries at once would each still
        see the other's row, and neither would delete the event; locked, the second waits for the first's
        commit. The second statement (`_FINISH`) starts after the lock is held, so its snapshot sees that
        commit, and every commit of the finished keys' deliveries by another router (the group took the keys'
        locks at its start, `_take_locks`).
        """
        given = list(dids)
        conn.execute(
            "SELECT seq FROM events WHERE seq IN (SELECT seq FROM deliveries WHERE did = ANY(%b)) "
            "ORDER BY seq FOR UPDATE",
            (given,),
            binary=True,
        )
        cur = conn.cursor(binary=True)
        cur.execute(_FINISH, (given, given, self.clock.now(), BLOCKED))
        return cur

    def _finish_read(self, conn: psycopg.Connection[Any], cur: psycopg.Cursor[Any]) -> None:
        """Count what `_finish_send`'s statements finished.

        Each finished key was locked at the group's start, so its next delivery was made due in the finishing
        statement. One that was not (a delivery this router believed unordered: never expected) is locked now
        and its next made due again, reading what another router stored of the key up to its commit: order
        kept, though a lock taken after the group's writes may deadlock with another router's group."""
        rows = cur.fetchall()
        finished: set[tuple[str, str]] = set()
        for output, key, _ in rows:
            left = self._pending.get(output, 0) - 1
            if left > 0:
                self._pending[output] = left
            else:
                self._pending.pop(output, None)
            if key is not None:
                finished.add((output, key))
        if rows:
            self.depth = max(0, self.depth - int(rows[0][2]))
        late = {pair for pair in finished if key_lock(*pair) not in self._locked}
        if late:
            log.warning("spool finished ordering keys it had not locked; locking them now", extra={"keys": len(late)})
            self._lock_keys(conn, late)
            _unblock(conn, late, self.clock.now())
        if not self._pending:
            self._oldest = None

    # --- reads for the delivery loop -----------------------------------------------------------------

    def _read(self, work: Callable[[psycopg.Connection[Any]], _T], doing: str = "read") -> _T:
        """`work` on the reader connection, in one transaction, committed; a SpoolError when it fails.

        The connection is made again when the server went away (at most every RECONNECT_PAUSE: a connect is
        made on the event loop). Found dead before the commit (the session ended while idle: a restart,
        `pg_terminate_backend`), `work` runs again at once on the new connection: nothing of it committed.
        """
        with self._reader_lock:
            for attempt in range(2):
                if self._reader is None:
                    raise SpoolError("spool is closed")
                used = not (self._reader.closed or self._reader.broken)
                committing = False
                try:
                    if not used:
                        self._reader.close()
                        self._reader = self._reconnect("reader")
                    result = work(self._reader)
                    committing = True
                    self._reader.commit()
                    return result
                except psycopg.Error as exc:
                    with contextlib.suppress(psycopg.Error):
                        self._reader.rollback()
                    if attempt == 0 and used and not committing and _session_lost(self._reader):
                        continue
                    raise _spool_error(exc, doing) from exc
            raise AssertionError("unreachable: the second attempt returns or raises")

    @property
    def writable(self) -> bool:
        """The writer runs and its last transaction (a group's, or the renewal and count it runs about every
        second) succeeded: false within about a second of the database going away, also without traffic."""
        return self._thread is not None and self._thread.is_alive() and self.last_error is None

    def oldest_pending_age(self) -> float | None:
        first_at = self.counts.oldest_first_at
        return None if first_at is None else max(0.0, self.clock.now() - first_at)

    def dead_letter_count(self) -> int:
        return self.counts.dead_letters

    def pending_outputs(self) -> dict[str, int]:
        return dict(self.counts.pending)

    def fetch_due(self, output: str, now: float, limit: int, exclude: Collection[int]) -> list[DeliveryRow]:
        """Lease up to `limit` deliveries of `output` due by `now` to this router, oldest due first.

        Every lease this router holds is in `_held` (the writer renews those) until it is given back, here
        or by the delivery's `settle`, which drops it from `_held` as it returns:
        - a delivery this router was handed before and no longer holds in memory (not in `exclude`: a
          worker let it go, or failed) is given back first, in the same transaction, so it is handed out
          again as the SQLite spool would;
        - what `exclude` names (in memory) is never handed out. Of it, what no lease covers yet and has no
          outcome committed (`attempts` 0: stored here and offered to the worker directly) is leased, so
          no other router takes it while it waits. What has an outcome committed is left alone: a retry
          whose `settle` had committed, leased here before that `settle` returned, was dropped from `_held`
          by it and then neither renewed nor handed out by anyone until its lease ran out (#18).

        The claim commits without waiting for the WAL flush (`synchronous_commit = off` for it alone):
        other routers see it at once, and a server crash that lost it only lets another router take the
        delivery too: at least once, as ever.
        """
        if limit <= 0:
            return []
        self._released.discard(output)  # a worker delivers it here (again)
        excluded = exclude if isinstance(exclude, (set, frozenset, dict)) else set(exclude)
        let_go = [did for did, o in list(self._held.items()) if o == output and did not in excluded]
        for did in let_go:
            self._held.pop(did, None)
        let_go_keys = {did: self._held_keys.pop(did) for did in let_go if did in self._held_keys}
        unleased = [did for did in excluded if did not in self._held]
        try:
            rows, leased = self._lease_due(output, now, limit, excluded, let_go, unleased)
        except SpoolError:
            # not committed: the leases given back above are still this router's, to renew
            for did in let_go:
                self._held.setdefault(did, output)
            for did, pair in let_go_keys.items():
                self._held_keys.setdefault(did, pair)
            raise
        for did, key in leased:
            self._held[did] = output
            if key is not None:  # every delivery held here has its key known (`settle` locks it)
                self._held_keys[did] = (output, key)
        out: list[DeliveryRow] = []
        for _due, did, seq, out_name, route, payload, attempts, first_at, body, event_id, trigger, key in rows:
            self._held[int(did)] = output
            if key is not None:
                self._held_keys[int(did)] = (output, key)
            out.append(
                DeliveryRow(
                    int(did),
                    int(seq),
                    out_name,
                    route,
                    None if payload is None else bytes(payload),
                    int(attempts),
                    float(first_at),
                    bytes(body),
                    event_id,
                    trigger,
                    key,
                )
            )
        return out

    def _lease_due(
        self,
        output: str,
        now: float,
        limit: int,
        excluded: Collection[int],
        let_go: list[int],
        unleased: list[int],
    ) -> tuple[list[tuple[Any, ...]], list[tuple[int, str | None]]]:
        """`fetch_due`'s transaction: the rows handed out (due order), and the ids of `unleased` leased, each
        with its ordering key."""

        def claim(conn: psycopg.Connection[Any]) -> tuple[list[tuple[Any, ...]], list[tuple[int, str | None]]]:
            cur = conn.cursor(binary=True)
            cur.execute("SET LOCAL synchronous_commit = off")
            if let_go:
                cur.execute(
                    "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL "
                    "WHERE did = ANY(%b) AND lease_owner = %b",
                    (let_go, self.owner),
                )
            if unleased:
                # SKIP LOCKED: a row the writer is settling is left to that settle (never a wait on it)
                cur.execute(
                    "WITH mine AS (SELECT did FROM deliveries WHERE did = ANY(%b) AND attempts = 0 "
                    "AND (lease_until IS NULL OR lease_until < clock_timestamp()) FOR UPDATE SKIP LOCKED) "
                    "UPDATE deliveries d SET lease_owner = %b, lease_until = clock_timestamp() + %b * interval "
                    "'1 second' FROM mine WHERE d.did = mine.did RETURNING d.did, d.ordering_key",
                    (unleased, self.owner, self.lease),
                )
                leased = [(int(did), key) for did, key in cur.fetchall()]
            else:
                leased = []
            cur.execute(
                "WITH picked AS (SELECT did FROM deliveries WHERE output = %b AND due <= %b "
                # NOT IN a subquery: a hashed lookup, also in the generic plan of the prepared statement
                # (`<> ALL(array)` is a scan of the array per row there: thousands of ids held in memory)
                "AND (lease_until IS NULL OR lease_until < clock_timestamp()) "
                "AND did NOT IN (SELECT unnest(%b::int8[])) ORDER BY due, did LIMIT %b FOR UPDATE SKIP LOCKED) "
                "UPDATE deliveries d SET lease_owner = %b, lease_until = clock_timestamp() + %b * interval '1 second' "
                "FROM picked, events e WHERE d.did = picked.did AND e.seq = d.seq "
                "RETURNING d.due, d.did, d.seq, d.output, d.route, d.payload, d.attempts, d.first_at, e.body, e.id, "
                "e.trigger, d.ordering_key",
                (output, now, list(excluded), limit, self.owner, self.lease),
            )
            return sorted(cur.fetchall(), key=lambda r: (r[0], r[1])), leased

        return self._read(claim)

    async def announced(self, keys: Sequence[bytes]) -> set[bytes]:
        """Which of these keys are kept, cluster-wide: one primary-key read per 1,000 on the reader
        connection, and the event loop's other tasks between them."""
        kept: set[bytes] = set()
        for start in range(0, len(keys), _KEYS_PER_READ):
            chunk = list(keys[start : start + _KEYS_PER_READ])
            kept.update(self._read(functools.partial(_kept_keys, chunk=chunk)))
            await asyncio.sleep(0)
        return kept

    def known_messages(self, seen: Sequence[SeenMessage]) -> set[tuple[str, str]]:
        if not seen:
            return set()
        return self._read(lambda conn: _known_messages(conn, seen, time.time()))

    # --- the outputs' states ----------------------------------------------------------------------------

    def output_states(self) -> dict[str, OutputState]:
        return self._read(_output_states)

    def set_paused(self, output: str, paused: bool, by: str) -> tuple[OutputState, bool]:
        def apply(conn: psycopg.Connection[Any]) -> tuple[OutputState, bool]:
            # the row locked (when there is one): two operators pausing at once, one of them changes it
            row = conn.execute("SELECT paused FROM output_states WHERE output = %s FOR UPDATE", (output,)).fetchone()
            changed = bool(row[0]) != paused if row is not None else paused
            if changed:
                conn.execute(
                    "INSERT INTO output_states (output, paused, pause_changed_at, pause_changed_by) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT (output) DO UPDATE SET paused = excluded.paused, "
                    "pause_changed_at = excluded.pause_changed_at, pause_changed_by = excluded.pause_changed_by",
                    (output, paused, time.time(), by[:200]),
                )
            return _output_states(conn, output).get(output, OutputState(output)), changed

        result: tuple[OutputState, bool] = self._write_sync(apply)
        return result

    async def record_breaker(
        self, output: str, *, router: str, open_since: float | None, error: str | None = None, lapse: float = 60.0
    ) -> None:
        def apply(conn: psycopg.Connection[Any]) -> None:
            if open_since is None:
                conn.execute(
                    "UPDATE output_states SET breaker_open_since = NULL, breaker_until = NULL, breaker_router = NULL, "
                    f"breaker_error = NULL WHERE output = %s AND (breaker_router = %s OR breaker_until < ({_NOW}))",
                    (output, router),
                )
                return
            conn.execute(
                "INSERT INTO output_states (output, breaker_open_since, breaker_until, breaker_router, breaker_error) "
                f"VALUES (%s, %s, ({_NOW}) + %s, %s, %s) ON CONFLICT (output) DO UPDATE SET "
                "breaker_open_since = excluded.breaker_open_since, breaker_until = excluded.breaker_until, "
                "breaker_router = excluded.breaker_router, breaker_error = excluded.breaker_error",
                (output, open_since, lapse, router, None if error is None else error[:2000]),
            )

        await self._write(_Pipelined(apply), lazy=True)

    # --- the operator commands -------------------------------------------------------------------------

    def dead_letters(self, where: DeadLetterFilter, limit: int | None = None) -> list[DeadLetter]:
        clause, args = _where(where)
        sql = f"SELECT {records.DEAD_LETTER_COLUMNS} FROM dead_letters{clause} ORDER BY dlid"
        if limit is not None:
            sql += " LIMIT %s"
            args.append(limit)
        rows = self._read(lambda conn: conn.execute(sql, args).fetchall())
        return [records.dead_letter(row) for row in rows]

    def count_dead_letters(self, where: DeadLetterFilter) -> tuple[int, int | None]:
        clause, args = _where(where)
        sql = f"SELECT count(*), max(dlid) FROM dead_letters{clause}"
        row = self._read(lambda conn: conn.execute(sql, args).fetchone())
        assert row is not None
        return int(row[0]), None if row[1] is None else int(row[1])

    def purge_dead_letters(self, where: DeadLetterFilter) -> int:
        clause, args = _where(where)

        def apply(conn: psycopg.Connection[Any]) -> int:
            conn.execute(f"DELETE FROM attempts WHERE dlid IN (SELECT dlid FROM dead_letters{clause})", args)
            conn.execute(f"DELETE FROM replays WHERE held_by IN (SELECT dlid FROM dead_letters{clause})", args)
            purged = conn.execute(f"DELETE FROM dead_letters{clause}", args).rowcount
            self._dead = max(0, self._dead - purged)
            return purged

        count: int = self._write_sync(apply)
        return count

    def replay_dead_letters(self, outcomes: Sequence[Requeue | StillDead], by: str | None = None) -> None:
        def apply(conn: psycopg.Connection[Any]) -> None:
            for item in outcomes:
                if isinstance(item, StillDead):
                    conn.execute(
                        "UPDATE dead_letters SET error = %s, attempts = attempts + 1 WHERE dlid = %s",
                        (item.error[:4000], item.dlid),
                    )
            requeued = [item for item in outcomes if isinstance(item, Requeue)]
            stored = [item for item in requeued if item.event.deliveries]
            events = [item.event for item in stored]
            if events:
                dids = self._insert_events(conn, events, float(_one(conn, _NOW)), kept=_kept_seqs(conn, events))()
                _keep_replayed(conn, [(item.dlid, ids[0]) for item, ids in zip(stored, dids, strict=True)], by)
            if requeued:
                dlids = [item.dlid for item in requeued]
                # what is left of them (their event not stored: nothing to keep it with) goes with them
                conn.execute("DELETE FROM attempts WHERE dlid = ANY(%s)", (dlids,))
                conn.execute("DELETE FROM replays WHERE held_by = ANY(%s)", (dlids,))
                gone = conn.execute("DELETE FROM dead_letters WHERE dlid = ANY(%s)", (dlids,)).rowcount
                self._dead = max(0, self._dead - gone)

        self._write_sync(apply, _keys_of([item.event for item in outcomes if isinstance(item, Requeue)]))

    # --- retention (kept events) and `event-router replay` -------------------------------------------------

    async def prune_kept(self, before: float, limit: int) -> int:
        """Forget up to `limit` kept events received before `before`, oldest first, in one lazy write.

        One router prunes at a time: the one holding PRUNE_LOCK (tried, never waited for: the others find
        nothing this turn). The rows are taken `FOR UPDATE SKIP LOCKED`, so a replay that holds one (it is
        being given new deliveries) is left alone, and a replay waiting for one finds it gone.
        """

        def apply(conn: psycopg.Connection[Any]) -> int:
            if not _one(conn, "SELECT pg_try_advisory_xact_lock(%s)", (PRUNE_LOCK,)):
                return 0
            return int(
                _one(
                    conn,
                    "WITH gone AS (DELETE FROM events WHERE seq IN (SELECT seq FROM events e WHERE received < %s "
                    "AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.seq = e.seq) ORDER BY received LIMIT %s "
                    f"FOR UPDATE SKIP LOCKED) RETURNING seq), {_FORGET_ATTEMPTS} SELECT count(*) FROM gone",
                    (before, limit),
                )
            )

        result: int = await self._write(apply, lazy=True)
        return result

    def count_kept(self, since: float, until: float) -> int:
        return self._read(
            lambda conn: int(
                _one(conn, "SELECT count(*) FROM events WHERE received >= %s AND received < %s", (since, until))
            )
        )

    def kept_events(
        self, since: float, until: float, *, after: KeptCursor | None = None, limit: int = 500
    ) -> list[KeptEvent]:
        where, args = records.kept_range(since, until, after, "%s")
        rows = self._read(
            lambda conn: conn.execute(
                f"SELECT {records.EVENT_COLUMNS} FROM events{where} ORDER BY received, seq LIMIT %s", [*args, limit]
            ).fetchall()
        )
        return [records.kept_event(row) for row in rows]

    def requeue_kept(self, items: Sequence[tuple[int, Sequence[NewDelivery]]]) -> set[int]:
        wanted = [(seq, deliveries) for seq, deliveries in items if deliveries]

        def apply(conn: psycopg.Connection[Any]) -> set[int]:
            cur = conn.cursor(binary=True)
            # held to the commit: a router pruning skips these rows; one it pruned first is not returned
            cur.execute(
                "SELECT seq FROM events WHERE seq = ANY(%b) ORDER BY seq FOR KEY SHARE", ([seq for seq, _ in wanted],)
            )
            present = {int(r[0]) for r in cur.fetchall()}
            rows = [(seq, d) for seq, ds in wanted if seq in present for d in ds]
            if rows:
                now = float(_one(conn, _NOW))
                # one with an ordering key behind what of its key is pending (`BLOCKED`), as `store` puts it;
                # the keys' locks are held (`Op.keys`)
                waiting = _keys_pending(conn, (d for _, d in rows)) or set()
                cur.execute(
                    "INSERT INTO deliveries (seq, output, route, payload, due, first_at, ordering_key) "
                    "SELECT s, o, r, p, w, %b, k FROM unnest(%b::int8[], %b::text[], %b::text[], %b::bytea[], "
                    "%b::float8[], %b::text[]) AS u(s, o, r, p, w, k)",
                    (now, *_delivery_columns(rows), *_key_columns(rows, now, waiting)),
                )
            return present

        if not wanted:
            return set()
        found: set[int] = self._write_sync(apply, _key_pairs(d for _, ds in wanted for d in ds))
        return found

    def stored_events(self, event_id: str, limit: int = 20) -> list[StoredEvent]:
        def read(conn: psycopg.Connection[Any]) -> list[StoredEvent]:
            now = float(_one(conn, _NOW))
            rows = conn.execute(
                f"SELECT {records.EVENT_COLUMNS} FROM events WHERE id = %s ORDER BY seq LIMIT %s", (event_id, limit)
            ).fetchall()
            deliveries = conn.execute(
                f"SELECT seq, {records.PENDING_COLUMNS} FROM deliveries WHERE seq = ANY(%s) ORDER BY did",
                ([int(row[0]) for row in rows],),
            ).fetchall()
            return [
                records.stored_event(
                    row, [records.pending_row(delivery[1:], now) for delivery in deliveries if delivery[0] == row[0]]
                )
                for row in rows
            ]

        return self._read(read)

    def retry_now(self, output: str) -> int:
        def apply(conn: psycopg.Connection[Any]) -> int:
            now = float(_one(conn, _NOW))
            return conn.execute(
                "UPDATE deliveries SET due = %s WHERE output = %s AND attempts > 0 AND due > %s", (now, output, now)
            ).rowcount

        count: int = self._write_sync(apply)
        return count

    def dead_letter_attempts(self, dlids: Sequence[int]) -> dict[int, list[Attempt]]:
        if not dlids:
            return {}
        rows = self._read(
            lambda conn: conn.execute(
                # its own delivery's: those of the deliveries it was replayed from say so
                f"SELECT dlid, {records.ATTEMPT_COLUMNS} FROM attempts WHERE dlid = ANY(%s) AND replayed IS NULL "
                "ORDER BY dlid, did, number",
                (list(dlids),),
            ).fetchall()
        )
        out: dict[int, list[Attempt]] = {}
        for dlid, *attempt in rows:
            out.setdefault(int(dlid), []).append(records.attempt(attempt))
        return out

    def event_history(self, event_id: str) -> EventHistory | None:
        return self._read(functools.partial(_event_history, event_id=event_id))

    def status(self) -> SpoolStatus:

        def read(conn: psycopg.Connection[Any]) -> tuple[int, float, Any, dict[str, OutputBacklog], list[Any]]:
            now = float(_one(conn, _NOW))
            return (
                int(_one(conn, PENDING_EVENTS)),
                now,
                conn.execute(OLDEST_PENDING).fetchone(),
                _output_backlogs(conn, now),
                conn.execute(
                    "SELECT output, reason, count(*) FROM dead_letters GROUP BY 1, 2 ORDER BY 1 NULLS FIRST, 2"
                ).fetchall(),
            )

        pending, now, oldest, backlogs, counts = self._read(read)
        return records.spool_status(self.location, pending, now, oldest, backlogs, counts)


def _one(conn: psycopg.Connection[Any], sql: str, args: Sequence[Any] = ()) -> Any:
    row = conn.execute(sql, args).fetchone()
    assert row is not None, sql
    return row[0]


def _output_states(conn: psycopg.Connection[Any], output: str | None = None) -> dict[str, OutputState]:
    """The rows of `output_states` (one output's, or all); an open breaker whose record lapsed (by the server's
    clock) reads as closed."""
    live = f"breaker_until >= ({_NOW})"
    sql = (
        f"SELECT output, paused, pause_changed_at, pause_changed_by, CASE WHEN {live} THEN breaker_open_since END, "
        f"CASE WHEN {live} THEN breaker_router END, CASE WHEN {live} THEN breaker_error END FROM output_states"
    )
    rows = conn.execute(sql + " WHERE output = %s", (output,)) if output is not None else conn.execute(sql)
    return {
        name: OutputState(name, bool(paused), changed_at, changed_by, open_since, router, error)
        for name, paused, changed_at, changed_by, open_since, router, error in rows.fetchall()
    }


#: libpq settings that make a connection whose server vanished without closing it (its host gone, a network
#: cut) fail within seconds instead of when the kernel gives up (minutes): TCP keepalives on an idle
#: connection, and `tcp_user_timeout` for data sent and never acknowledged. The DSN's own values win.
DEAD_PEER_SETTINGS = {
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
    "tcp_user_timeout": "15000",
}


def _dead_peer_settings(dsn: str) -> dict[str, str]:
    """`DEAD_PEER_SETTINGS` the DSN does not set itself (a Unix socket has no TCP: none then)."""
    given = conninfo_to_dict(dsn)
    host = str(given.get("host") or os.environ.get("PGHOST") or "")
    if not host or host.startswith(("/", "@")):
        return {}
    return {key: value for key, value in DEAD_PEER_SETTINGS.items() if key not in given}


def _schema_version(cur: psycopg.Cursor[Any]) -> int | None:
    """The spool's schema version; None when the database holds no spool yet."""
    cur.execute("SELECT to_regclass('meta') IS NOT NULL")
    row = cur.fetchone()
    if row is None or not row[0]:
        return None
    cur.execute("SELECT value FROM meta WHERE key = 'schema_version'")
    found = cur.fetchone()
    return None if found is None else int(found[0])


def _source(body: bytes) -> str | None:
    """The event's `source` for the dead letter's column (a valid event always has one; a broken body none)."""
    try:
        value = orjson.loads(body).get("source")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _kept_keys(conn: psycopg.Connection[Any], chunk: list[bytes]) -> set[bytes]:
    rows = conn.execute("SELECT key FROM announced WHERE key = ANY(%b)", (chunk,), binary=True).fetchall()
    return {bytes(key) for (key,) in rows}


def _kept_seqs(conn: psycopg.Connection[Any], events: Sequence[StoreEvent]) -> list[int | None]:
    """Per event a replay stores again, the seq of the kept event (`[router] retention`) it is, None when the
    spool keeps none: the latest stored with its id, its very body (as the dead letter copied it) and a
    received time. The rows are locked to the commit, as `requeue_kept` locks its own: a router pruning skips
    them, and one it pruned first is not found (the event is stored again). One statement (`events_id`)."""
    rows = conn.execute(
        "SELECT e.seq, e.id, e.body FROM events e JOIN unnest(%b::text[], %b::bytea[]) AS u(id, body) "
        "ON e.id = u.id AND e.body = u.body WHERE e.received IS NOT NULL ORDER BY e.seq FOR KEY SHARE OF e",
        ([item.event_id for item in events], [item.body for item in events]),
        binary=True,
    ).fetchall()
    latest = {(str(eid), bytes(body)): int(seq) for seq, eid, body in rows}  # in seq order: the last wins
    return [latest.get((item.event_id, item.body)) for item in events]


def _keys_of(items: Sequence[StoreEvent | StoreDeadLetter]) -> frozenset[tuple[str, str]]:
    """The (output, ordering key) pairs whose pending deliveries storing `items` adds to (`Op.keys`)."""
    return _key_pairs(d for item in items if isinstance(item, StoreEvent) for d in item.deliveries if d.refused is None)


def _key_pairs(deliveries: Iterable[NewDelivery]) -> frozenset[tuple[str, str]]:
    """The (output, ordering key) pairs of these deliveries, those without a key left out."""
    return frozenset((d.output, d.ordering_key) for d in deliveries if d.ordering_key is not None)


def _keys_pending(conn: psycopg.Connection[Any], deliveries: Iterable[NewDelivery]) -> set[tuple[str, str]] | None:
    """The (output, ordering key) pairs of these deliveries that have pending deliveries already, in one
    statement (an indexed look per pair, `deliveries_key`); None when no delivery has a key."""
    wanted = _key_pairs(deliveries)
    if not wanted:
        return None
    pairs = sorted(wanted)
    rows = conn.execute(
        "SELECT u.o, u.k FROM unnest(%b::text[], %b::text[]) AS u(o, k) WHERE EXISTS "
        "(SELECT 1 FROM deliveries d WHERE d.output = u.o AND d.ordering_key = u.k)",
        ([o for o, _ in pairs], [k for _, k in pairs]),
        binary=True,
    ).fetchall()
    return {(str(o), str(k)) for o, k in rows}


def _delivery_columns(rows: Sequence[tuple[int, NewDelivery]]) -> tuple[list[Any], ...]:
    """The arrays of new deliveries' (event seq, delivery) rows that every insert of `deliveries` unnests:
    seq, output, route, payload."""
    return (
        [seq for seq, _ in rows],
        [d.output for _, d in rows],
        [d.route for _, d in rows],
        [d.payload for _, d in rows],
    )


def _key_columns(
    rows: Sequence[tuple[int, NewDelivery]], now: float, waiting: set[tuple[str, str]]
) -> tuple[list[Any], ...]:
    """The arrays an insert of deliveries with ordering keys unnests besides `_delivery_columns`: each one's due
    time (`storing.due`: `BLOCKED` behind the pending ones of its key) and its key."""
    return [storing.due(d, now, waiting) for _, d in rows], [d.ordering_key for _, d in rows]


def _unblock(conn: psycopg.Connection[Any], keys: Collection[tuple[str, str]], now: float) -> None:
    """Make the first pending delivery of each (output, ordering key) due `now`, if it waited: its predecessor
    was just finished, in this transaction (which holds the keys' locks). `_finish_read`'s fallback: the
    finishing statement does it with the same CTEs (`_UNBLOCK_HEADS`)."""
    pairs = sorted(keys)
    conn.execute(
        "WITH keyed AS (SELECT u.o AS output, u.k AS ordering_key, '{}'::int8[] AS dids "
        f"FROM unnest(%b::text[], %b::text[]) AS u(o, k)), {_UNBLOCK_HEADS} SELECT count(*) FROM heads",
        ([o for o, _ in pairs], [k for _, k in pairs], now, BLOCKED),
        binary=True,
    )


def _known_messages(conn: psycopg.Connection[Any], seen: Sequence[SeenMessage], now: float) -> set[tuple[str, str]]:
    rows = conn.execute(
        "SELECT s.input, s.message_id FROM seen_message_ids s JOIN unnest(%b::text[], %b::text[]) AS u(i, m) "
        "ON s.input = u.i AND s.message_id = u.m WHERE s.expires_at >= %b",
        ([m.input for m in seen], [m.message_id for m in seen], now),
        binary=True,
    ).fetchall()
    return {(str(i), str(m)) for i, m in rows}


def _claim_messages(
    conn: psycopg.Connection[Any], items: Sequence[StoreEvent | StoreDeadLetter], now: float
) -> set[int]:
    """Record the message ids of `items` in the transaction that stores them; the indexes of the repeats.

    Of the items with one id, the first is stored. `ON CONFLICT DO NOTHING` waits for another router's
    transaction inserting the same id: once that commits, this one's row is the repeat; a crash or roll
    back of the other lets this one's in. Ids past their expiry go first (an indexed range delete).
    """
    claimed = [(index, item.seen) for index, item in enumerate(items) if item.seen is not None]
    if not claimed:
        return set()
    conn.execute("DELETE FROM seen_message_ids WHERE expires_at < %s", (now,))
    first: dict[tuple[str, str], int] = {}
    repeats: set[int] = set()
    new: list[SeenMessage] = []
    for index, seen in claimed:
        key = (seen.input, seen.message_id)
        if key in first:
            repeats.add(index)
        else:
            first[key] = index
            new.append(seen)
    # inserted in one order in every router: an insert waits for another transaction's uncommitted row of
    # the same id, and two transactions claiming two ids in opposite orders would wait for each other (a
    # deadlock PostgreSQL breaks by failing one of the groups)
    new.sort(key=lambda s: (s.input, s.message_id))
    inserted = conn.execute(
        "INSERT INTO seen_message_ids (input, message_id, expires_at) "
        "SELECT * FROM unnest(%b::text[], %b::text[], %b::float8[]) ON CONFLICT DO NOTHING RETURNING input, message_id",
        ([s.input for s in new], [s.message_id for s in new], [s.expires_at for s in new]),
        binary=True,
    ).fetchall()
    stored = {(str(i), str(m)) for i, m in inserted}
    repeats.update(index for key, index in first.items() if key not in stored)
    return repeats


def _claim_announcements(
    conn: psycopg.Connection[Any],
    items: Sequence[StoreEvent | StoreDeadLetter],
    repeats: Collection[int],
    group: dict[bytes, bool],
) -> set[int]:
    """Add the announced keys of `items` (those not `repeats` already) to `group`, the keys of the writer's
    transaction; the indexes of the claims whose key is kept already (before, by another router, by an
    earlier op of the group, or an earlier item), which are not stored.

    A claim (a recovered event, rare) is inserted here, `ON CONFLICT DO NOTHING`: a key another router
    committed is a repeat (two routers recovering the same change store it once). A live event's key costs
    no statement of its own: `_write_announcements` inserts the group's in one statement before the commit.

    Claims are made under ANNOUNCE_LOCK, exclusive, which the group took at its start (`store`'s
    `announces`, `_take_locks`) and holds until the commit: a group claiming keys in several statements (one
    per store) would otherwise deadlock with another router's group claiming or writing the same keys in
    another order. Groups writing only live keys hold it shared: they never wait for each other, only for a
    claiming group's commit (recovery's, a few per interval), and only at their start, holding no row.
    """
    found = [(index, a) for index, item in enumerate(items) if (a := item.announced) and index not in repeats]
    if not found:
        return set()
    claimed = sorted({a.key for _, a in found if a.claim and a.key not in group})
    inserted: set[bytes] = set()
    if claimed:
        rows = conn.execute(
            "INSERT INTO announced (key) SELECT * FROM unnest(%b::bytea[]) ON CONFLICT DO NOTHING RETURNING key",
            (claimed,),
            binary=True,
        ).fetchall()
        inserted = {bytes(key) for (key,) in rows}
    kept = set(claimed) - inserted
    skipped: set[int] = set()
    here: set[bytes] = set()
    for index, announced in found:
        if announced.claim and (announced.key in kept or announced.key in group or announced.key in here):
            skipped.add(index)
        else:
            here.add(announced.key)
    for key in here:
        group.setdefault(key, key in inserted)
    return skipped


def _write_announcements(conn: psycopg.Connection[Any], keys: Sequence[bytes]) -> None:
    """Keep the live events' keys of a group: one statement, sorted, the group's last (one insert order in every
    router's groups, which hold ANNOUNCE_LOCK shared from their start, so they never deadlock: a group waits
    here only for another's commit; a key kept already is left as it is)."""
    if keys:
        conn.execute(
            "INSERT INTO announced (key) SELECT * FROM unnest(%b::bytea[]) ON CONFLICT DO NOTHING",
            (sorted(keys),),
            binary=True,
        )


def _insert_dead_letter(conn: psycopg.Connection[Any], item: StoreDeadLetter, now: float) -> int:
    return int(
        _one(
            conn,
            "INSERT INTO dead_letters (event_id, trigger, source, reason, error, created_at, body) "
            "VALUES (%s,%s,%s,%s,%s,%s,%s) RETURNING dlid",
            (item.event_id, item.trigger, item.source, item.reason, item.error[:4000], now, item.body),
        )
    )


def _output_backlogs(conn: psycopg.Connection[Any], now: float) -> dict[str, OutputBacklog]:
    """Per output that has pending deliveries (`records.output_backlogs`); `now` in the server's clock."""
    counts = conn.execute(
        "SELECT output, count(*), count(*) FILTER (WHERE attempts > 0), min(first_at) FROM deliveries "
        "GROUP BY output ORDER BY output"
    ).fetchall()

    def next_retry(output: str) -> Any:
        return conn.execute(
            "SELECT due, attempts, last_error FROM deliveries WHERE output = %s AND attempts > 0 "
            "ORDER BY due, did LIMIT 1",
            (output,),
        ).fetchone()

    return records.output_backlogs(counts, next_retry, now)


def _where(where: DeadLetterFilter) -> tuple[str, list[Any]]:
    """`where` as a WHERE clause on dead_letters (`records.dead_letter_where`), its ids as one array."""
    return records.dead_letter_where(where, "%s", lambda ids: ("dlid = ANY(%s)", [list(ids)]))


#: CTEs that make the first pending delivery of each (output, ordering key) of a CTE `keyed` (columns output,
#: ordering_key, and dids: ids to pass over, which the statement deletes and still sees) due, if it waited:
#: two indexed lookups per key; parameters: now, BLOCKED. In `_FINISH`, and in `_unblock` (its fallback)
_UNBLOCK_HEADS = (
    "heads AS (SELECT (SELECT min(x.did) FROM deliveries x WHERE x.output = k.output "
    "AND x.ordering_key = k.ordering_key AND x.did <> ALL(k.dids)) AS head FROM keyed k), "
    "unblocked AS (UPDATE deliveries d SET due = %b FROM heads h WHERE d.did = h.head AND d.due = %b)"
)

#: the CTEs that forget the attempts and replays of the events a statement's `gone` CTE deleted (RETURNING their
#: seq), but those a dead letter holds: in the statement that deletes the events, no round trip more
_FORGET_ATTEMPTS = (
    "forgot AS (DELETE FROM attempts a USING gone WHERE a.seq = gone.seq AND a.dlid IS NULL), "
    "forgot_replays AS (DELETE FROM replays r USING gone WHERE r.seq = gone.seq AND r.held_by IS NULL)"
)

#: the finishing pass's statement (`_finish_send`; parameters: the finished delivery ids twice, now, BLOCKED).
#: It deletes the deliveries, and the events with none left but these (the statement's deletes are not visible
#: to itself: they are left out by id); an event with `received` (retention) stays, kept and no longer
#: pending, and the attempts of those that go go with them (but a dead letter's). Per finished ordering key,
#: its first delivery left (the key's lock held, this is all there is of it) is made due if it waited: two
#: indexed lookups per key. Its rows: each finished delivery's output and key, and how many events are done
_FINISH = (
    "WITH finished AS (DELETE FROM deliveries WHERE did = ANY(%b) RETURNING did, seq, output, ordering_key), "
    "done AS (SELECT seq, received FROM events e WHERE seq IN (SELECT seq FROM finished) "
    "AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.seq = e.seq AND d.did <> ALL(%b))), "
    "gone AS (DELETE FROM events e USING done WHERE e.seq = done.seq AND done.received IS NULL "
    f"RETURNING e.seq), {_FORGET_ATTEMPTS}, "
    "keyed AS (SELECT output, ordering_key, array_agg(did) AS dids FROM finished WHERE ordering_key IS NOT NULL "
    f"GROUP BY output, ordering_key), {_UNBLOCK_HEADS} "
    "SELECT output, ordering_key, (SELECT count(*) FROM done) FROM finished"
)


def _keep_replayed(conn: psycopg.Connection[Any], replayed: Sequence[tuple[int, int]], by: str | None) -> None:
    """Per (dead letter, the first delivery it was replayed as): record its replay and move what it holds (its
    attempts, the records of earlier replays it holds) to that delivery's event, that delivery their `head`
    (migration 7); before the dead letter is deleted. One statement each, for all of them."""
    if not replayed:
        return
    pairs = ([dlid for dlid, _ in replayed], [did for _, did in replayed])
    conn.execute(
        "INSERT INTO replays (dlid, seq, head, replayed_as, output, route, reason, error, attempts, created_at, "
        "replayed_at, replayed_by) SELECT dl.dlid, d.seq, d.did, d.did, dl.output, dl.route, dl.reason, dl.error, "
        "dl.attempts, dl.created_at, %s, %s FROM unnest(%s::int8[], %s::int8[]) AS u(dlid, did) "
        "JOIN dead_letters dl ON dl.dlid = u.dlid JOIN deliveries d ON d.did = u.did",
        (time.time(), by, *pairs),
    )
    conn.execute(
        "UPDATE replays r SET seq = d.seq, held_by = NULL, head = d.did FROM unnest(%s::int8[], %s::int8[]) "
        "AS u(dlid, did) JOIN deliveries d ON d.did = u.did WHERE r.held_by = u.dlid",
        pairs,
    )
    # its own attempts say the dead letter their delivery was; earlier ones keep theirs
    conn.execute(
        "UPDATE attempts a SET seq = d.seq, dlid = NULL, replayed = COALESCE(a.replayed, a.dlid) "
        "FROM unnest(%s::int8[], %s::int8[]) AS u(dlid, did) JOIN deliveries d ON d.did = u.did "
        "WHERE a.dlid = u.dlid",
        pairs,
    )


def _record_attempts(
    conn: psycopg.Connection[Any],
    attempts: Sequence[Attempt],
    *,
    finished: Sequence[int] = (),
    dead_letter: int | None = None,
) -> None:
    """Record `attempts` (of a group's settles, whose delivered ids `finished` are forgotten next; or the last
    attempt of a delivery moved to `dead_letter`), each with its delivery's event, output and route (one of a
    delivery no longer there records nothing), in one statement; then, only for deliveries past
    ATTEMPTS_FIRST + ATTEMPTS_LAST attempts, forget the one no longer among the first or the last.

    A delivered attempt is not recorded when the finishing pass that follows forgets its event (not kept, no
    delivery of it left but those in `finished`): the common case without retention, whose row and index
    entries `_finish` would delete again before the commit."""
    conn.execute(
        "INSERT INTO attempts (seq, did, dlid, output, route, number, at, duration, outcome, status, error, answer) "
        "SELECT d.seq, d.did, %b::int8, d.output, d.route, u.n, u.at, u.took, u.outcome, u.status, u.error, u.answer "
        "FROM unnest(%b::int8[], %b::int4[], %b::float8[], %b::float8[], %b::text[], %b::int4[], %b::text[], "
        "%b::text[]) AS u(did, n, at, took, outcome, status, error, answer) JOIN deliveries d ON d.did = u.did "
        "WHERE u.outcome <> 'delivered' OR (SELECT received FROM events e WHERE e.seq = d.seq) IS NOT NULL "
        "OR EXISTS (SELECT 1 FROM deliveries o WHERE o.seq = d.seq AND o.did <> ALL(%b::int8[]))",
        (
            dead_letter,
            [a.delivery for a in attempts],
            [a.number for a in attempts],
            [a.at for a in attempts],
            [a.duration for a in attempts],
            [a.outcome for a in attempts],
            [a.status for a in attempts],
            [a.error for a in attempts],
            [a.answer for a in attempts],
            list(finished),
        ),
        binary=True,
    )
    beyond = records.forgotten_attempts(attempts)
    if beyond:
        conn.execute(
            "DELETE FROM attempts a USING unnest(%b::int8[], %b::int4[]) AS u(did, upto) "
            f"WHERE a.did = u.did AND a.number > {ATTEMPTS_FIRST} AND a.number <= u.upto",
            ([did for did, _ in beyond], [upto for _, upto in beyond]),
            binary=True,
        )


def _event_history(conn: psycopg.Connection[Any], event_id: str) -> EventHistory | None:
    """`PostgreSQLSpool.event_history`'s reads, in one snapshot (the reader's transaction, REPEATABLE READ)."""
    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    stored = conn.execute(
        "SELECT seq, trigger, body, received FROM events WHERE id = %s ORDER BY seq", (event_id,)
    ).fetchall()
    dead = [
        records.dead_letter(row)
        for row in conn.execute(
            f"SELECT {records.DEAD_LETTER_COLUMNS} FROM dead_letters WHERE event_id = %s ORDER BY dlid", (event_id,)
        ).fetchall()
    ]
    if not stored and not dead:
        return None
    seqs = [int(row[0]) for row in stored]
    dlids = [dl.dlid for dl in dead]
    now = float(_one(conn, _NOW))
    pending = [
        records.pending_row(row, now)
        for row in conn.execute(
            f"SELECT {records.PENDING_COLUMNS} FROM deliveries WHERE seq = ANY(%s) ORDER BY did", (seqs,)
        ).fetchall()
    ]
    rows = conn.execute(
        f"SELECT dlid, replayed, output, route, {records.ATTEMPT_COLUMNS} FROM attempts "
        "WHERE seq = ANY(%s) OR dlid = ANY(%s)",
        (seqs, dlids),
    ).fetchall()
    replays = conn.execute(
        f"SELECT {records.REPLAY_COLUMNS} FROM replays WHERE seq = ANY(%s) OR held_by = ANY(%s)", (seqs, dlids)
    ).fetchall()
    return event_history(
        event_id,
        stored,
        dead,
        pending,
        [records.recorded_attempt(row) for row in rows],
        [records.replay(row) for row in replays],
    )


__all__ = ["SCHEMA_VERSION", "PostgreSQLSpool", "describe", "dsn_problem", "has_password", "probe"]
