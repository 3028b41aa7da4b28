"""The spool's interface: what the rest of the router asks of the durable store, and the data it passes.

The spool keeps every accepted event until each of its deliveries is done, retries (with their due times)
and dead letters. Nothing outside a spool backend touches its storage: the pipeline stores, the delivery
workers claim due deliveries and settle them, `dlq` (and the console) lists, replays and purges dead
letters, `status` reads a summary, and the clock's anchor is kept by the spool. The SQLite backend is
`event_router.core.spool.sqlite` (the default: one file in `data_dir`), the PostgreSQL one
`event_router.core.spool.postgresql` (one database several routers share); `event_router.core.spool.backend`
chooses (`SpoolSettings`).

What every backend guarantees (the callers rely on it):
- `store` returns once its items are durable: an input may then acknowledge its source;
- a message id (`SeenMessage`) is claimed in the transaction that stores its event, so a repeat is never
  stored twice, whichever commit it shares;
- an event's `Announcement` is recorded in the transaction that stores it; a claimed one (a recovered
  event) is stored only if no event announced the same before, whichever commit it shares;
- delivery and dead letter ids never repeat (logs and `dlq` name them);
- an event stored with `received` (`[router] retention` on) is kept once its last delivery is done, until
  `prune_kept` removes it: a kept event is not pending (`depth`, the counts, `status` and the backlog limits
  count deliveries, never kept events), and `requeue_kept` gives it new deliveries (`event-router replay`);
- `depth`, `pending_outputs`, `dead_letter_count` and `oldest_pending_age` are kept as the backend
  commits (and counted again when another process changed the spool): `/metrics`, readiness and the
  `max_pending_events` check read them without a query;
- `store` holds each output to its backlog limit (`limits`) by the counts it keeps, in the transaction
  that stores: a delivery that would take its output past the limit is stored as a dead letter
  (`output_backlog_full`) instead, whatever else is stored at the same time;
- times in the spool (due, first attempt) are in `clock`'s base, which wall-clock jumps do not move
  (event_router.core.clock); other processes write in the base the router recorded (`claim_clock`);
- SQLite: only one router runs on a spool (`open("exclusive")`); PostgreSQL: several do, and a delivery
  `fetch_due` handed to one is leased to it (no other live router is handed it until it is settled, let go
  or its lease expired); operator commands open either beside running routers;
- each output's state (`OutputState`: paused by an operator, its breaker open on a router) is kept in the
  spool, so a pause outlives restarts and every router on a shared spool follows it; routers read it
  again every second or so (`output_states`, a small table);
- deliveries with an ordering key (`NewDelivery.ordering_key`) are handed out one at a time per output and
  key, in the order they were stored: `fetch_due` hands out only a key's first pending delivery (its
  head), and none of the key while the head is handed out (in memory, leased) or waits for a retry; once
  the head is delivered or dead-lettered the next is due (see `BLOCKED`);
- every delivery attempt `settle` is given (`Attempt`) is recorded in the transaction that records its
  outcome, kept as long as its event (pending, or kept under `[router] retention`) or, for a delivery that
  became a dead letter, as long as that dead letter (purged, its attempts go with it); of a delivery's
  attempts the first ATTEMPTS_FIRST and the last ATTEMPTS_LAST are kept, the ones between forgotten as new
  ones come (a delivery retried for days keeps 23 records, not thousands). `event_history` reads them back
  with the rest of an event's life (`event-router trace`, the console), `dead_letter_attempts` a dead
  letter's own delivery's (`dlq show`);
- a replayed dead letter (`replay_dead_letters`, a `Requeue` whose event is stored) leaves a `Replay` record
  (when, by whom, what it was) and its attempts to the delivery it is replayed as: kept with that delivery's
  event, and with its dead letter should it fail for good again, so `event_history` shows every earlier
  delivery of a replayed one (`DeliveryHistory.replay`), across any number of replays. They go as its own
  attempts do: with the event (delivered and not kept, or pruned) or with the dead letter (purged). A replay
  whose event is not stored (its routes take nothing now) keeps nothing;
- failures raise `SpoolError`, `transient` when the same write may succeed later (disk full, busy).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol, get_args

from event_router.api.errors import SpoolError
from event_router.core.clock import SpoolClock

DeadLetterReason = Literal[
    "validation",
    "unknown_trigger",
    "no_route",
    "undecodable",
    "permanent",
    "retries_exhausted",
    "output_backlog_full",
]
#: every reason a dead letter can have (what `dlq --reason` takes)
DEAD_LETTER_REASONS: Final[tuple[DeadLetterReason, ...]] = get_args(DeadLetterReason)

#: how a process opens the spool:
#: "exclusive" the daemon (`run`): only one per spool; it upgrades an older schema, keeps the counts and
#:   forgets expired message ids;
#: "shared" an operator command that writes (`dlq`): beside a running router, whose counts notice its writes;
#:   a spool of an older schema is refused (an older router may still run on it);
#: "readonly" an operator command that only reads (`status`): writes nothing, creates nothing.
OpenMode = Literal["exclusive", "shared", "readonly"]

#: the backends `[router] spool.backend` names
Backend = Literal["sqlite", "postgresql"]


@dataclass(frozen=True, slots=True)
class SpoolSettings:
    """Where the spool is: `[router] spool` (none: SQLite in `data_dir`)."""

    backend: Backend = "sqlite"
    #: PostgreSQL's connection string (URL or key=value), a resolved secret: it may hold a password
    dsn: str | None = field(default=None, repr=False)
    #: PostgreSQL: seconds a delivery handed to one router stays its own without the router renewing it
    lease: float = 30.0


class SpoolMissing(SpoolError):
    """An operator command (`status`, `dlq`) was pointed at a spool that no router has made."""


class DataDirInUse(SpoolError):
    """`open("exclusive")`: another router holds this spool (it would deliver everything twice); the message
    names the data_dir and the other router's pid, the caller names the key."""


