"""`event-router replay`: send kept events (`[router] retention`) received in a time window again.

What replaying means (the current routes, new deliveries with the same event ids) is the core's
(`event_router.core.kept`); here: the arguments, the pace (`--rate`, and room left for live events), the
progress bar and the summary.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import IO, Any

from event_router.core.kept import ReplayReport, Selection, replay
from event_router.core.model import RouterConfig
from event_router.core.routing import trigger_glob_problem
from event_router.core.spool import KeptEvent, NewDelivery, Spool
from event_router.ops.when import TIME_FORMS, parse_when
from event_router.plugin_loader import PluginRegistry

__all__ = ["add_replay_parser", "parse_when", "run_replay"]


def _positive_rate(value: str) -> float:
    try:
        rate = float(value)
    except ValueError:
        rate = 0.0
    if not rate > 0 or rate == float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of events per second above 0")
    return rate


def add_replay_parser(sub: Any, config_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "replay",
        help="send kept events again ([router] retention): new deliveries, same event ids",
        description="Send the events the spool keeps ([router] retention) that were received between --since "
        "and --until again, through the routes in router.toml now: each gets new deliveries with its own event "
        "id, which a running router picks up within a second. Events still pending are replayed too.",
        epilog="Times: " + TIME_FORMS + ". Exit status: 0 replayed (or nothing matched, or --dry-run); 1 the "
        "spool cannot be used; 2 bad arguments; 130 interrupted (the summary says where to go on from).",
    )
    config_arg(p)
    p.add_argument("--since", required=True, metavar="T", help="received at or after T")
    p.add_argument("--until", metavar="T", help="received before T (default: now)")
    p.add_argument(
        "--match",
        metavar="PATTERN",
        help="only triggers this glob matches, as in a route's match.trigger (transport.*)",
    )
    p.add_argument(
        "--output",
        metavar="NAME",
        help="re-deliver only to this output (of what the current routes send the events to)",
    )
    p.add_argument(
        "--rate", type=_positive_rate, metavar="N", help="replay at most N events per second (default: no limit)"
    )
    p.add_argument("--dry-run", action="store_true", help="count what would be replayed; send nothing")


def run_replay(args: argparse.Namespace, config: RouterConfig, registry: PluginRegistry) -> int:
    from event_router.app import load_schemas
    from event_router.ops.dlq import open_spool
    from event_router.ops.show import iso_time

    now = time.time()
    try:
        since = _when("--since", args.since, now)
        until = now if args.until is None else _when("--until", args.until, now)
    except ValueError as exc:
        return _usage(str(exc))
    if since >= until:
        return _usage(f"--since ({iso_time(since)}) must be before --until ({iso_time(until)})")
    if args.output is not None and args.output not in config.outputs:
        configured = ", ".join(config.outputs) or "none"
        return _usage(f"--output {args.output}: no output of that name in {config.path.name} (outputs: {configured})")
    problem = None if args.match is None else trigger_glob_problem(args.match)
    if problem is not None:
        return _usage(f"--match: {problem}")
    if config.retention == 0:
        print(
            f"note: {config.path.name} keeps nothing ([router] retention is 0): only events still pending, or kept "
            "while retention was on, can be replayed",
            file=sys.stderr,
        )
    selection = Selection(since=since, until=until, match=args.match, output=args.output)
    window = f"received {iso_time(since)} to {iso_time(until)}"
    # beside a running router, like `dlq`: its workers look at the spool every second
    spool = open_spool(config, "readonly" if args.dry_run else "shared")
    bar = ProgressBar(sys.stdout)
    report = ReplayReport()
    try:
        pacer = None if args.dry_run else Pacer(spool, config, args.rate, on_wait=lambda why: bar.wait(report, why))
        try:
            replay(
                spool,
                config,
                load_schemas(config, registry),
                selection,
                dry_run=args.dry_run,
                gate=pacer,
                progress=bar.show,
                report=report,
            )
        except KeyboardInterrupt:
            bar.clear()
            print(_summary(report, window, dry_run=args.dry_run, interrupted=True))
            rest = _rest(spool, selection, report)
            if rest is not None and not args.dry_run:
                print(f"to replay the rest: event-router replay --since {_iso_exact(rest)} ...", file=sys.stderr)
            return 130
    finally:
        spool.close()
    bar.clear()
    print(_summary(report, window, dry_run=args.dry_run))
    return 0


def _when(flag: str, text: str, now: float) -> float:
    try:
        return parse_when(text, now)
    except ValueError as exc:
        raise ValueError(f"{flag}: {exc}") from None


def _usage(message: str) -> int:
    print(f"error: replay {message}", file=sys.stderr)
    return 2


def _summary(report: ReplayReport, window: str, *, dry_run: bool, interrupted: bool = False) -> str:
    """One line, printed always: what was (or would be) replayed, and why the rest of the window was not."""
    outputs = ", ".join(f"{name} {count:,}" for name, count in sorted(report.deliveries.items()))
    deliveries = sum(report.deliveries.values())
    done = "would replay" if dry_run else "interrupted after replaying" if interrupted else "replayed"
    line = f"{'dry run: ' if dry_run else ''}{done} {report.replayed:,} of {report.total:,} kept event(s) {window}"
    if report.replayed:
        line += f": {deliveries:,} deliver{'y' if deliveries == 1 else 'ies'} ({outputs})"
    skipped = [
        f"{count:,} {why}"
        for count, why in (
            (report.other_trigger, "other triggers"),
            (report.unrouted, "routed nowhere now"),
            (report.pruned, "pruned meanwhile"),
            (report.unkeyed, "deliveries without the field their ordering_key names"),
        )
        if count
    ]
    if skipped:
        line += f"; not replayed: {', '.join(skipped)}"
    return line + ("; nothing was sent" if dry_run else "")


def _rest(spool: Spool, selection: Selection, report: ReplayReport) -> float | None:
    """Received time of the first event an interrupted replay has not replayed (None: none is left)."""
    if report.waiting is not None:
        return report.waiting
    following = spool.kept_events(selection.since, selection.until, after=report.cursor, limit=1)
    return following[0].received if following else None


def _iso_exact(timestamp: float) -> str:
    """UTC ISO 8601 to the microsecond, `--since` of an interrupted replay's rest: a microsecond early, as
    the event received at `timestamp` must be in the rest, whatever the float's last digits round to."""
    moment = datetime.fromtimestamp(0, UTC) + timedelta(microseconds=math.floor(timestamp * 1_000_000) - 1)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


