"""The spool's SQLite backend (`SQLiteSpool`): WAL mode, one writer thread, group commit.

Every write (new events, finished deliveries, retries, dead letters) is queued to one thread that takes
everything waiting, applies it in one transaction and commits once: under load one fsync covers many
events, at low load an event waits for nothing but its own commit. `synchronous=FULL` makes a commit
durable against power loss, so an input may acknowledge its source as soon as `store` returns.

Only one router may use a spool: the daemon holds an exclusive lock on `router.lock` beside it, and only
it upgrades the schema and keeps counts. Operator commands (`status`, `dlq`) open the spool without that
lock and only read and write rows; SQLite's own locking orders their writes with the router's, and the
router's writer thread notices them (`PRAGMA data_version`) to count again what is
pending and the dead letters: the counts (`SQLiteSpool.counts`) it otherwise keeps as it commits, which the
router's gauges show without a statement on the event loop.
The writer thread also watches that the spool's files are still the ones it holds open: one removed or
replaced under a running router would take every later commit with it at the next restart.
Deliveries with an ordering key wait behind the pending ones of their output and key (`BLOCKED`) and become
due when those are finished, in the finishing transaction: one writer at a time (the router's thread, or
an operator command's under SQLite's write lock) keeps that exact.

This module is the only one that knows the spool is SQLite: the interface the rest of the router uses,
and its data types, are in `event_router.core.spool`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import fcntl
import logging
import os
import queue
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Any

import orjson

from event_router.api.errors import SpoolError
from event_router.core.clock import Anchor, SpoolClock
from event_router.core.spool import (
    ATTEMPTS_FIRST,
    BLOCKED,
    Attempt,
    DataDirInUse,
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

#: 2: delivery and dead letter ids never repeat (AUTOINCREMENT): logs and `dlq` commands name them, and an
#: id must not come back for another delivery or dead letter after the old one was finished or purged.
#: 3: `announced`, what each stored event announced, for gap recovery (a new table: rows of schema 2 kept)
#: 4: `output_states`, outputs paused by an operator and breakers a router holds open (a new table)
#: 5: `events.received`, when the router received an event stored while `[router] retention` is on: such an
#: event is kept after its last delivery, for `event-router replay` (`_add_received`)
#: 6: `deliveries.ordering_key` and its index (`_add_ordering_key`)
#: 7: `attempts`, each delivery attempt (`settle`'s), and the indexes `event-router trace` looks an event up by
#: (`events_id`, `dead_letters_event`): new tables and indexes only, by `_DDL` and `_ATTEMPTS_TRIGGER`.
#: 8: `replays`, the dead letters replayed, and `attempts.replayed` (`_add_replayed`): a replayed dead letter's
#: attempts stay in its event's history (`_REPLAYS_TRIGGER`)
SCHEMA_VERSION = 8
#: every statement is idempotent (IF NOT EXISTS): run on each open, and again by `_migrate`
_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    trigger TEXT NOT NULL,
    stored_at REAL NOT NULL,
    body BLOB NOT NULL,
    received REAL
);
CREATE TABLE IF NOT EXISTS deliveries (
    did INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER NOT NULL REFERENCES events(seq),
    output TEXT NOT NULL,
    route TEXT NOT NULL,
    payload BLOB,
    attempts INTEGER NOT NULL DEFAULT 0,
    due REAL NOT NULL,
    first_at REAL NOT NULL,
    last_error TEXT,
    ordering_key TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(output, due, did);
CREATE INDEX IF NOT EXISTS deliveries_seq ON deliveries(seq);
-- a key's pending deliveries in store order, for keyed rows only: unordered ones cost no index entry
CREATE INDEX IF NOT EXISTS deliveries_key ON deliveries(output, ordering_key, did) WHERE ordering_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS dead_letters (
    dlid INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT,
    trigger TEXT,
    source TEXT,
    output TEXT,
    route TEXT,
    reason TEXT NOT NULL,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    body BLOB NOT NULL,
    payload BLOB
);
CREATE INDEX IF NOT EXISTS dead_letters_output ON dead_letters(output, dlid);
CREATE INDEX IF NOT EXISTS dead_letters_trigger ON dead_letters(trigger, dlid);
CREATE INDEX IF NOT EXISTS dead_letters_created ON dead_letters(created_at);
CREATE TABLE IF NOT EXISTS seen_message_ids (
    input TEXT NOT NULL,
    message_id TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (input, message_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_message_ids_expiry ON seen_message_ids(expires_at);
CREATE TABLE IF NOT EXISTS announced (key BLOB PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS output_states (
    output TEXT PRIMARY KEY,
    paused INTEGER NOT NULL DEFAULT 0,
    pause_changed_at REAL,
    pause_changed_by TEXT,
    breaker_open_since REAL,
    breaker_until REAL,
    breaker_router TEXT,
    breaker_error TEXT
);
CREATE INDEX IF NOT EXISTS events_received ON events(received) WHERE received IS NOT NULL;
CREATE TABLE IF NOT EXISTS attempts (
    seq INTEGER NOT NULL,
    did INTEGER NOT NULL,
    dlid INTEGER,
    output TEXT NOT NULL,
    route TEXT NOT NULL,
    number INTEGER NOT NULL,
    at REAL NOT NULL,
    duration REAL NOT NULL,
    outcome TEXT NOT NULL,
    status INTEGER,
    error TEXT,
    answer TEXT,
    replayed INTEGER
);
CREATE INDEX IF NOT EXISTS attempts_seq ON attempts(seq);
CREATE INDEX IF NOT EXISTS attempts_did ON attempts(did, number);
CREATE INDEX IF NOT EXISTS attempts_dead_letter ON attempts(dlid) WHERE dlid IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_id ON events(id);
CREATE INDEX IF NOT EXISTS dead_letters_event ON dead_letters(event_id);
CREATE INDEX IF NOT EXISTS attempts_replayed ON attempts(replayed) WHERE replayed IS NOT NULL;
CREATE TABLE IF NOT EXISTS replays (
    dlid INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    held_by INTEGER,
    head INTEGER NOT NULL,
    replayed_as INTEGER NOT NULL,
    output TEXT,
    route TEXT,
    reason TEXT NOT NULL,
    error TEXT,
    attempts INTEGER NOT NULL,
    created_at REAL NOT NULL,
    replayed_at REAL NOT NULL,
    replayed_by TEXT
);
CREATE INDEX IF NOT EXISTS replays_seq ON replays(seq);
CREATE INDEX IF NOT EXISTS replays_head ON replays(head);
CREATE INDEX IF NOT EXISTS replays_held ON replays(held_by) WHERE held_by IS NOT NULL;
"""

#: an event's attempts go with it, whichever statement deletes it (`_finish`, `prune_kept`), in that statement:
#: no statement of its own (see _ROWS_PER_INSERT for why that matters), one probe of `attempts_seq` per event.
#: Those of a delivery that became a dead letter (`dlid`) stay with the dead letter. Kept apart from `_DDL`,
#: whose statements `_migrate` splits at each ";"
_ATTEMPTS_TRIGGER = """
CREATE TRIGGER IF NOT EXISTS events_forget_attempts AFTER DELETE ON events BEGIN
    DELETE FROM attempts WHERE seq = OLD.seq AND dlid IS NULL;
END
"""

#: what a replayed dead letter leaves (`replays`): a row per dead letter replayed, its attempts moved to the
#: event it was replayed into (`attempts.replayed`: the dead letter their delivery was). Like an attempt, a row
#: is held by that event (`seq`) or, once the delivery it goes on as (`head`) is a dead letter too, by that
#: dead letter (`held_by`), and goes with its holder: the event's, by this trigger, as `_ATTEMPTS_TRIGGER`;
#: the dead letter's when it is purged. Replaying that dead letter moves them on again, `head` then the new
#: delivery: the earlier deliveries' records follow the latest, however often it is replayed.
_REPLAYS_TRIGGER = """
CREATE TRIGGER IF NOT EXISTS events_forget_replays AFTER DELETE ON events BEGIN
    DELETE FROM replays WHERE seq = OLD.seq AND held_by IS NULL;
END
"""

#: whether the spool holds an event with `received` (kept, or to be kept): read through the partial index
KEEPS_ANY = "SELECT EXISTS (SELECT 1 FROM events WHERE received IS NOT NULL)"

#: when the oldest pending event was stored, in the spool clock's base: its deliveries' `first_at` (the
#: oldest pending delivery is the oldest event's), as `events.stored_at` is a label a clock jump does not move.
#: Two rowid lookups, O(log n) (tests/test_metrics.py checks the plan); no row when nothing is pending.
OLDEST_PENDING = "SELECT first_at, did FROM deliveries WHERE did = (SELECT MIN(did) FROM deliveries)"


#: what "pending" means wherever it is shown (`spool_pending_events`, `deliveries_pending`, `status`): an
#: event is pending exactly while a delivery of it is left (`_finish` deletes it with its last one), and
#: an output's pending deliveries are its rows. Counted from the deliveries' indexes, not the events
#: table, whose pages hold every body.
PENDING_EVENTS = "SELECT COUNT(DISTINCT seq) FROM deliveries"
PENDING_PER_OUTPUT = "SELECT output, COUNT(*) FROM deliveries GROUP BY output"


@dataclass(frozen=True, slots=True)
class SpoolCounts:
    """What the spool holds, as of the writer thread's last commit (or its last count of another process's
    changes): what `/metrics` shows, read without a statement on the event loop.

    The writer thread keeps these as it applies its own writes, and counts them again from the database
    when another process (`dlq replay`, `dlq purge`) committed: then they lag by up to about a second
    (`SQLiteSpool.WATCH_INTERVAL`; at a very large backlog, up to ten times the count's duration, RECOUNT_SHARE).
    """

    #: pending deliveries per output, configured or not; outputs with none are absent
    pending: Mapping[str, int] = field(default_factory=dict)
    dead_letters: int = 0
    #: `first_at` of the oldest pending delivery (spool clock base), None when nothing is pending
    oldest_first_at: float | None = None


#: SQLite primary result codes of a failure that is no fault of the statement: the same write may succeed
#: once space is freed, the device recovers or the other writer lets go
_TRANSIENT_CODES = frozenset(
    {
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
        sqlite3.SQLITE_NOMEM,
    }
)