@dataclass(frozen=True, slots=True)
class OutputBacklog:
    """What the spool holds for one output: its pending deliveries and the retry that comes next."""

    pending: int
    #: pending deliveries that failed at least once and wait for a retry
    retrying: int
    #: of the retrying delivery that is due first: seconds from the status's reading until it is due
    #: (negative: overdue), failures so far, its last error
    next_retry_in: float | None = None
    next_retry_failures: int = 0
    last_error: str | None = None
    #: seconds since its oldest pending delivery was stored (the spool clock's base: a wall-clock jump does not
    #: age it); None when it has none
    oldest_pending_age: float | None = None


@dataclass(frozen=True, slots=True)
class DeadLetterCount:
    #: the output it failed at; None for one that never reached an output (invalid, unrouted...)
    output: str | None
    reason: str
    count: int


@dataclass(frozen=True, slots=True)
class SpoolStatus:
    """What `event-router status` shows of the spool, counted from the store (not from `counts`)."""

    #: where the spool is, for people (a path)
    location: str
    pending_events: int
    oldest_pending_age: float | None
    #: per output (configured or not) that has pending deliveries
    backlogs: Mapping[str, OutputBacklog]
    #: ordered by output (None first), then reason
    dead_letters: Sequence[DeadLetterCount]


#: the due time of a delivery waiting behind an earlier one of its output and ordering key: never due. Only
#: a key's first pending delivery (the lowest id: ids follow the order of the stores) has a real due time;
#: when it is finished (delivered or dead-lettered) the backend makes the next one due, in the same
#: transaction. `fetch_due` therefore reads only due rows, keyed or not, from the same index as ever. Only a
#: head is ever attempted, so a delivery with failed attempts is never BLOCKED: `retry_now` (attempts > 0)
#: leaves the waiting ones alone, and `stored_events` shows them not attempted yet (`due_in` infinite).
BLOCKED = float("inf")


# not frozen: made per event, and a frozen dataclass's __init__ sets each field through
# object.__setattr__, several times slower. Nothing changes one once made
@dataclass(slots=True)
class NewDelivery:
    output: str
    route: str
    #: JSON of the route's reshaped body, None to send the event itself
    payload: bytes | None
    #: the delivery's ordering key (`ordering_key` of its route or output, rendered at store time): the
    #: output receives the deliveries of one key one at a time, in the order they were stored
    ordering_key: str | None = None
    #: why the delivery cannot be made (its ordering key cannot be rendered): `store` keeps it as a dead
    #: letter with reason "permanent" and this error instead (`Refused`), and the event goes on to its other
    #: deliveries
    refused: str | None = None