class Pacer:
    """How many of the events ready may be replayed now (`event_router.core.kept.Gate`): at most `--rate` a
    second, and leaving room for live events.

    Room: a replay keeps the spool's pending events under half of `max_pending_events`, and each output's
    pending deliveries under half its `max_pending`, waiting for the router to deliver while they are not.
    Past the first the inputs would refuse events (a webhook's 503 is an event lost), past the second the
    output's new deliveries would be parked as dead letters. The counts are read from the spool at most every
    LOOK seconds, with what this replay added since.
    """

    LOOK = 1.0
    WAIT = 0.5

    def __init__(
        self, spool: Spool, config: RouterConfig, rate: float | None, *, on_wait: Callable[[str], None]
    ) -> None:
        self.spool = spool
        self.rate = rate
        self.on_wait = on_wait
        self.max_events = max(1, config.max_pending_events // 2)
        self.max_deliveries = {name: max(1, out.max_pending // 2) for name, out in config.outputs.items()}
        self.started = time.monotonic()
        self.sent = 0
        self._read_at = -float("inf")
        self._events = 0
        self._deliveries: dict[str, int] = {}

    def __call__(self, ready: Sequence[tuple[KeptEvent, list[NewDelivery]]]) -> int:
        wanted = len(ready)
        if self.rate is not None:
            # a tenth of a second's worth per commit at most, each sent when the rate allows it
            wanted = min(wanted, max(1, int(self.rate / 10)))
            time.sleep(max(0.0, self.started + self.sent / self.rate - time.monotonic()))
        while True:
            if time.monotonic() - self._read_at >= self.LOOK:
                self._look()
            count = self._fitting(ready[:wanted])
            if count or (self._events == 0 and not any(self._deliveries.values())):
                count = max(1, count)  # one event more than an empty spool has room for goes all the same
                break
            self.on_wait(
                f"waiting for the router to deliver: {self._events:,} events pending "
                f"(a replay leaves half of max_pending_events and of each output's max_pending to live events)"
            )
            time.sleep(self.WAIT)
            self._read_at = -float("inf")
        for _, deliveries in ready[:count]:
            for d in deliveries:
                self._deliveries[d.output] = self._deliveries.get(d.output, 0) + 1
        self._events += count
        self.sent += count
        return count

    def _look(self) -> None:
        status = self.spool.status()
        self._events = status.pending_events
        self._deliveries = {name: backlog.pending for name, backlog in status.backlogs.items()}
        self._read_at = time.monotonic()

    def _fitting(self, ready: Sequence[tuple[KeptEvent, list[NewDelivery]]]) -> int:
        """How many of `ready`, from the front, fit in the room left."""
        added: dict[str, int] = {}
        for count, (_, deliveries) in enumerate(ready):
            if self._events + count + 1 > self.max_events:
                return count
            for d in deliveries:
                added[d.output] = added.get(d.output, 0) + 1
                limit = self.max_deliveries.get(d.output)
                if limit is not None and self._deliveries.get(d.output, 0) + added[d.output] > limit:
                    return count
        return len(ready)


class ProgressBar:
    """A bar on `stream` redrawn in place, only when it is a terminal (nothing otherwise): read / total,
    replayed, rate, and why it waits. At most ten redraws a second."""

    WIDTH = 24
    #: off a terminal, how often a replay that waits for room says so
    WAIT_NOTE = 30.0

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.started = time.monotonic()
        self._drawn = 0.0
        self._shown = False
        self._next_note = 0.0

    def show(self, report: ReplayReport, note: str = "") -> None:
        now = time.monotonic()
        if not self.enabled or (now - self._drawn < 0.1 and not note):
            return
        self._drawn = now
        share = report.examined / report.total if report.total else 1.0
        filled = min(self.WIDTH, int(share * self.WIDTH))
        rate = report.replayed / max(now - self.started, 1e-6)
        line = (
            f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {share:4.0%} {report.examined:,}/{report.total:,} read, "
            f"{report.replayed:,} replayed ({rate:,.0f}/s){'  ' + note if note else ''}"
        )
        columns = shutil.get_terminal_size((100, 24)).columns
        self.stream.write("\r\033[K" + line[: max(10, columns - 1)])
        self.stream.flush()
        self._shown = True

    def wait(self, report: ReplayReport, why: str) -> None:
        """The replay waits for room: on the bar, or (off a terminal) on stderr, once every WAIT_NOTE seconds."""
        if self.enabled:
            self.show(report, why)
            return
        now = time.monotonic()
        if now >= self._next_note:
            self._next_note = now + self.WAIT_NOTE
            print(f"replay: {why}", file=sys.stderr, flush=True)

    def clear(self) -> None:
        if self._shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._shown = False