def _spool_error(exc: Exception, doing: str = "write") -> SpoolError:
    """The SpoolError a failed write (or read) raises to its callers, transient when SQLite's result code
    says so: no sqlite3 exception leaves this module."""
    if isinstance(exc, SpoolError):
        return exc
    code = getattr(exc, "sqlite_errorcode", None)
    transient = isinstance(exc, sqlite3.Error) and code is not None and code & 0xFF in _TRANSIENT_CODES
    return SpoolError(f"spool {doing} failed: {exc}", transient=transient)


@contextlib.contextmanager
def _reading() -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise _spool_error(exc, "read") from exc


#: the daemon's lock file in data_dir: flock()ed while a router runs, holding that router's pid
LOCK_NAME = "router.lock"


def lock_data_dir(data_dir: Path) -> int:
    """Take the data_dir for this process (the daemon); returns the lock's fd, to be closed on exit.

    flock, not fcntl locks: SQLite uses fcntl locks on its own files, and those of a process vanish when
    it closes any descriptor of the file; a flock on a file of our own is untouched by SQLite's handling.
    The lock goes with the process, whatever way it ends, so a stale file never blocks a restart.
    """
    path = data_dir / LOCK_NAME
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise SpoolError(f"router.data_dir: cannot create {path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise SpoolError(f"router.data_dir: cannot lock {path}: {exc.strerror}") from exc
        holder = _lock_holder(path)
        raise DataDirInUse(f"{data_dir} is in use by another router (pid {holder or 'unknown'})") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _lock_holder(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return text if text.isdigit() else None


#: prepared statements a connection keeps (see `connect`)
STATEMENT_CACHE = 1024


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection with the pragmas every user of the spool needs (the CLI too)."""
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
    # the writer's statements vary with a group's size (multi-row VALUES and IN lists of up to _ROWS_PER_INSERT
    # rows), so they number several hundred: with the module's default cache of 128 they pushed each other out,
    # and a statement not in the cache is compiled again at its next use, on the writer thread, holding the GIL
    conn = sqlite3.connect(
        uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30, cached_statements=STATEMENT_CACHE
    )
    conn.execute("PRAGMA busy_timeout = 30000")
    if not readonly:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
    return conn


#: the files of the spool in data_dir: the database, its write-ahead log and its shared-memory index
SPOOL_FILES = ("spool.db", "spool.db-wal", "spool.db-shm")


def directory_problem(path: Path) -> str | None:
    """Why this process could not create directory `path` or files in it (the spool's `data_dir`), or could not
    use the spool files already there; None if it can.

    Writes a file to find out, since permission bits do not tell (root ignores them; a read-only mount or
    /proc refuses anyway). The file is an unnamed temporary one in `path` or, when `path` does not exist
    yet, in its nearest existing ancestor: nothing is left behind, and nothing is created.
    """
    probe = path
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        probe = probe.parent
    uid = os.geteuid()
    if not probe.is_dir():
        if probe == path:
            return f"{path} is not a directory"
        return f"{path} cannot be created: {probe} is not a directory"
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        if probe == path:
            return f"{path} is not writable by uid {uid} ({exc.strerror})"
        return f"{path} cannot be created by uid {uid}: cannot write in {probe} ({exc.strerror})"
    # the router makes its spool files private (chmod 0600, see SQLiteSpool._open), which only their owner
    # (or root) may do: a file another user left (a router once run as root) stops it, whatever its mode
    for name in SPOOL_FILES:
        try:
            owner = (path / name).stat().st_uid
        except FileNotFoundError:
            continue
        except OSError as exc:
            return f"{path / name} cannot be examined by uid {uid} ({exc.strerror})"
        if uid not in (0, owner):
            return (
                f"{path / name} belongs to uid {owner}, not to uid {uid}, which must own the spool's files (chown them)"
            )
    return None


class SQLiteSpool:
    """The spool (`event_router.core.spool.Spool`) in one SQLite file, `path`.

    Writes go through `_write` (group commit in the writer thread). Reads the delivery loop needs are
    small indexed queries on a second connection, which WAL lets run beside the writer. Deliveries' times
    (due, first attempt) are in `clock`'s base, which wall-clock jumps do not move (event_router.core.clock).
    """

    #: ops one transaction takes at most, so one commit never grows without bound
    MAX_GROUP = 2000
    #: how long a lazy write (a delivery outcome) waits for other writes to share its commit
    LAZY_DELAY = 0.002

    def __init__(self, path: Path, *, clock: SpoolClock | None = None):
        self.path = path
        self.clock = clock or SpoolClock()
        #: rebases queued and not yet committed: until they are, spool times and `clock` disagree
        self._rebasing = 0
        self._queue: queue.SimpleQueue[Op | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._reader: sqlite3.Connection | None = None
        #: events stored and not yet finished; kept by the writer thread, read anywhere
        self.depth = 0
        #: published by the writer thread after each commit (a new object each time); read anywhere
        self.counts = SpoolCounts()
        # the writer thread's working copy of `counts`, changed by the writes of the group being applied
        self._pending: dict[str, int] = {}
        self._dead = 0
        #: (did, first_at) of the oldest pending delivery
        self._oldest: tuple[int, float] | None = None
        #: the oldest pending delivery was finished (or moved) in this group: read the next one before commit
        self._oldest_stale = False
        #: the counts are known to be wrong (another process's rows were finished before they were
        #: counted): count everything at the next look, whatever RECOUNT_SHARE says
        self._must_recount = False
        #: another process committed and the count of it was put off (RECOUNT_SHARE)
        self._recount_deferred = False
        #: the daemon's spool (`open(exclusive=True)`): it keeps the counts, upgrades the schema and
        #: forgets expired message ids; an operator command's spool only reads and writes rows
        self.exclusive = False
        #: monotonic time before which `_recount` does not count again (see RECOUNT_SHARE)
        self._next_count = 0.0
        self.commits = 0
        #: why the last group failed, until one succeeds again (readiness reports it)
        self.last_error: str | None = None
        #: what `PRAGMA quick_check` reported after open (empty when the file is sound)
        self.integrity_problems: list[str] = []
        self.integrity_checked = threading.Event()
        #: set (for good) once the spool's file or its WAL is no longer the one the router holds open
        self.detached: str | None = None
        #: (st_dev, st_ino) of spool.db and spool.db-wal as opened
        self._files: dict[str, tuple[int, int]] = {}
        self._next_look = 0.0
        #: PRAGMA data_version when `depth` was last counted; another process's commit changes it
        self._data_version: int | None = None
        self._lock_fd: int | None = None
        #: announced keys of the group being applied, written just before its commit
        self._announcing: set[bytes] = set()
        #: the deliveries the group's settles delivered, and the attempts they record (but a dead letter's):
        #: recorded and forgotten in one pass just before its commit (`_settle_group`), so that a group costs
        #: one insert of attempts and one pass of finishing however many settles it holds (an output that
        #: delivers one event at a time settles each alone)
        self._finishing: list[int] = []
        self._attempting: list[Attempt] = []
        #: the spool may hold events with `received` (retention): `_finish` then keeps those, at the cost of
        #: a statement more per chunk; False (nothing kept, retention off) finishes as without retention
        self._keeping = False

    # --- lifecycle -------------------------------------------------------------------------------

    @property
    def location(self) -> str:
        return str(self.path)

    def open(self, mode: OpenMode = "shared") -> None:
        """Open the spool (see `OpenMode`); "exclusive" (the daemon) first locks data_dir against a second
        router (`router.lock`), then upgrades an older schema and counts what the spool holds. "shared" (an
        operator command) refuses a spool of an older schema: an older router may still be running on it.
        "readonly" opens one reading connection (SQLite's `mode=ro`): no writer thread, nothing created."""
        self.exclusive = mode == "exclusive"
        if mode == "readonly":
            self._open_readonly()
            return
        if self.exclusive:
            self._lock_fd = lock_data_dir(self.path.parent)
        try:
            self._open()
        except BaseException:
            self._unlock()
            raise

    def _open_readonly(self) -> None:
        try:
            reader = connect(self.path, readonly=True)
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot open spool {self.path}: {exc}") from exc
        try:
            self.clock.adopt(_read_anchor(reader))
        except sqlite3.Error as exc:
            reader.close()
            raise SpoolError(f"cannot open spool {self.path}: {exc}") from exc
        self._reader = reader

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _open(self) -> None:
        # events hold personal data (mail bodies, attributes): the spool is the service user's alone
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create {self.path.parent}: {exc.strerror}") from exc
        old_umask = os.umask(0o077)
        try:
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.chmod(f"{self.path}{suffix}", 0o600)
            conn = connect(self.path)
            version = _schema_version(conn)
            if version is not None and version > SCHEMA_VERSION:
                raise SpoolError(f"spool {self.path} was written by a newer router (schema {version}); upgrade first")
            if version is not None and version < SCHEMA_VERSION:
                # an older router may still run on it: only the upgraded daemon, holding the lock, upgrades
                if not self.exclusive:
                    raise SpoolError(
                        f"spool schema {version} is older than this router's: start the upgraded router once "
                        f"to upgrade it ({self.path})"
                    )
                _migrate(conn)
            conn.executescript(_DDL)
            conn.execute(_ATTEMPTS_TRIGGER)
            conn.execute(_REPLAYS_TRIGGER)
            if version is None:
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            self._data_version = conn.execute("PRAGMA data_version").fetchone()[0]
            if self.exclusive:  # an operator command's writes are counted by the router, its own counts unused
                self._count_all(conn)
                self._publish()
                _forget_expired_messages(conn, time.time())
            self.clock.adopt(_read_anchor(conn))
            # the WAL exists from the first statement in WAL mode until the last connection closes
            self._files = {}
            for name in (str(self.path), f"{self.path}-wal"):
                st = os.stat(name)
                self._files[name] = (st.st_dev, st.st_ino)
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot open spool {self.path}: {exc}") from exc
        except OSError as exc:
            raise SpoolError(f"cannot open spool {self.path}: {exc.strerror}") from exc
        finally:
            os.umask(old_umask)
        self._reader = connect(self.path)
        self._thread = threading.Thread(target=self._writer, args=(conn,), name="spool-writer", daemon=True)
        self._thread.start()
        # quick_check reads every page (seconds for a big backlog): run it beside the router, not before
        self.integrity_checked = threading.Event()
        threading.Thread(target=self._check_integrity, name="spool-check", daemon=True).start()

    def _check_integrity(self) -> None:
        """After a crash or a disk fault: say what is damaged; intact events are delivered all the same."""
        try:
            conn = connect(self.path, readonly=True)
            try:
                problems = [row[0] for row in conn.execute("PRAGMA quick_check(20)")]
            finally:
                conn.close()
        except sqlite3.Error as exc:
            problems = [f"quick_check failed: {exc}"]
        self.integrity_problems = [] if problems == ["ok"] else problems
        if self.integrity_problems:
            log.error(
                "spool integrity check found damage; intact events are kept and delivered",
                extra={"spool": str(self.path), "problems": self.integrity_problems},
            )
        self.integrity_checked.set()

    def close(self) -> None:
        """Let the writer finish what is queued, then close. Safe to call twice."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._unlock()

    # --- the writer --------------------------------------------------------------------------------

    #: how often the writer looks for other processes' commits and removed files when no write comes
    WATCH_INTERVAL = 1.0
    #: counting everything again (after another process's commit; O(n) in pending deliveries) takes at
    #: most this share of the time, and waits at least MIN_RECOUNT_GAP seconds after the last, unless the
    #: counts are known to be wrong (`_must_recount`)
    RECOUNT_SHARE = 0.1
    MIN_RECOUNT_GAP = 0.5
    #: under load, a group looks at the files and at other processes' commits at most this often (two
    #: stat calls and a statement: cheap, but each statement costs a GIL hand-over, see _ROWS_PER_INSERT)
    LOOK_INTERVAL = 0.2

    def _writer(self, conn: sqlite3.Connection) -> None:
        running = True
        while running:
            try:
                first = self._queue.get(timeout=self.WATCH_INTERVAL)
            except queue.Empty:
                self._watch_idle(conn)
                continue
            if first is None:
                break
            batch = [first]
            running = self._gather(batch)
            self._run_group(conn, batch)
        conn.close()

    def _watch_idle(self, conn: sqlite3.Connection) -> None:
        """No write for a while: still notice removed files and other processes' commits (a `dlq replay`
        adds pending events the router must count against `max_pending_events` and the outputs' limits)."""
        try:
            self._check_files(conn, look=True)
            self._recount(conn)
            self._publish()
        except SpoolError:
            pass  # detached: `last_error` says so already
        except (sqlite3.Error, OSError) as exc:  # looked at again next time; the writer thread must go on
            log.warning("could not look at the spool's files and count", extra={"error": str(exc)})

    def _recount(self, conn: sqlite3.Connection) -> None:
        """Count everything again when another connection committed since the last count (the daemon only).

        At most one count per RECOUNT_SHARE of the time since the last: a replay commits every few
        hundred events, and at a large backlog each count holds up this process's writes a while. Until
        then the counts miss the other process's rows; once this process finishes one of them (a
        decrement below zero, or any finish while a count is put off) they are counted at the next look.
        """
        if not self.exclusive:
            return
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:
            self._recount_deferred = True
        if not self._must_recount and (not self._recount_deferred or time.monotonic() < self._next_count):
            return
        before = self.depth
        started = time.monotonic()
        self._count_all(conn)
        took = time.monotonic() - started
        self._next_count = started + took + max(self.MIN_RECOUNT_GAP, took / self.RECOUNT_SHARE)
        self._data_version = version
        self._recount_deferred = False
        if self.depth != before:
            log.info(
                "another process changed the spool; pending events counted again",
                extra={"pending": self.depth, "was": before},
            )

    def _count_all(self, conn: sqlite3.Connection) -> None:
        """Count from the database what the writer thread otherwise keeps as it writes (writer thread only).

        O(n) in pending deliveries and dead letters, hence only at open and after another process's commit.
        """
        self.depth = conn.execute(PENDING_EVENTS).fetchone()[0]
        self._pending = dict(conn.execute(PENDING_PER_OUTPUT).fetchall())
        self._dead = conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
        self._read_oldest(conn)
        self._keeping = bool(conn.execute(KEEPS_ANY).fetchone()[0])
        self._must_recount = False

    def _read_oldest(self, conn: sqlite3.Connection) -> None:
        row = conn.execute(OLDEST_PENDING).fetchone()
        self._oldest = None if row is None else (int(row[1]), float(row[0]))
        self._oldest_stale = False

    def _publish(self) -> None:
        """Hand the writer thread's counts to readers: one new object, so a reader never sees half of them."""
        oldest = self._oldest
        self.counts = SpoolCounts(dict(self._pending), self._dead, None if oldest is None else oldest[1])

    def _check_files(self, conn: sqlite3.Connection, *, look: bool) -> None:
        """Refuse every write, for good, once spool.db or its WAL is not the file this process holds open.

        SQLite goes on writing to the open (removed or replaced) file, so commits would succeed and be
        gone at the next start. When only the WAL went, a checkpoint copies what it holds into spool.db,
        which a restart reads; when spool.db itself went, the open copy is all there is.
        """
        if look and self.detached is None:
            self._next_look = time.monotonic() + self.LOOK_INTERVAL
            for name, identity in self._files.items():
                try:
                    st = os.stat(name)
                except FileNotFoundError:
                    problem = "was removed"
                else:
                    if (st.st_dev, st.st_ino) == identity:
                        continue
                    problem = "was replaced by another file"
                self._detach(conn, name, problem)
                break
        if self.detached is not None:
            raise SpoolError(self.detached, transient=True)

    def _detach(self, conn: sqlite3.Connection, name: str, problem: str) -> None:
        saved = ""
        if name != str(self.path):
            try:
                conn.execute("PRAGMA wal_checkpoint(FULL)")
                saved = "; the events it held were copied into the spool file"
            except sqlite3.Error as exc:
                saved = f"; copying its events into the spool file failed: {exc}"
        self.detached = (
            f"spool file {name} {problem} while the router was running; new events are refused "
            f"until the router is restarted{saved}"
        )
        self.last_error = self.detached
        log.error(
            "spool file removed or replaced under the running router; refusing new events",
            extra={"spool": str(self.path), "file": name, "problem": problem, "error": self.detached},
        )

    def _gather(self, batch: list[Op]) -> bool:
        """Add the writes queued behind `batch[0]` to its group (`writer.gather`); False once asked to stop."""
        return gather(self._queue, batch, max_group=self.MAX_GROUP, lazy_delay=self.LAZY_DELAY)

    def _run_group(self, conn: sqlite3.Connection, batch: list[Op]) -> None:
        """Apply `batch` in one transaction. A failed transaction fails every op in it, so when a group of
        several fails for a reason that is not transient (one op's own fault, as a poisoned outcome), each
        op runs again alone: one bad op never fails the stores that shared its group."""
        look = time.monotonic() >= self._next_look
        error = self._run_transaction(conn, batch, look=look)
        if error is None:
            return
        if len(batch) == 1 or error.transient:
            self.last_error = str(error)
            resolve_all([(op, None, error) for op in batch])
            return
        for op in batch:
            single = self._run_transaction(conn, [op], look=False)
            if single is not None:
                # the spool's trouble (readiness shows it); not an op's own fault, which it reports alone
                if single.transient:
                    self.last_error = str(single)
                resolve_all([(op, None, single)])

    def _run_transaction(self, conn: sqlite3.Connection, batch: list[Op], *, look: bool) -> SpoolError | None:
        """Apply and commit `batch`, settle its ops on success; on failure roll back (the counts too) and
        return the error, leaving the ops unsettled."""
        depth, version, must, keeping = self.depth, self._data_version, self._must_recount, self._keeping
        counted = dict(self._pending), self._dead, self._oldest
        try:
            self._check_files(conn, look=look)
            conn.execute("BEGIN IMMEDIATE")
            if look:  # in the transaction: no other process commits between the count and our changes to it
                self._recount(conn)
            results = [op.apply(conn) for op in batch]
            if self._finishing or self._attempting:
                self._settle_group(conn)
            if self._oldest_stale:  # one indexed read per group at most, not one per finished chunk
                self._read_oldest(conn)
            if self._announcing:
                _write_announcements(conn, self._announcing)
                self._announcing.clear()
            conn.execute("COMMIT")
        except Exception as exc:  # one failed commit fails every op in it: none of them is durable
            self._announcing.clear()
            self._finishing.clear()
            self._attempting.clear()
            # a count made in this group was rolled back with the rest: back to the one before it
            self.depth, self._data_version, self._must_recount, self._keeping = depth, version, must, keeping
            self._pending, self._dead, self._oldest = counted
            self._oldest_stale = False
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            return _spool_error(exc)
        self.commits += 1
        self.last_error = None
        self._publish()
        resolve_all([(op, result, None) for op, result in zip(batch, results, strict=True)])
        return None

    def _writer_running(self) -> None:
        if self._thread is None:
            raise SpoolError("spool is closed" if self._reader is None else "spool is open for reading only")

    async def _write(self, apply: Callable[[sqlite3.Connection], Any], *, lazy: bool = False) -> Any:
        self._writer_running()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put(Op(apply, loop, future, lazy))
        return await future

    def _write_sync(self, apply: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run one write from outside an event loop (the CLI), through the same writer and commit.

        An operator command's spool keeps no counts: the running router counts its changes itself.
        """
        self._writer_running()
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put(Op(apply, None, future))
        return future.result()

    # --- the clock -----------------------------------------------------------------------------------

    def claim_clock(self) -> float:
        """Make this process's clock the spool's (the router does, at start); returns the jump it found.

        Records the clock's anchor, so that other processes (`dlq replay`) write in the router's base. When
        the wall clock jumped since the anchor was recorded (a step while the router was stopped, same
        boot), every pending time first moves by the jump, in the same commit, and the clock with them.
        """
        jump = self.clock.jump()
        try:
            anchor = Anchor(self.clock.boot, self.clock.offset + jump)
            self._write_sync(partial(self._rebase_times, shift=jump, anchor=anchor))
        except SpoolError as exc:
            # the spool and the clock stay in the old base, which is consistent: the router's clock watch
            # tries again once it runs
            log.error("could not record the clock in the spool", extra={"error": str(exc)})
            return 0.0
        self.clock.shift(jump)
        return jump

    async def rebase(self, shift: float) -> None:
        """Move every pending time by `shift` seconds: the clock just moved by as much (a wall-clock jump).

        Call it right after `clock.shift(shift)`, with no await in between: the writes queued before it
        are in the old base and move, those queued after it are in the new one. Until it is committed,
        `fetch_due` hands out nothing, as it cannot tell which base a row is in.
        """
        self._rebasing += 1
        try:
            await self._write(partial(self._rebase_times, shift=shift, anchor=self.clock.anchor))
        finally:
            self._rebasing -= 1

    def _rebase_times(self, conn: sqlite3.Connection, *, shift: float, anchor: Anchor) -> None:
        _rebase(conn, shift=shift, anchor=anchor)
        self._oldest_stale = self._oldest_stale or bool(shift)  # its `first_at` moved too

    # --- writes ------------------------------------------------------------------------------------

    async def store(
        self, items: Sequence[StoreEvent | StoreDeadLetter], limits: Mapping[str, int] | None = None
    ) -> list[list[int | Parked | Refused] | int | None]:
        """Persist events (per delivery: its id, `Parked` or `Refused`) and dead letters (returns the dead
        letter id).

        An item whose `seen` message id is already stored (before, or earlier in the same commit) is a
        repeat: it is not stored, and its result is None. `limits`: see `_park`.
        """
        now = self.clock.now()
        claims = any(item.seen is not None for item in items)
        announces = any(item.announced is not None for item in items)
        keeps = any(isinstance(item, StoreEvent) and item.received is not None for item in items)

        def apply(conn: sqlite3.Connection) -> list[list[int | Parked | Refused] | int | None]:
            out: list[list[int | Parked | Refused] | int | None] = [[] for _ in items]
            self._keeping = self._keeping or keeps
            repeats = _claim_messages(conn, items, time.time()) if claims else set()
            if announces:
                repeats |= _claim_announcements(conn, items, repeats, self._announcing)
            events: list[tuple[int, StoreEvent]] = []
            for index, item in enumerate(items):
                if index in repeats:
                    out[index] = None
                elif isinstance(item, StoreDeadLetter):
                    out[index] = _insert_dead_letter(conn, item, now)
                    self._dead += 1
                elif item.deliveries:  # an event with nothing to deliver is not pending: nothing to keep
                    events.append((index, item))
            if not events:
                return out
            given = [item for _, item in events]
            kept, parked = storing.park(given, limits or {}, self._pending)
            dlids = self._park(conn, parked)
            stored = self._insert_events(conn, [item for item in kept if item.deliveries], now)
            for (index, _), result in zip(events, storing.results(given, kept, parked, dlids, stored), strict=True):
                out[index] = result
            return out

        result: list[list[int | Parked | Refused] | int | None] = await self._write(apply)
        return result

    def _park(self, conn: sqlite3.Connection, parked: Sequence[storing.Parking]) -> list[int]:
        """Keep the deliveries `storing.park` parked as dead letters (writer thread, in the storing transaction);
        their ids, in order.

        `park` counts pending by `_pending`, what this process's commits left (and its last count of other
        processes' rows), plus the deliveries admitted before it in this group: exact for the router's own
        writes, so an output holds its limit to the delivery however many stores share a commit (never past
        it: the deliveries the group's settles finish still count until its finishing pass, just before the
        commit, `_settle_group`).
        """
        if not parked:
            return []
        created = time.time()
        dlids = _insert_rows(conn, _PARKED_INSERT, [_parked_row(parking, created) for parking in parked])
        self._dead += len(parked)
        return dlids

    def _insert_events(
        self,
        conn: sqlite3.Connection,
        events: Sequence[StoreEvent],
        now: float,
        *,
        kept: Sequence[int | None] = (),
    ) -> list[list[int]]:
        """Insert events that have deliveries, all due at `now` (one with an ordering key whose output and key
        have pending deliveries already: `BLOCKED`); each one's delivery ids, in order.

        `kept` (a replay's, `_kept_seqs`): per event, the seq of the kept event it is, which is given its
        deliveries instead of a copy of it being stored; None (or `kept` empty): stored."""
        out: list[list[int]] = []
        waiting = _keys_pending(conn, (d for item in events for d in item.deliveries))
        for start in range(0, len(events), _ROWS_PER_INSERT):
            chunk = events[start : start + _ROWS_PER_INSERT]
            known = list(kept[start : start + _ROWS_PER_INSERT]) if kept else [None] * len(chunk)
            stored = iter(
                _insert_rows(
                    conn,
                    _EVENT_INSERT,
                    [
                        (item.event_id, item.trigger, now, item.received, item.body)
                        for item, seq in zip(chunk, known, strict=True)
                        if seq is None
                    ],
                )
            )
            # a kept event is pending again from here, unless a delivery of it already is
            again = {seq for seq in known if seq is not None}
            if again:
                self.depth += conn.execute(
                    "SELECT COUNT(*) FROM json_each(?) "
                    "WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.seq = value)",
                    (orjson.dumps(sorted(again)).decode(),),
                ).fetchone()[0]
            seqs = [next(stored) if seq is None else seq for seq in known]
            rows = [
                (
                    seq,
                    d.output,
                    d.route,
                    d.payload,
                    now if d.ordering_key is None else storing.due(d, now, waiting),
                    now,
                    d.ordering_key,
                )
                for item, seq in zip(chunk, seqs, strict=True)
                for d in item.deliveries
            ]
            new = _insert_rows(conn, _DELIVERY_INSERT, rows)
            at = 0
            for item in chunk:
                out.append(new[at : at + len(item.deliveries)])
                at += len(item.deliveries)
                for d in item.deliveries:
                    self._pending[d.output] = self._pending.get(d.output, 0) + 1
            self.depth += known.count(None)
            if new and self._oldest is None and not self._oldest_stale:  # was empty: ids only grow
                self._oldest = (new[0], now)
        return out

    async def settle(
        self,
        *,
        done: Sequence[int] = (),
        retry: Sequence[Retry] = (),
        dead: Sequence[Dead] = (),
        attempts: Sequence[Attempt] = (),
        lazy: bool = False,
    ) -> list[int | None]:
        """Record a batch of outcomes in one write.

        done: delivered ids (forgotten, and their event once nothing else is pending);
        retry: (id, attempts, due, error) to try again at `due`;
        dead: (id, reason, error, attempts) moved to the dead letters with event and payload;
        attempts: the attempts that came to these outcomes (`_record_attempts`): a dead letter's with it,
        the others with the group's other settles (`_settle_group`), as `done` is forgotten;
        lazy: the commit may wait a few milliseconds to be shared with other writes.
        Returns the new dead letter ids, in `dead`'s order; None for a delivery no longer in the spool
        (finished meanwhile: by a worker that replaced this one, or by `dlq` on another process's side).
        """
        if not (done or retry or dead):
            return []

        # a dead letter's attempt is recorded by `_dead_letter`, with its dead letter's id
        dying = {a.delivery: a for a in attempts if a.outcome in ("permanent", "retries_exhausted")}

        def apply(conn: sqlite3.Connection) -> list[int | None]:
            # with the group's other settles, just before its commit (`_settle_group`)
            self._finishing.extend(done)
            self._attempting.extend(a for a in attempts if a.delivery not in dying)
            conn.executemany(
                "UPDATE deliveries SET attempts = ?, due = ?, last_error = ? WHERE did = ?",
                [(failures, due, error[:2000], did) for did, failures, due, error in retry],
            )
            return [self._dead_letter(conn, *item, attempt=dying.get(item[0])) for item in dead]

        result: list[int | None] = await self._write(apply, lazy=lazy)
        return result

    async def release(self, output: str, keep: Collection[int] = ()) -> None:
        """Nothing to give back: one router per SQLite spool, and what it holds it holds in memory only."""

    async def forget_announced(self, before: bytes) -> int:
        """Forget the announced keys that sort before `before`: one range delete on the key, a lazy commit."""

        def apply(conn: sqlite3.Connection) -> int:
            count: int = conn.execute("DELETE FROM announced WHERE key < ?", (before,)).rowcount
            return count

        result: int = await self._write(apply, lazy=True)
        return result

    def _dead_letter(
        self, conn: sqlite3.Connection, did: int, reason: str, error: str, attempts: int, *, attempt: Attempt | None
    ) -> int | None:
        row = conn.execute(
            "SELECT e.id, e.trigger, e.body, d.output, d.route, d.payload FROM deliveries d "
            "JOIN events e ON e.seq = d.seq WHERE d.did = ?",
            (did,),
        ).fetchone()
        if row is None:  # finished already, as `_finish` skips it: nothing left to move
            return None
        event_id, trigger, body, output, route, payload = row
        cur = conn.execute(
            "INSERT INTO dead_letters (event_id, trigger, source, output, route, reason, error, attempts,"
            " created_at, body, payload) VALUES (?,?,json_extract(?, '$.source'),?,?,?,?,?,?,?,?)",
            (
                event_id,
                trigger,
                body,
                output,
                route,
                reason,
                error[:4000],
                attempts,
                time.time(),
                body,
                payload,
            ),
        )
        assert cur.lastrowid is not None
        # its attempts go with the dead letter (the trigger that forgets the event's leaves them), before
        # `_finish`: the last one too, while the delivery's row still says its event, output and route
        conn.execute("UPDATE attempts SET dlid = ? WHERE did = ?", (cur.lastrowid, did))
        # and so do the records of the dead letters it was replayed from (`_REPLAYS_TRIGGER`): two probes of
        # an index, of an empty range unless it was
        conn.execute(
            "UPDATE attempts SET dlid = ? WHERE replayed IN "
            "(SELECT dlid FROM replays WHERE head = ? AND held_by IS NULL)",
            (cur.lastrowid, did),
        )
        conn.execute("UPDATE replays SET held_by = ? WHERE head = ? AND held_by IS NULL", (cur.lastrowid, did))
        if attempt is not None:
            _record_attempts(conn, [attempt], dead_letter=cur.lastrowid)
        self._finish(conn, (did,))
        self._dead += 1
        return cur.lastrowid

    def _settle_group(self, conn: sqlite3.Connection) -> None:
        """Record the attempts of the group's settles, then forget the deliveries they delivered (writer
        thread, before the group's commit): the attempts first, while every delivery's row still says its
        event, output and route; `_record_attempts` leaves out what this very pass forgets."""
        if self._attempting:
            _record_attempts(conn, self._attempting, finished=self._finishing)
            self._attempting.clear()
        if self._finishing:
            self._finish(conn, self._finishing)
            self._finishing.clear()

    def _finish(self, conn: sqlite3.Connection, dids: Sequence[int]) -> None:
        """Forget deliveries, and each event once no delivery of it is left: three statements per 500 ids,
        none returning a row per id (see _ROWS_PER_INSERT for why that matters)."""
        for start in range(0, len(dids), 500):  # SQLite's bound-parameter limit is far above, but be modest
            chunk = dids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            seqs, outputs, lowest, keyed = conn.execute(
                f"SELECT json_group_array(DISTINCT seq), json_group_array(output), MIN(did), "
                f"MAX(ordering_key IS NOT NULL) FROM deliveries WHERE did IN ({marks})",
                chunk,
            ).fetchone()
            if seqs == "[]":
                continue
            keys = (
                conn.execute(
                    f"SELECT DISTINCT output, ordering_key FROM deliveries WHERE did IN ({marks}) "
                    "AND ordering_key IS NOT NULL",
                    chunk,
                ).fetchall()
                if keyed
                else []
            )
            # a finished row may be another process's (a replay's) not counted yet: the counts never go
            # below zero, and are counted again at the next look
            if self._recount_deferred:
                self._must_recount = True
            for output in orjson.loads(outputs):
                left = self._pending.get(output, 0) - 1
                if left > 0:
                    self._pending[output] = left
                else:
                    self._pending.pop(output, None)
                    self._must_recount = self._must_recount or left < 0
            if self._oldest is not None and lowest <= self._oldest[0]:
                self._oldest_stale = True
            conn.execute(f"DELETE FROM deliveries WHERE did IN ({marks})", chunk)
            if self._keeping:
                # an event with `received` stays (kept, no longer pending): count what is finished, delete the rest
                finished = conn.execute(
                    "SELECT COUNT(*) FROM json_each(?) "
                    "WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.seq = value)",
                    (seqs,),
                ).fetchone()[0]
                conn.execute(_FORGET_FINISHED + " AND received IS NULL", (seqs,))
            else:
                finished = conn.execute(_FORGET_FINISHED, (seqs,)).rowcount
            depth = self.depth - finished
            if depth < 0:
                self._must_recount = True
            self.depth = max(0, depth)
            if keys:
                _unblock(conn, keys, self.clock.now())

    # --- reads for the delivery loop ------------------------------------------------------------------

    @property
    def writable(self) -> bool:
        """The writer runs, its last commit (if any) succeeded and the spool's files are the ones it opened."""
        return self._thread is not None and self._thread.is_alive() and self.last_error is None and not self.detached

    def oldest_pending_age(self) -> float | None:
        """Seconds since the oldest pending event was stored (from `counts`: no statement)."""
        first_at = self.counts.oldest_first_at
        return None if first_at is None else max(0.0, self.clock.now() - first_at)

    def dead_letter_count(self) -> int:
        """Dead letters in the store (from `counts`: no statement)."""
        return self.counts.dead_letters

    def fetch_due(self, output: str, now: float, limit: int, exclude: Collection[int]) -> list[DeliveryRow]:
        """Deliveries of `output` due by `now` (in `clock`'s base), oldest due first, skipping those in memory."""
        if self._rebasing:
            return []
        with _reading():
            return self._fetch_due(self._read_conn(), output, now, limit, exclude)

    def _fetch_due(
        self, reader: sqlite3.Connection, output: str, now: float, limit: int, exclude: Collection[int]
    ) -> list[DeliveryRow]:
        # pick the ids from the (output, due, did) index alone, then read bodies for those only: with a
        # backlog, most due rows are the ones already in memory, and reading their bodies each refill
        # cost a fifth of the router's time
        dids = [
            did
            for (did,) in reader.execute(
                "SELECT did FROM deliveries WHERE output = ? AND due <= ? ORDER BY due, did LIMIT ?",
                (output, now, limit + len(exclude)),
            )
            if did not in exclude
        ][:limit]
        out: list[DeliveryRow] = []
        for start in range(0, len(dids), 500):
            chunk = dids[start : start + 500]
            rows = reader.execute(
                "SELECT d.did, d.seq, d.output, d.route, d.payload, d.attempts, d.first_at, e.body, e.id, e.trigger, "
                f"d.ordering_key FROM deliveries d JOIN events e ON e.seq = d.seq "
                f"WHERE d.did IN ({','.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
            out.extend(DeliveryRow(*row) for row in rows)
        order = {did: i for i, did in enumerate(dids)}
        out.sort(key=lambda row: order[row.did])
        return out

    async def announced(self, keys: Sequence[bytes]) -> set[bytes]:
        """Which of these keys are kept: one primary-key read per 800 on the reader connection, and the event
        loop's other tasks between them."""
        kept: set[bytes] = set()
        for start in range(0, len(keys), _KEYS_PER_INSERT):
            chunk = keys[start : start + _KEYS_PER_INSERT]
            with _reading():
                rows = self._read_conn().execute(
                    f"SELECT key FROM announced WHERE key IN ({','.join('?' * len(chunk))})", chunk
                )
                kept.update(bytes(key) for (key,) in rows.fetchall())
            await asyncio.sleep(0)
        return kept

    def known_messages(self, seen: Sequence[SeenMessage]) -> set[tuple[str, str]]:
        """Which of these (input, message id) the spool holds and has not forgotten: one indexed read."""
        with _reading():
            return _known_messages(self._read_conn(), seen, time.time())

    def pending_outputs(self) -> dict[str, int]:
        """Pending deliveries per output, including outputs no longer configured (from `counts`: no statement)."""
        return dict(self.counts.pending)

    def _read_conn(self) -> sqlite3.Connection:
        if self._reader is None:
            raise SpoolError("spool is closed")
        return self._reader

    # --- the outputs' states --------------------------------------------------------------------------------

    def output_states(self) -> dict[str, OutputState]:
        with _reading():
            return _output_states(self._read_conn(), time.time())

    def set_paused(self, output: str, paused: bool, by: str) -> tuple[OutputState, bool]:
        def apply(conn: sqlite3.Connection) -> tuple[OutputState, bool]:
            row = conn.execute("SELECT paused FROM output_states WHERE output = ?", (output,)).fetchone()
            changed = bool(row[0]) != paused if row is not None else paused
            if changed:
                conn.execute(
                    "INSERT INTO output_states (output, paused, pause_changed_at, pause_changed_by) VALUES (?,?,?,?) "
                    "ON CONFLICT (output) DO UPDATE SET paused = excluded.paused, "
                    "pause_changed_at = excluded.pause_changed_at, pause_changed_by = excluded.pause_changed_by",
                    (output, int(paused), time.time(), by[:200]),
                )
            state = _output_states(conn, time.time(), output).get(output, OutputState(output))
            return state, changed

        result: tuple[OutputState, bool] = self._write_sync(apply)
        return result

    async def record_breaker(
        self, output: str, *, router: str, open_since: float | None, error: str | None = None, lapse: float = 60.0
    ) -> None:
        def apply(conn: sqlite3.Connection) -> None:
            now = time.time()
            if open_since is None:
                conn.execute(
                    "UPDATE output_states SET breaker_open_since = NULL, breaker_until = NULL, breaker_router = NULL, "
                    "breaker_error = NULL WHERE output = ? AND (breaker_router = ? OR breaker_until < ?)",
                    (output, router, now),
                )
                return
            conn.execute(
                "INSERT INTO output_states (output, breaker_open_since, breaker_until, breaker_router, breaker_error) "
                "VALUES (?,?,?,?,?) ON CONFLICT (output) DO UPDATE SET breaker_open_since = "
                "excluded.breaker_open_since, breaker_until = excluded.breaker_until, "
                "breaker_router = excluded.breaker_router, breaker_error = excluded.breaker_error",
                (output, open_since, now + lapse, router, None if error is None else error[:2000]),
            )

        await self._write(apply, lazy=True)

    # --- the operator commands (`dlq`, `status`) ---------------------------------------------------------

    def dead_letters(self, where: DeadLetterFilter, limit: int | None = None) -> list[DeadLetter]:
        clause, args = _where(where)
        sql = f"SELECT {records.DEAD_LETTER_COLUMNS} FROM dead_letters{clause} ORDER BY dlid"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with _reading():
            return [records.dead_letter(row) for row in self._read_conn().execute(sql, args)]

    def count_dead_letters(self, where: DeadLetterFilter) -> tuple[int, int | None]:
        clause, args = _where(where)
        with _reading():
            count, highest = (
                self._read_conn().execute(f"SELECT COUNT(*), MAX(dlid) FROM dead_letters{clause}", args).fetchone()
            )
        return int(count), highest

    def purge_dead_letters(self, where: DeadLetterFilter) -> int:
        clause, args = _where(where)

        def apply(conn: sqlite3.Connection) -> int:
            conn.execute(f"DELETE FROM attempts WHERE dlid IN (SELECT dlid FROM dead_letters{clause})", args)
            conn.execute(f"DELETE FROM replays WHERE held_by IN (SELECT dlid FROM dead_letters{clause})", args)
            purged: int = conn.execute(f"DELETE FROM dead_letters{clause}", args).rowcount
            self._dead = max(0, self._dead - purged)
            return purged

        count: int = self._write_sync(apply)
        return count

    def replay_dead_letters(self, outcomes: Sequence[Requeue | StillDead], by: str | None = None) -> None:
        def apply(conn: sqlite3.Connection) -> None:
            again = [(item.error[:4000], item.dlid) for item in outcomes if isinstance(item, StillDead)]
            conn.executemany("UPDATE dead_letters SET error = ?, attempts = attempts + 1 WHERE dlid = ?", again)
            requeued = [item for item in outcomes if isinstance(item, Requeue)]
            # in the running router's time base (a wall-clock jump may have moved it): due now, not a jump
            # away. In the write transaction the anchor cannot change: the router rebases in one too
            now = _spool_now(conn)
            stored = [item for item in requeued if item.event.deliveries]
            events = [item.event for item in stored]
            dids = self._insert_events(conn, events, now, kept=_kept_seqs(conn, events))
            _keep_replayed(conn, [(item.dlid, ids[0]) for item, ids in zip(stored, dids, strict=True)], by)
            gone = 0
            for start in range(0, len(requeued), 500):
                chunk = requeued[start : start + 500]
                marks = ",".join("?" * len(chunk))
                # what is left of them (their event not stored: nothing to keep it with) goes with them
                conn.execute(f"DELETE FROM attempts WHERE dlid IN ({marks})", [item.dlid for item in chunk])
                conn.execute(f"DELETE FROM replays WHERE held_by IN ({marks})", [item.dlid for item in chunk])
                gone += conn.execute(
                    f"DELETE FROM dead_letters WHERE dlid IN ({marks})", [item.dlid for item in chunk]
                ).rowcount
            self._dead = max(0, self._dead - gone)

        self._write_sync(apply)

    # --- retention (kept events) and `event-router replay` -------------------------------------------------

    async def prune_kept(self, before: float, limit: int) -> int:
        """Forget up to `limit` kept events received before `before`, oldest first, in one lazy write: the
        partial index on `received` finds them, so a batch costs its own rows, whatever else the spool holds."""

        def apply(conn: sqlite3.Connection) -> int:
            count: int = conn.execute(
                "DELETE FROM events WHERE seq IN (SELECT seq FROM events e WHERE received < ? AND NOT EXISTS "
                "(SELECT 1 FROM deliveries d WHERE d.seq = e.seq) ORDER BY received LIMIT ?)",
                (before, limit),
            ).rowcount
            if count < limit:  # the last of them: maybe nothing is kept any more (retention turned off)
                self._keeping = bool(conn.execute(KEEPS_ANY).fetchone()[0])
            return count

        result: int = await self._write(apply, lazy=True)
        return result

    def count_kept(self, since: float, until: float) -> int:
        with _reading():
            row = (
                self._read_conn()
                .execute("SELECT COUNT(*) FROM events WHERE received >= ? AND received < ?", (since, until))
                .fetchone()
            )
        return int(row[0])

    def kept_events(
        self, since: float, until: float, *, after: KeptCursor | None = None, limit: int = 500
    ) -> list[KeptEvent]:
        sql, args = records.kept_range(since, until, after, "?")
        with _reading():
            rows = self._read_conn().execute(
                f"SELECT {records.EVENT_COLUMNS} FROM events{sql} ORDER BY received, seq LIMIT ?", [*args, limit]
            )
            return [records.kept_event(row) for row in rows]

    def requeue_kept(self, items: Sequence[tuple[int, Sequence[NewDelivery]]]) -> set[int]:
        wanted = [(seq, deliveries) for seq, deliveries in items if deliveries]

        def apply(conn: sqlite3.Connection) -> set[int]:
            present: set[int] = set()
            for start in range(0, len(wanted), 500):
                chunk = [seq for seq, _ in wanted[start : start + 500]]
                found = conn.execute(f"SELECT seq FROM events WHERE seq IN ({','.join('?' * len(chunk))})", chunk)
                present.update(int(seq) for (seq,) in found)
            # due now in the running router's time base (see replay_dead_letters); one with an ordering key
            # behind what of its key is pending (`BLOCKED`), as `store` puts it
            now = _spool_now(conn)
            added = [(seq, d) for seq, ds in wanted if seq in present for d in ds]
            waiting = _keys_pending(conn, (d for _, d in added))
            rows = [
                (seq, d.output, d.route, d.payload, storing.due(d, now, waiting), now, d.ordering_key)
                for seq, d in added
            ]
            if rows:
                _insert_rows(conn, _DELIVERY_INSERT, rows)
            return present

        if not wanted:
            return set()
        found: set[int] = self._write_sync(apply)
        return found

    def stored_events(self, event_id: str, limit: int = 20) -> list[StoredEvent]:
        with _reading():
            conn = self._read_conn()
            now = _spool_now(conn)
            rows = conn.execute(
                f"SELECT {records.EVENT_COLUMNS} FROM events WHERE id = ? ORDER BY seq LIMIT ?", (event_id, limit)
            ).fetchall()
            return [
                records.stored_event(
                    row,
                    [
                        records.pending_row(delivery, now)
                        for delivery in conn.execute(
                            f"SELECT {records.PENDING_COLUMNS} FROM deliveries WHERE seq = ? ORDER BY did", (row[0],)
                        )
                    ],
                )
                for row in rows
            ]

    def retry_now(self, output: str) -> int:
        def apply(conn: sqlite3.Connection) -> int:
            now = _spool_now(conn)  # the router's time base: this may be another process
            count: int = conn.execute(
                "UPDATE deliveries SET due = ? WHERE output = ? AND attempts > 0 AND due > ?", (now, output, now)
            ).rowcount
            return count

        result: int = self._write_sync(apply)
        return result

    def dead_letter_attempts(self, dlids: Sequence[int]) -> dict[int, list[Attempt]]:
        out: dict[int, list[Attempt]] = {}
        with _reading():
            conn = self._read_conn()
            # its own delivery's: those of the deliveries it was replayed from say so
            own = " AND replayed IS NULL" if _keeps_replays(conn) else ""
            for start in range(0, len(dlids), 500):
                chunk = list(dlids[start : start + 500])
                rows = _attempt_rows(
                    conn,
                    f"SELECT dlid, {records.ATTEMPT_COLUMNS} FROM attempts "
                    f"WHERE dlid IN ({','.join('?' * len(chunk))}){own} ORDER BY dlid, did, number, rowid",
                    chunk,
                )
                for dlid, *attempt in rows:
                    out.setdefault(int(dlid), []).append(records.attempt(attempt))
        return out

    def event_history(self, event_id: str) -> EventHistory | None:
        """A connection of its own, in one read transaction: every read sees the same commit (a delivery
        settled between two of them would show neither pending nor with its last attempt), and the reader
        the delivery workers use from the event loop is left alone."""
        self._read_conn()  # opened, and not closed yet
        with _reading(), contextlib.closing(connect(self.path, readonly=True)) as conn:
            conn.execute("BEGIN")
            return self._event_history(conn, event_id)

    def _event_history(self, conn: sqlite3.Connection, event_id: str) -> EventHistory | None:
        stored = conn.execute(
            "SELECT seq, trigger, body, received FROM events WHERE id = ? ORDER BY seq", (event_id,)
        ).fetchall()
        dead = [
            records.dead_letter(row)
            for row in conn.execute(
                f"SELECT {records.DEAD_LETTER_COLUMNS} FROM dead_letters WHERE event_id = ? ORDER BY dlid", (event_id,)
            )
        ]
        if not stored and not dead:
            return None
        seqs = [int(row[0]) for row in stored]
        dlids = [dl.dlid for dl in dead]
        marks, dead_marks = ",".join("?" * len(seqs)), ",".join("?" * len(dlids))
        now = _spool_now(conn)
        pending = [
            records.pending_row(row, now)
            for row in conn.execute(
                f"SELECT {records.PENDING_COLUMNS} FROM deliveries WHERE seq IN ({marks}) ORDER BY did", seqs
            )
        ]
        # by the event's seqs (its attempts while it is stored) and by its dead letters (theirs outlive it): UNION
        # drops an attempt both halves find, the rowid keeps two attempts that read alike apart
        replays = _keeps_replays(conn)
        columns = f"rowid, dlid, {'replayed' if replays else 'NULL'}, output, route, {records.ATTEMPT_COLUMNS}"
        rows = _attempt_rows(
            conn,
            f"SELECT {columns} FROM attempts WHERE seq IN ({marks}) "
            f"UNION SELECT {columns} FROM attempts WHERE dlid IN ({dead_marks})",
            [*seqs, *dlids],
        )
        recorded = [records.recorded_attempt(row[1:]) for row in rows]
        replayed = (
            [
                records.replay(row)
                for row in conn.execute(
                    f"SELECT {records.REPLAY_COLUMNS} FROM replays WHERE seq IN ({marks}) "
                    f"UNION SELECT {records.REPLAY_COLUMNS} FROM replays WHERE held_by IN ({dead_marks})",
                    [*seqs, *dlids],
                )
            ]
            if replays
            else []
        )
        return event_history(event_id, stored, dead, pending, recorded, replayed)

    def status(self) -> SpoolStatus:
        with _reading():
            conn = self._read_conn()
            pending = int(conn.execute(PENDING_EVENTS).fetchone()[0])
            now = _spool_now(conn)
            oldest = conn.execute(OLDEST_PENDING).fetchone()
            backlogs = _output_backlogs(conn, now)
            counts = conn.execute(
                "SELECT output, reason, COUNT(*) FROM dead_letters GROUP BY 1, 2 ORDER BY 1, 2"
            ).fetchall()
        return records.spool_status(self.location, pending, now, oldest, backlogs, counts)


def _output_states(conn: sqlite3.Connection, now: float, output: str | None = None) -> dict[str, OutputState]:
    """The rows of `output_states` (one output's, or all), an open breaker whose record lapsed before `now`
    read as closed. A spool of schema 3 or older has no such table (`status` beside an older router): none."""
    sql = (
        "SELECT output, paused, pause_changed_at, pause_changed_by, breaker_open_since, breaker_until, "
        "breaker_router, breaker_error FROM output_states"
    )
    try:
        rows = conn.execute(sql + " WHERE output = ?", (output,)) if output is not None else conn.execute(sql)
        found = rows.fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return {}
        raise
    out: dict[str, OutputState] = {}
    for name, paused, changed_at, changed_by, open_since, until, router, error in found:
        live = open_since is not None and until is not None and until >= now
        out[name] = OutputState(
            name,
            bool(paused),
            changed_at,
            changed_by,
            open_since if live else None,
            router if live else None,
            error if live else None,
        )
    return out


def _schema_version(conn: sqlite3.Connection) -> int | None:
    """The spool's schema version; None for a new (empty) file."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone() is None:
        return None
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return None if row is None else int(row[0])


def _migrate(conn: sqlite3.Connection) -> None:
    """An older schema to this one, in one transaction, rows kept. 1 to 2: deliveries and dead letters become
    AUTOINCREMENT tables; 2 to 3: `_DDL` adds the `announced` table (empty: what the events stored before
    announced is not known, so recovery may rebuild those of them that fall in its first look-back); 3 to 4:
    `_DDL` adds the `output_states` table (empty: no output paused, no breaker open); 4 to 5: `_add_received`;
    5 to 6: `_add_ordering_key`; 6 to 7: `_DDL` adds the `attempts` table (empty: attempts made before were not
    recorded) and two indexes, `_ATTEMPTS_TRIGGER` its trigger; 7 to 8: `_add_replayed`, and `_DDL` adds the
    `replays` table (empty: dead letters replayed before took their attempts with them), `_REPLAYS_TRIGGER`
    its trigger.

    SQLite cannot add AUTOINCREMENT to a table: each is renamed, made again by `_DDL` and filled from the
    old one. From then on ids never repeat; the ones a schema-1 spool freed before are beyond knowing.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        moved = []
        for table in ("deliveries", "dead_letters"):
            (sql,) = conn.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
            ).fetchone()
            if "AUTOINCREMENT" in sql.upper():
                continue
            # the indexes would go with the renamed table and keep their names: _DDL makes them again
            indexes = conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL", (table,)
            ).fetchall()
            for (index,) in indexes:
                conn.execute(f'DROP INDEX "{index}"')
            conn.execute(f"ALTER TABLE {table} RENAME TO {table}_v1")
            moved.append(table)
        # before _DDL, which indexes the columns
        _add_received(conn)
        _add_ordering_key(conn)
        _add_replayed(conn)
        for statement in _DDL.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(_ATTEMPTS_TRIGGER)
        conn.execute(_REPLAYS_TRIGGER)
        for table in moved:
            # by name: the old table's columns may be in another order (or fewer, taking their defaults)
            new = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
            old = {row[1] for row in conn.execute(f"PRAGMA table_info({table}_v1)")}
            columns = ", ".join(f'"{name}"' for name in new if name in old)
            conn.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {table}_v1")
            conn.execute(f"DROP TABLE {table}_v1")
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    log.info("spool upgraded", extra={"schema_version": SCHEMA_VERSION, "tables": moved})


def _add_received(conn: sqlite3.Connection) -> None:
    """4 to 5 (retention): `events.received`, set only for events stored while `[router] retention` is on
    (`_DDL` indexes it). The events of an older schema have none: they go with their last delivery, as before."""
    if "received" not in {row[1] for row in conn.execute("PRAGMA table_info(events)")}:
        conn.execute("ALTER TABLE events ADD COLUMN received REAL")


def _add_ordering_key(conn: sqlite3.Connection) -> None:
    """5 to 6 (ordering keys): `deliveries.ordering_key`, NULL (unordered) for every delivery stored before
    (`_DDL` indexes it); adding a nullable column rewrites no row. Nothing to add when `deliveries` was just
    renamed for its copy (1 to 2): `_DDL` makes it with the column."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(deliveries)")}
    if columns and "ordering_key" not in columns:
        conn.execute("ALTER TABLE deliveries ADD COLUMN ordering_key TEXT")


def _add_replayed(conn: sqlite3.Connection) -> None:
    """7 to 8 (replay history): `attempts.replayed`, NULL for every attempt recorded before (none was of a
    replayed dead letter: those went with it); `_DDL` indexes it. Nothing to add to a spool older than 7: `_DDL`
    makes `attempts` with the column."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(attempts)")}
    if columns and "replayed" not in columns:
        conn.execute("ALTER TABLE attempts ADD COLUMN replayed INTEGER")


def _keeps_replays(conn: sqlite3.Connection) -> bool:
    """The spool has `replays` and `attempts.replayed` (schema 8): `trace` of a newer router may read the spool
    of an older one still running (readonly)."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'replays'").fetchone() is not None


def _rebase(conn: sqlite3.Connection, *, shift: float, anchor: Anchor) -> None:
    if shift:
        conn.execute("UPDATE deliveries SET due = due + ?, first_at = first_at + ?", (shift, shift))
    _write_anchor(conn, anchor)


def _read_anchor(conn: sqlite3.Connection) -> Anchor | None:
    """The anchor the spool's times are in, as the router recorded it (None before it ever did)."""
    rows = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('clock_boot', 'clock_offset')").fetchall())
    if "clock_offset" not in rows:
        return None
    return Anchor(rows.get("clock_boot") or None, float(rows["clock_offset"]))


def _write_anchor(conn: sqlite3.Connection, anchor: Anchor) -> None:
    conn.executemany(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [("clock_boot", anchor.boot or ""), ("clock_offset", repr(anchor.offset))],
    )


def _spool_now(conn: sqlite3.Connection) -> float:
    """Now in the time base the router recorded, for processes other than the router (the CLI), read
    afresh: the router may have rebased since this process opened the spool."""
    clock = SpoolClock()
    clock.adopt(_read_anchor(conn))
    return clock.now()


def _output_backlogs(conn: sqlite3.Connection, now: float) -> dict[str, OutputBacklog]:
    """Per output (configured or not) that has pending deliveries; `now` in the spool's time base."""
    # PENDING_PER_OUTPUT's count, with the retrying ones and the oldest's age (the same pass over the rows)
    counts = conn.execute(
        "SELECT output, COUNT(*), SUM(attempts > 0), MIN(first_at) FROM deliveries GROUP BY output ORDER BY output"
    ).fetchall()

    def next_retry(output: str) -> Any:
        # the (output, due, did) index gives due order; fresh deliveries (never tried) are skipped
        return conn.execute(
            "SELECT due, attempts, last_error FROM deliveries WHERE output = ? AND attempts > 0 "
            "ORDER BY due, did LIMIT 1",
            (output,),
        ).fetchone()

    return records.output_backlogs(counts, next_retry, now)


def _where(where: DeadLetterFilter) -> tuple[str, list[Any]]:
    """`where` as a WHERE clause on dead_letters (`records.dead_letter_where`), its ids as a list of marks."""
    return records.dead_letter_where(where, "?", lambda ids: (f"dlid IN ({','.join('?' * len(ids))})", list(ids)))


#: rows one INSERT takes. Each statement the writer thread steps releases the GIL and must take it back
#: from the event loop, which under load holds it up to a switch interval (runtime.py) at a time: one
#: statement per event, or per returned row, made a group wait for the GIL once per row
#: alone. One multi-row INSERT per table per group waits once.
_ROWS_PER_INSERT = 200
_EVENT_INSERT = "INSERT INTO events (id, trigger, stored_at, received, body) VALUES "
_DELIVERY_INSERT = "INSERT INTO deliveries (seq, output, route, payload, due, first_at, ordering_key) VALUES "
_PARKED_INSERT = (
    "INSERT INTO dead_letters (event_id, trigger, source, output, route, reason, error, created_at, body, payload) "
    "VALUES "
)


def _insert_rows(conn: sqlite3.Connection, insert: str, rows: Sequence[tuple[Any, ...]]) -> list[int]:
    """Insert `rows` with as few statements as possible; their new rowids, in order.

    Rows without an explicit INTEGER PRIMARY KEY get one more than the largest the table ever had
    (AUTOINCREMENT; `events` without it: its largest), one after the other in VALUES order; inside our write
    transaction nobody else inserts, so the ids of a statement's rows are the consecutive run ending at its
    last_insert_rowid.
    """
    ids: list[int] = []
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        chunk = rows[start : start + _ROWS_PER_INSERT]
        marks = "(" + ",".join("?" * len(chunk[0])) + ")"
        last = conn.execute(insert + ",".join([marks] * len(chunk)), list(chain.from_iterable(chunk))).lastrowid
        assert last is not None
        ids.extend(range(last - len(chunk) + 1, last + 1))
    return ids


def _kept_seqs(conn: sqlite3.Connection, events: Sequence[StoreEvent]) -> list[int | None]:
    """Per event a replay stores again, the seq of the kept event (`[router] retention`) it is, None when the
    spool keeps none: the latest stored with its id, its very body (as the dead letter copied it) and a
    received time. One indexed look per event (`events_id`); a replay's write, not the router's."""
    return [
        conn.execute(
            "SELECT MAX(seq) FROM events WHERE id = ? AND body = ? AND received IS NOT NULL",
            (item.event_id, item.body),
        ).fetchone()[0]
        for item in events
    ]


def _keys_pending(conn: sqlite3.Connection, deliveries: Iterable[NewDelivery]) -> set[tuple[str, str]]:
    """The (output, ordering key) pairs of these deliveries that have pending deliveries already: one indexed
    look per pair (`deliveries_key`), a statement per output. Nothing to read when none is keyed."""
    wanted: dict[str, set[str]] = {}
    for d in deliveries:
        if d.ordering_key is not None:
            wanted.setdefault(d.output, set()).add(d.ordering_key)
    found: set[tuple[str, str]] = set()
    for output, keys in wanted.items():
        rows = conn.execute(
            "SELECT value FROM json_each(?) WHERE EXISTS "
            "(SELECT 1 FROM deliveries WHERE output = ? AND ordering_key = json_each.value)",
            (orjson.dumps(sorted(keys)).decode(), output),
        )
        found.update((output, str(key)) for (key,) in rows.fetchall())
    return found


def _unblock(conn: sqlite3.Connection, keys: Sequence[tuple[str, str]], now: float) -> None:
    """Make the first pending delivery of each (output, ordering key) due `now`, if it waited: its predecessor
    was just finished, in this transaction. Two indexed lookups per pair."""
    conn.executemany(
        "UPDATE deliveries SET due = ? WHERE did = (SELECT MIN(did) FROM deliveries WHERE output = ? AND "
        "ordering_key = ?) AND due = ?",
        [(now, output, key, BLOCKED) for output, key in keys],
    )


def _known_messages(conn: sqlite3.Connection, seen: Sequence[SeenMessage], now: float) -> set[tuple[str, str]]:
    """Which of these (input, message id) the spool holds and has not forgotten by `now`: indexed reads."""
    known: set[tuple[str, str]] = set()
    for start in range(0, len(seen), _ROWS_PER_INSERT):
        chunk = seen[start : start + _ROWS_PER_INSERT]
        rows = conn.execute(
            "SELECT input, message_id FROM seen_message_ids WHERE expires_at >= ? AND (input, message_id) IN "
            "(VALUES " + ",".join(["(?,?)"] * len(chunk)) + ")",
            [now, *(v for m in chunk for v in (m.input, m.message_id))],
        ).fetchall()
        known.update((str(input_name), str(message_id)) for input_name, message_id in rows)
    return known


def _forget_expired_messages(conn: sqlite3.Connection, now: float) -> None:
    conn.execute("DELETE FROM seen_message_ids WHERE expires_at < ?", (now,))


def _claim_messages(conn: sqlite3.Connection, items: Sequence[StoreEvent | StoreDeadLetter], now: float) -> set[int]:
    """Record the message ids of `items` in the transaction that stores them; the indexes of the repeats.

    The id and its event are committed together or not at all, so a repeat is recognised after a restart
    and among copies that arrive at once, whichever group they share. Of the items with one id, the first
    is stored. Ids past their expiry go first (one indexed range delete), so an expired id counts as new.
    """
    _forget_expired_messages(conn, now)
    claimed = [(index, item.seen) for index, item in enumerate(items) if item.seen is not None]
    # the ids stored before: read, then the new ones inserted, in one write transaction (BEGIN IMMEDIATE
    # keeps other processes out; in this one only the writer thread writes), so nothing comes in between.
    # No INSERT ... RETURNING: it needs SQLite 3.35
    known = _known_messages(conn, [seen for _, seen in claimed], now)
    repeats: set[int] = set()
    new: list[SeenMessage] = []
    for index, seen in claimed:
        key = (seen.input, seen.message_id)
        if key in known:  # stored before, or by an earlier item of these
            repeats.add(index)
        else:
            known.add(key)
            new.append(seen)
    for start in range(0, len(new), _ROWS_PER_INSERT):
        rows = new[start : start + _ROWS_PER_INSERT]
        conn.execute(
            "INSERT INTO seen_message_ids (input, message_id, expires_at) VALUES " + ",".join(["(?,?,?)"] * len(rows)),
            [v for seen in rows for v in (seen.input, seen.message_id, seen.expires_at)],
        )
    return repeats


def _claim_announcements(
    conn: sqlite3.Connection, items: Sequence[StoreEvent | StoreDeadLetter], repeats: Collection[int], group: set[bytes]
) -> set[int]:
    """Add the announced keys of `items` (those not `repeats` already) to `group`, the keys the writer thread
    writes once per transaction, just before its commit; the indexes of the claims whose key is kept already
    (before, by an earlier op of the group, or an earlier item), which are not stored.

    Only claims read: a live event's key costs no statement of its own, so a busy webhook pays one
    multi-row insert per group for all of them.
    """
    found = [(index, item.announced) for index, item in enumerate(items) if item.announced and index not in repeats]
    claimed = [a.key for _, a in found if a.claim and a.key not in group]
    kept: set[bytes] = set()
    for start in range(0, len(claimed), _KEYS_PER_INSERT):
        chunk = claimed[start : start + _KEYS_PER_INSERT]
        rows = conn.execute(f"SELECT key FROM announced WHERE key IN ({','.join('?' * len(chunk))})", chunk)
        kept.update(bytes(key) for (key,) in rows.fetchall())
    skipped: set[int] = set()
    for index, announced in found:
        if announced.claim and (announced.key in kept or announced.key in group):
            skipped.add(index)
        else:
            group.add(announced.key)
    return skipped


#: announced keys one statement takes (one parameter each)
_KEYS_PER_INSERT = 800


def _write_announcements(conn: sqlite3.Connection, keys: Collection[bytes]) -> None:
    """Keep `keys`: one statement per 800. Keys start with the change's date, so new ones land at the end of
    the table's b-tree: a commit rewrites a few pages, not one per key."""
    rows = list(keys)
    for start in range(0, len(rows), _KEYS_PER_INSERT):
        chunk = rows[start : start + _KEYS_PER_INSERT]
        conn.execute("INSERT OR IGNORE INTO announced (key) VALUES " + ",".join(["(?)"] * len(chunk)), chunk)


#: the events (of a JSON array of seqs) no delivery is left of
_FORGET_FINISHED = (
    "DELETE FROM events WHERE seq IN (SELECT value FROM json_each(?)) "
    "AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.seq = events.seq)"
)


def _parked_row(parking: storing.Parking, created: float) -> tuple[Any, ...]:
    """A delivery `store` keeps as a dead letter (`_PARKED_INSERT`'s values)."""
    item, delivery = parking.event, parking.delivery
    return (
        item.event_id,
        item.trigger,
        item.source,
        delivery.output,
        delivery.route,
        parking.reason,
        parking.error[:4000],
        created,
        item.body,
        delivery.payload,
    )


def _insert_dead_letter(conn: sqlite3.Connection, item: StoreDeadLetter, now: float) -> int:
    cur = conn.execute(
        "INSERT INTO dead_letters (event_id, trigger, source, reason, error, created_at, body) VALUES (?,?,?,?,?,?,?)",
        (item.event_id, item.trigger, item.source, item.reason, item.error[:4000], now, item.body),
    )
    assert cur.lastrowid is not None
    return cur.lastrowid


#: one attempt per row; each row's event, output and route are its delivery's (a row whose delivery is gone
#: inserts nothing). A delivered attempt is not recorded when the pass that records it forgets its event
#: (not kept, and no delivery of it left but those the pass finishes: see `Spool.settle`), the common case
#: without retention: the check costs an indexed probe or two per delivered attempt, the row it saves an
#: insert and two index entries that the trigger would delete again in the same commit. The ids the pass
#: finishes go as a JSON array
_ATTEMPT_INSERT = (
    "INSERT INTO attempts (seq, did, dlid, output, route, number, at, duration, outcome, status, error, answer) "
    "SELECT d.seq, d.did, ?, d.output, d.route, v.column2, v.column3, v.column4, v.column5, v.column6, v.column7, "
    "v.column8 FROM (VALUES {values}) v JOIN deliveries d ON d.did = v.column1 "
    "WHERE v.column5 <> 'delivered' "
    "OR (SELECT received FROM events e WHERE e.seq = d.seq) IS NOT NULL "
    "OR EXISTS (SELECT 1 FROM deliveries o WHERE o.seq = d.seq AND o.did NOT IN (SELECT value FROM json_each(?)))"
)


#: whether `_ATTEMPT_INSERT` would record any of the delivered attempts of the deliveries in a JSON array, with
#: the ids the pass finishes as its second: its WHERE for delivered attempts. Asked before a chunk of delivered
#: attempts only; it mostly finds none, and then two parameters are bound instead of eight per attempt
_ATTEMPTS_RECORDED = (
    "SELECT EXISTS (SELECT 1 FROM deliveries d WHERE d.did IN (SELECT value FROM json_each(?)) AND ("
    "(SELECT received FROM events e WHERE e.seq = d.seq) IS NOT NULL "
    "OR EXISTS (SELECT 1 FROM deliveries o WHERE o.seq = d.seq AND o.did NOT IN (SELECT value FROM json_each(?)))))"
)


def _record_attempts(
    conn: sqlite3.Connection,
    attempts: Sequence[Attempt],
    *,
    finished: Sequence[int] = (),
    dead_letter: int | None = None,
) -> None:
    """Record `attempts` (of a group's settles, whose delivered ids `finished` are forgotten next; or the last
    attempt of a delivery moved to `dead_letter`): one statement per 200, then, only for deliveries past
    ATTEMPTS_FIRST + ATTEMPTS_LAST attempts, forget the one no longer among the first or the last."""
    done = orjson.dumps(list(finished)).decode()
    for start in range(0, len(attempts), _ROWS_PER_INSERT):
        chunk = attempts[start : start + _ROWS_PER_INSERT]
        if all(a.outcome == "delivered" for a in chunk):
            dids = orjson.dumps([a.delivery for a in chunk]).decode()
            if not conn.execute(_ATTEMPTS_RECORDED, (dids, done)).fetchone()[0]:
                continue  # the insert would add no row
        values = ",".join(["(?,?,?,?,?,?,?,?)"] * len(chunk))
        conn.execute(
            _ATTEMPT_INSERT.format(values=values),
            [
                dead_letter,
                *(
                    v
                    for a in chunk
                    for v in (a.delivery, a.number, a.at, a.duration, a.outcome, a.status, a.error, a.answer)
                ),
                done,
            ],
        )
    beyond = records.forgotten_attempts(attempts)
    if beyond:
        conn.executemany(f"DELETE FROM attempts WHERE did = ? AND number > {ATTEMPTS_FIRST} AND number <= ?", beyond)


def _keep_replayed(conn: sqlite3.Connection, replayed: Sequence[tuple[int, int]], by: str | None) -> None:
    """Per (dead letter, the first delivery it was replayed as): record its replay and move what it holds (its
    attempts, the records of earlier replays it holds) to that delivery's event, that delivery their `head`
    (`_REPLAYS_TRIGGER`); before the dead letter is deleted. An operator's command: a few statements each."""
    at = time.time()
    for dlid, did in replayed:
        row = conn.execute("SELECT seq FROM deliveries WHERE did = ?", (did,)).fetchone()
        if row is None:
            continue
        (seq,) = row
        conn.execute(
            "INSERT INTO replays (dlid, seq, head, replayed_as, output, route, reason, error, attempts, created_at, "
            "replayed_at, replayed_by) SELECT dlid, ?, ?, ?, output, route, reason, error, attempts, created_at, ?, ? "
            "FROM dead_letters WHERE dlid = ?",
            (seq, did, did, at, by, dlid),
        )
        conn.execute("UPDATE replays SET seq = ?, held_by = NULL, head = ? WHERE held_by = ?", (seq, did, dlid))
        # its own attempts say the dead letter their delivery was; earlier ones keep theirs
        conn.execute(
            "UPDATE attempts SET seq = ?, dlid = NULL, replayed = COALESCE(replayed, dlid) WHERE dlid = ?",
            (seq, dlid),
        )


def _attempt_rows(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> list[Any]:
    """The rows of a read of `attempts`; none from a spool of schema 5 or older, which has no such table
    (`trace`, `dlq show` beside an older router)."""
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