@dataclass(frozen=True, slots=True)
class Parked:
    """A delivery `store` kept as a dead letter (reason `output_backlog_full`) instead of storing it: its
    output already had `pending` deliveries waiting, its `limit` or more. Replaying the dead letter
    delivers it to that output."""

    dead_letter: int
    pending: int
    limit: int


@dataclass(frozen=True, slots=True)
class Refused:
    """A delivery `store` kept as a dead letter (reason "permanent") because it cannot be made: its
    `NewDelivery.refused` said why. Replaying the dead letter tries again under the configuration then."""

    dead_letter: int
    error: str


@dataclass(frozen=True, slots=True)
class SeenMessage:
    """A source's message id, stored with the event it carried: a repeat of it is not stored again."""

    input: str
    message_id: str
    #: Unix time (wall clock) after which the id is forgotten
    expires_at: float


@dataclass(frozen=True, slots=True)
class Announcement:
    """What a stored event announced (`event_router.core.announced`: the date of the change, then a digest of
    its trigger, DTO id and state), kept until `forget_announced`: gap recovery stores only what nobody
    announced."""

    key: bytes
    #: a rebuilt event (gap recovery): stored only if the key is not kept yet; else `store` answers None
    claim: bool = False


# not frozen: made per event, and a frozen dataclass's __init__ sets each field through
# object.__setattr__, several times slower. Nothing changes one once made
@dataclass(slots=True)
class StoreEvent:
    """An accepted event and the deliveries its routes made of it."""

    event_id: str
    trigger: str
    body: bytes
    deliveries: Sequence[NewDelivery]
    #: stored only if this message id is new (`store` answers None for a repeat)
    seen: SeenMessage | None = None
    #: the input it came from, for the dead letter of a delivery parked at its output's limit
    source: str | None = None
    announced: Announcement | None = None
    #: Unix time (wall clock) the router received it, when `[router] retention` is on: the event is then kept
    #: after its last delivery (a kept event, for `event-router replay`) until `prune_kept` removes it.
    #: None: forgotten with its last delivery
    received: float | None = None


@dataclass(frozen=True, slots=True)
class StoreDeadLetter:
    """Something kept for people to look at: an invalid event, an undecodable message..."""

    reason: DeadLetterReason
    error: str
    body: bytes
    event_id: str | None = None
    trigger: str | None = None
    source: str | None = None
    #: stored only if this message id is new (`store` answers None for a repeat)
    seen: SeenMessage | None = None
    announced: Announcement | None = None


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    did: int
    seq: int
    output: str
    route: str
    payload: bytes | None
    attempts: int
    first_at: float
    body: bytes
    #: the event's, for the delivery's log lines
    event_id: str = ""
    trigger: str = ""
    #: its ordering key (None: unordered): the next of the key is handed out once this one is finished
    ordering_key: str | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    dlid: int
    event_id: str | None
    trigger: str | None
    source: str | None
    output: str | None
    route: str | None
    reason: str
    error: str | None
    attempts: int
    #: Unix time (wall clock)
    created_at: float
    body: bytes
    payload: bytes | None


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Which dead letters a `dlq` command acts on; unset fields do not filter, set ones must all match."""

    ids: Sequence[int] = ()
    output: str | None = None
    trigger: str | None = None
    reason: str | None = None
    #: created at or after (Unix time)
    since: float | None = None
    #: created before (Unix time)
    until: float | None = None
    #: only ids up to this one (those a person was shown and confirmed, not those stored since)
    upto: int | None = None
    #: only the dead letters of this event (not indexed: for an operator's look at one event)
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class Requeue:
    """Replay a dead letter: store `event` again, its deliveries due now, and forget the dead letter.

    When the spool keeps that event (`[router] retention`: stored with its id, the very body the dead letter
    holds, and a received time), the deliveries are added to the kept event instead of storing a copy: one
    event, whose new deliveries' attempts are recorded with it (`event_history`) and which is kept, and pruned,
    as before. An event without deliveries (its routes take nothing now) is not stored; the dead letter goes
    all the same.
    """

    dlid: int
    event: StoreEvent


@dataclass(frozen=True, slots=True)
class Replay:
    """A dead letter of the event that was replayed (`replay_dead_letters`): what it was, when and by whom it
    was replayed, and the delivery it was replayed as. Kept with the event's history, as the module says; a
    delivery's dead letter's attempts are kept with it (`DeliveryHistory.replay`)."""

    #: the dead letter (gone since it was replayed), as it was then
    dead_letter: int
    output: str | None
    route: str | None
    reason: str
    error: str | None
    attempts: int
    #: Unix times (wall clock): when it became a dead letter, when it was replayed
    created_at: float
    replayed_at: float
    #: who replayed it: `dlq replay`'s user and host, the console's client; None when not told
    replayed_by: str | None
    #: the delivery it was replayed as (the first of them, when the replay routed the event anew)
    replayed_as: int


@dataclass(frozen=True, slots=True)
class StillDead:
    """A replayed dead letter failed again (still invalid, unrouted): it stays, with this error and one
    more attempt."""

    dlid: int
    error: str


@dataclass(frozen=True, slots=True)
class OutputState:
    """What the spool records of one output besides its deliveries (`output_states`): whether an operator
    paused it, and whether a router's breaker holds it open. An output without a record is neither."""

    output: str
    #: paused: no router starts a delivery of it; its backlog stays in the spool
    paused: bool = False
    #: Unix time of the last pause or resume, and who asked for it (a user and host, the admin endpoint)
    pause_changed_at: float | None = None
    pause_changed_by: str | None = None
    #: Unix time since which a router's breaker holds the output open (None: no live record of an open one);
    #: an open record lapses unless its router records it again (`Spool.record_breaker`)
    breaker_open_since: float | None = None
    #: the router that recorded it open, and the failure that opened it
    breaker_router: str | None = None
    breaker_error: str | None = None


@dataclass(frozen=True, slots=True)
class KeptEvent:
    """An event the spool keeps for replay (`[router] retention`), delivered or still pending."""

    #: the spool's key of the event (`requeue_kept` takes it)
    seq: int
    event_id: str
    trigger: str
    #: Unix time (wall clock) the router received it
    received: float
    body: bytes


@dataclass(frozen=True, slots=True)
class PendingDelivery:
    """A delivery the spool holds for an event (`stored_events`): not yet delivered nor dead-lettered."""

    did: int
    output: str
    route: str
    #: failed attempts so far
    attempts: int
    #: seconds from the reading until it is due (negative: overdue, or waiting for its output)
    due_in: float
    last_error: str | None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as the spool holds it (pending, or kept for `[router] retention`), with its pending deliveries.
    A replayed dead letter is stored again under the same event id: one id may have several."""

    seq: int
    event_id: str
    trigger: str
    #: Unix time (wall clock) the router received it; None when stored without retention
    received: float | None
    body: bytes
    deliveries: Sequence[PendingDelivery]


#: where `kept_events` goes on from: (received, seq) of the last kept event read
KeptCursor = tuple[float, int]


#: a delivery's outcome for `settle`: (id, failures so far, due again at (clock base), error)
Retry = tuple[int, int, float, str]
#: (id, reason, error, attempts): moved to the dead letters with its event and payload
Dead = tuple[int, str, str, int]

#: of one delivery's attempts the spool keeps the first ATTEMPTS_FIRST and the last ATTEMPTS_LAST: the first
#: say how the trouble began, the last how it goes now, and a delivery retried for days stays 23 rows
ATTEMPTS_FIRST = 3
ATTEMPTS_LAST = 20

#: what one attempt came to: delivered; failed and due again (`retry`); failed for good (`permanent`,
#: `retries_exhausted`: the delivery is a dead letter now)
AttemptOutcome = Literal["delivered", "retry", "permanent", "retries_exhausted"]


# not frozen: made per delivery attempt, and a frozen dataclass's __init__ sets each field through
# object.__setattr__, several times slower. Nothing changes one once made
@dataclass(slots=True)
class Attempt:
    """One delivery attempt: given to `settle` with the delivery's outcome, read back by `event_history` and
    `dead_letter_attempts`."""

    #: the delivery's id
    delivery: int
    #: 1 for the first attempt
    number: int
    #: Unix time (wall clock) the attempt began, and how long it took, in seconds (a batch's attempts, as an
    #: output that delivers several at once makes them, share both)
    at: float
    duration: float
    outcome: AttemptOutcome
    #: what the receiver answered, when it did and the output says (an HTTP status)
    status: int | None = None
    #: why it failed (the delivery's error line, as logs and dead letters say it); None when delivered
    error: str | None = None
    #: the start of the receiver's answer (its first KiB), scrubbed of the output's secrets by the output
    answer: str | None = None


#: where a delivery is: waiting for its first attempt or a retry (`pending`), done (`delivered`), a dead
#: letter (`dead_letter`), or a dead letter that was replayed (`replayed`: another delivery took its place). A
#: delivered or replayed one is known by its attempts only: its row goes when it is finished
DeliveryState = Literal["pending", "delivered", "dead_letter", "replayed"]


@dataclass(frozen=True, slots=True)
class DeliveryHistory:
    """One delivery of an event (to one output, by one route) and its attempts the spool keeps."""

    delivery: int
    output: str
    route: str
    state: DeliveryState
    #: attempts made so far (kept or not: see ATTEMPTS_FIRST); for a delivered one, those recorded
    attempts: int
    #: pending: seconds from the reading until it is due (negative: overdue; its first attempt when
    #: `attempts` is 0); else None
    next_attempt_in: float | None = None
    last_error: str | None = None
    #: the dead letter it became (replayed: the one it was)
    dead_letter: int | None = None
    #: the attempts kept, oldest first (a gap in their numbers: those forgotten, see ATTEMPTS_FIRST). Each
    #: delivery numbers its own from 1: a replayed one's attempts are its own, its earlier delivery's apart
    history: Sequence[Attempt] = ()
    #: state `replayed`: the replay of its dead letter (`Replay.replayed_as`: the delivery that went on)
    replay: Replay | None = None


@dataclass(frozen=True, slots=True)
class EventHistory:
    """What the spool knows of one event id (`event_history`): the event as stored, each of its deliveries
    with their attempts, and its dead letters. An event is in the spool while a delivery of it is pending, or
    kept (`[router] retention`); once neither, only its dead letters (and their attempts) remain."""

    event_id: str
    trigger: str | None
    #: the event's JSON as stored (pending or kept; else a dead letter's copy), None when only a dead letter
    #: that holds no event (an undecodable message) names the id
    body: bytes | None
    #: a delivery of it is pending
    pending: bool
    #: Unix time it was received, when it is stored under `[router] retention` (kept after its deliveries)
    received: float | None
    #: the spool holds the event itself (pending or kept), not only dead letters of it
    stored: bool
    #: by delivery id (the order they were stored in)
    deliveries: Sequence[DeliveryHistory]
    #: every dead letter of the id: those its deliveries became, and those it was before any delivery
    #: (invalid, unknown trigger, no route, parked at a full backlog)
    dead_letters: Sequence[DeadLetter]
    #: the dead letters of it that were replayed, by dead letter id: those of a delivery (also the `replay` of
    #: that delivery's history) and those of none (invalid, unrouted, parked: no attempts)
    replays: Sequence[Replay] = ()


class Spool(Protocol):
    """The durable store of pending events, their deliveries and the dead letters.

    The event loop's calls (`store`, `settle`, `rebase`, `prune_kept` awaited; the reads, small indexed
    queries) never block it on a commit. `open`, `claim_clock` (the router's start) and the operator commands'
    calls (`dead_letters`, `purge_dead_letters`, `replay_dead_letters`, `status`, `kept_events`,
    `requeue_kept`) are synchronous: they wait for their commit, outside the event loop's work.
    """

    #: the time base of every time in the spool; adopts the recorded anchor at open
    clock: SpoolClock

    # --- lifecycle ------------------------------------------------------------------------------

    def open(self, mode: OpenMode = "shared") -> None:
        """Open the store as `mode` says (see OpenMode); a SpoolError when it cannot (`DataDirInUse` when
        another router holds it)."""

    def close(self) -> None:
        """Let queued writes finish, then close; safe to call twice."""

    # --- what the router shows, without a query ------------------------------------------------

    @property
    def depth(self) -> int:
        """Events stored and not yet delivered everywhere."""

    @property
    def writable(self) -> bool:
        """The last commit (if any) succeeded and the store is still the one opened."""

    @property
    def last_error(self) -> str | None:
        """Why the last commit failed, until one succeeds again (readiness reports it)."""

    def oldest_pending_age(self) -> float | None:
        """Seconds since the oldest pending event was stored (None when nothing is pending)."""

    def dead_letter_count(self) -> int:
        """Dead letters in the store."""

    def pending_outputs(self) -> dict[str, int]:
        """Pending deliveries per output, including outputs no longer configured."""

    # --- the pipeline ---------------------------------------------------------------------------

    async def store(
        self, items: Sequence[StoreEvent | StoreDeadLetter], limits: Mapping[str, int] | None = None
    ) -> list[list[int | Parked | Refused] | int | None]:
        """Persist events (per delivery, in order: its id) and dead letters (the dead letter id), durably.

        An item whose `seen` message id is stored already (before, or by an earlier item) is a repeat: not
        stored, its result None; so is an item whose `announced` claim finds its key kept. Every other item's
        key is kept. An event without deliveries is not pending: not stored, its result [].
        `limits`: the most deliveries each named output may have pending. A delivery for an output that has
        that many already (counted with those stored before it in this call) is stored as a dead letter
        instead, its result `Parked`; an event whose deliveries are all parked is not pending. A delivery
        with `refused` set is a dead letter at once, its result `Refused` (it counts against no limit).
        A delivery with an ordering key is stored behind the pending deliveries of its output and key (not
        due, `BLOCKED`) when there are any, else due now.
        """

    async def forget_announced(self, before: bytes) -> int:
        """Forget the announced keys that sort before `before` (changes older than the retention); how many."""

    async def announced(self, keys: Sequence[bytes]) -> set[bytes]:
        """Which of these announced keys (`Announcement.key`) the spool keeps, as committed: gap recovery
        asks, for a look's rebuilt events, which were announced already, and holds back only the others.
        A key of a group not yet committed may be missing (the claim in `store` still decides). A look may
        ask for thousands at once: the read must not hold the event loop for long (indexed lookups by key,
        letting other tasks run between batches, or a read off the loop)."""

    def known_messages(self, seen: Sequence[SeenMessage]) -> set[tuple[str, str]]:
        """Which of these (input, message id) the spool holds and has not forgotten."""

    # --- the delivery workers -------------------------------------------------------------------

    def fetch_due(self, output: str, now: float, limit: int, exclude: Collection[int]) -> list[DeliveryRow]:
        """Up to `limit` deliveries of `output` due by `now`, oldest due first, skipping the ids in `exclude`
        (those in memory); nothing while a rebase is not committed yet. Of an ordering key, only its first
        pending delivery can be due (see `BLOCKED`)."""

    async def settle(
        self,
        *,
        done: Sequence[int] = (),
        retry: Sequence[Retry] = (),
        dead: Sequence[Dead] = (),
        attempts: Sequence[Attempt] = (),
        lazy: bool = False,
    ) -> list[int | None]:
        """Record a batch of outcomes in one commit: `done` are forgotten (and their event once nothing else
        is pending), `retry` due again later, `dead` moved to the dead letters. A finished (done or dead)
        delivery with an ordering key makes the next pending one of its output and key due now. `attempts`:
        the attempts these outcomes came from, recorded in the same commit (one insert for a whole group of
        settles; a dead letter's with it), kept as the module says; one of a delivery no longer in the spool is
        not recorded, nor, as it would go at once, a delivered attempt whose event the same commit forgets (not
        kept, no other delivery pending). `lazy`: the commit may wait a few milliseconds to be shared. The new dead
        letter ids in `dead`'s order; None for a delivery no longer in the spool (finished meanwhile)."""

    async def release(self, output: str, keep: Collection[int] = ()) -> None:
        """This router no longer delivers to `output` (a reload removed it): give back the deliveries of it
        that `fetch_due` handed out here, but those in `keep` (a worker that is finishing still attempts
        them), so they stay pending for whichever router delivers to it and none is held here for ever.
        Never raises: what cannot be given back now is let go all the same (a lease left to run out)."""

    # --- the clock ------------------------------------------------------------------------------

    def claim_clock(self) -> float:
        """Record this process's clock as the spool's (the router, at start), first moving every pending time
        by the wall-clock jump found since the recorded anchor; returns that jump (0.0 if none or failed)."""

    async def rebase(self, shift: float) -> None:
        """Move every pending time by `shift` seconds, right after `clock.shift(shift)` (no await between)."""

    # --- the outputs' states ---------------------------------------------------------------------

    def output_states(self) -> dict[str, OutputState]:
        """The recorded state of each output that has one (a small table: routers read it every second or so
        on the event loop, `status` once); a lapsed open breaker reads as closed."""

    def set_paused(self, output: str, paused: bool, by: str) -> tuple[OutputState, bool]:
        """Pause or resume `output` (an operator command; the admin endpoint from a worker thread), in one
        commit; its state after, and whether this changed it (pausing a paused output keeps who paused it
        and since when)."""

    async def record_breaker(
        self, output: str, *, router: str, open_since: float | None, error: str | None = None, lapse: float = 60.0
    ) -> None:
        """Record `router`'s breaker for `output` (a lazy commit: it changes rarely). Open (`open_since`, Unix
        time): the record lapses `lapse` seconds from now (in the spool's clock) unless recorded again, so
        a router that died leaves no open breaker behind for long. Closed (None): clears the record only if
        it is this router's, or has lapsed; another router's open breaker stays shown."""

    # --- the operator commands ------------------------------------------------------------------

    def dead_letters(self, where: DeadLetterFilter, limit: int | None = None) -> list[DeadLetter]:
        """The matching dead letters, oldest first."""

    def count_dead_letters(self, where: DeadLetterFilter) -> tuple[int, int | None]:
        """How many dead letters match, and the highest matching id (None when none does)."""

    def purge_dead_letters(self, where: DeadLetterFilter) -> int:
        """Delete the matching dead letters (`where.upto`: only those a person was shown); how many."""

    def replay_dead_letters(self, outcomes: Sequence[Requeue | StillDead], by: str | None = None) -> None:
        """Apply what replaying these dead letters came to, in one commit, in the router's time base: a
        `Requeue` of a kept event's delivery gives the kept event its deliveries (see `Requeue`). A requeued
        dead letter whose event is stored leaves a `Replay` (replayed now, `by` whom) and its attempts to its
        first new delivery, as the module says."""

    def dead_letter_attempts(self, dlids: Sequence[int]) -> dict[int, list[Attempt]]:
        """The attempts kept of the deliveries these dead letters were, oldest first, by dead letter id (one
        with none is absent: dead-lettered before any delivery, or stored by a router before attempts were
        recorded). Only the dead letter's own delivery's: those of earlier deliveries it was replayed from
        are `event_history`'s."""

    def event_history(self, event_id: str) -> EventHistory | None:
        """Everything the spool knows of `event_id` (`event-router trace`, a console): None when it knows
        nothing (never stored, or delivered and forgotten: not kept, no dead letter). A few indexed reads,
        safe beside running routers (a readonly open serves)."""

    def status(self) -> SpoolStatus: ...

    def stored_events(self, event_id: str, limit: int = 20) -> list[StoredEvent]:
        """The events stored under `event_id` (pending or kept), oldest first, each with its pending deliveries.
        Events are not indexed by id: for an operator's look at one event (the console), not the event loop."""

    def retry_now(self, output: str) -> int:
        """Make every delivery of `output` that waits for a retry due now, in one commit in the router's time
        base; how many. A router delivering to it picks them up at its next look (within a second); a paused
        output or an open breaker still holds them."""

    # --- retention (kept events) and `event-router replay` ----------------------------------------------

    async def prune_kept(self, before: float, limit: int) -> int:
        """Forget up to `limit` kept events received before `before` (Unix time) that have no delivery
        pending, oldest first; how many. One small lazy write: the caller repeats it while it returns `limit`.
        PostgreSQL: safe while other routers prune too (one prunes at a time, the others find nothing)."""

    def count_kept(self, since: float, until: float) -> int:
        """How many events the spool keeps received in [since, until) (Unix times), pending ones included."""

    def kept_events(
        self, since: float, until: float, *, after: KeptCursor | None = None, limit: int = 500
    ) -> list[KeptEvent]:
        """Up to `limit` events the spool keeps received in [since, until), pending ones included, in the order
        they were received, from past `after` (the (received, seq) of the last one read)."""

    def requeue_kept(self, items: Sequence[tuple[int, Sequence[NewDelivery]]]) -> set[int]:
        """New deliveries, due now, for kept events (by `KeptEvent.seq`), in one commit in the router's time
        base; the seqs of the events that got theirs (one pruned meanwhile gets none). A delivery with an
        ordering key is stored behind the pending ones of its output and key, as by `store`; none may be
        `refused` (the caller leaves those out)."""
