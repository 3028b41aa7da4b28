"""`event-router dlq list|show|replay|purge`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import orjson

from event_router.api.errors import RouterError, did_you_mean
from event_router.core.deadletters import replay
from event_router.core.model import RouterConfig
from event_router.core.routing import pattern_matches_no_known_trigger
from event_router.core.spool import DEAD_LETTER_REASONS, DeadLetter, DeadLetterFilter, OpenMode, Spool, backend
from event_router.ops.show import dead_letter_json, iso_time, one_line, table
from event_router.plugin_loader import PluginRegistry

__all__ = ["add_dlq_parser", "open_spool", "run_dlq"]


def open_spool(config: RouterConfig, mode: OpenMode) -> Spool:
    """The spool of `config`, opened for an operator command (`shared` to write, `readonly` to read); a
    RouterError naming the key (data_dir, spool.dsn) when the router has not made one there."""
    key = "router.data_dir" if config.spool.backend == "sqlite" else "router.spool.dsn"
    try:
        return backend.open_spool(config.data_dir, mode, config.spool)
    except backend.SpoolMissing as exc:
        raise RouterError(f"{exc} ({key}: has the router run with this {config.path.name}?)") from None


def _timestamp(value: str) -> float:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO 8601 time like 2026-11-26T10:00:00Z") from None


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of at least 1")
    return number


def add_dlq_parser(sub: Any, config_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    dlq = sub.add_parser("dlq", help="inspect, replay and purge dead letters")
    actions = dlq.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)
    for name, text in (
        ("list", "list dead letters"),
        ("show", "show dead letters in full (event, payload, error, the attempts of their delivery)"),
        ("replay", "put dead letters back into the pipeline"),
        ("purge", "delete dead letters for good"),
    ):
        p = actions.add_parser(name, help=text)
        config_arg(p)
        p.add_argument("ids", nargs="*", type=int, help="dead letter ids")
        p.add_argument("--output", help="only those that failed at this output")
        p.add_argument("--trigger", help="only this trigger")
        p.add_argument("--reason", help=f"only this reason ({', '.join(DEAD_LETTER_REASONS)})")
        p.add_argument("--since", type=_timestamp, help="dead-lettered at or after (ISO 8601)")
        p.add_argument("--until", type=_timestamp, help="dead-lettered before (ISO 8601)")
        if name in ("replay", "purge"):
            p.add_argument("--all", action="store_true", help="act on every dead letter (needed without filters)")
        if name == "list":
            p.add_argument("--limit", type=_positive, default=100, help="list at most this many, oldest first (100)")
            p.add_argument("--json", action="store_true", help="print JSON instead of text")
        if name == "purge":
            p.add_argument("--dry-run", action="store_true", help="list what would be purged; delete nothing")
            p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
            p.description = (
                "Delete dead letters for good. On a terminal it shows how many match and asks first (unless "
                "--yes). Off a terminal, ids or a filter are taken as meant; --all there also needs --yes."
            )
        # the same for every command, as docs/operating.md tabulates them
        p.epilog = {
            "list": "exit status: 0 listed (or a filter matched nothing); 1 an id matched no dead letter; 2 refused "
            "(an --output or --reason no dead letter can have)",
            "show": "exit status: 0 shown (or a filter matched nothing); 1 an id matched no dead letter; 2 refused "
            "(an --output or --reason no dead letter can have)",
            "replay": "exit status: 0 replayed (or a filter matched nothing); 1 an id matched no dead letter, or a "
            "dead letter is still invalid or unrouted, or was skipped; 2 refused (no ids, filter or --all; an "
            "--output or --reason no dead letter can have)",
            "purge": "exit status: 0 purged (or a filter matched nothing, or --dry-run); 1 an id matched no dead "
            "letter, or not confirmed; 2 refused",
        }[name]


def _dead_letter_table(rows: Sequence[DeadLetter]) -> list[str]:
    return table(
        ("ID", "DEAD-LETTERED", "REASON", "OUTPUT", "ROUTE", "TRIGGER", "ATTEMPTS", "ERROR"),
        [
            (
                r.dlid,
                dead_letter_json(r)["created_at"],
                r.reason,
                r.output,
                r.route,
                r.trigger,
                r.attempts,
                one_line(r.error),
            )
            for r in rows
        ],
        right=(0, 6),
    )


def _selection(args: argparse.Namespace, ids: Sequence[int] | None = None) -> str:
    """The dead letters a command acts on, in the words of its arguments (`ids`: only these of its ids)."""
    ids = args.ids if ids is None else ids
    parts = []
    if ids:
        parts.append(f"id{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))}")
    for flag in ("output", "trigger", "reason"):
        if getattr(args, flag) is not None:
            parts.append(f"--{flag} {getattr(args, flag)}")
    for flag in ("since", "until"):
        if getattr(args, flag) is not None:
            parts.append(f"--{flag} {iso_time(getattr(args, flag))}")
    return " ".join(parts) if parts else "all of them"


def _filter(args: argparse.Namespace) -> DeadLetterFilter:
    return DeadLetterFilter(
        ids=tuple(args.ids),
        output=args.output,
        trigger=args.trigger,
        reason=args.reason,
        since=args.since,
        until=args.until,
    )


def run_dlq(args: argparse.Namespace, config: RouterConfig, registry: PluginRegistry) -> int:
    where = _filter(args)
    empty = where == DeadLetterFilter()
    if args.dlq_command in ("replay", "purge") and empty and not args.all:
        print(f"error: dlq {args.dlq_command} needs ids, a filter, or --all", file=sys.stderr)
        return 2
    # beside a running router, once it exists (a spool of an older schema is refused: see OpenMode)
    spool = open_spool(config, "shared")
    try:
        refused = _unknown_name(args, config, spool)
        if refused is not None:
            print(f"error: {refused}", file=sys.stderr)
            return 2
        if spool.count_dead_letters(where)[0] == 0:
            return _nothing_matches(args, config, registry)
        # ids that name no dead letter (of the selection) are an error, as `rm` says of a missing file: the
        # others are acted on all the same, and the exit status is 1
        missing = _missing_ids(spool, where)
        if missing:
            print(f"error: no dead letter matches ({_selection(args, missing)})", file=sys.stderr)
        done = _act(args, config, registry, spool, where, everything=empty)
        return done if done != 0 or not missing else 1
    finally:
        spool.close()


def _act(
    args: argparse.Namespace,
    config: RouterConfig,
    registry: PluginRegistry,
    spool: Spool,
    where: DeadLetterFilter,
    *,
    everything: bool,
) -> int:
    """The command on a selection that matches at least one dead letter; its exit status."""
    if args.dlq_command == "list":
        rows = spool.dead_letters(where, args.limit)
        if args.json:
            sys.stdout.write(
                orjson.dumps([dead_letter_json(r) for r in rows], option=orjson.OPT_INDENT_2).decode() + "\n"
            )
            return 0
        print("\n".join(_dead_letter_table(rows)))
        total, _ = spool.count_dead_letters(where)
        if total > len(rows):
            print(f"({len(rows)} of {total} shown, oldest first; --limit N for more)", file=sys.stderr)
        return 0
    if args.dlq_command == "show":
        rows = spool.dead_letters(where)
        attempts = spool.dead_letter_attempts([r.dlid for r in rows])
        shown = [dead_letter_json(r, full=True, attempts=attempts.get(r.dlid, ())) for r in rows]
        sys.stdout.write(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
        return 0
    if args.dlq_command == "purge":
        return _purge(args, spool, where, everything=everything)
    from event_router.app import load_schemas

    def progress(done: int, total: int) -> None:
        if total > 500:
            print(f"\rreplayed {done}/{total}", end="", file=sys.stderr, flush=True)

    from event_router.ops.operator import operator

    # who replayed is recorded with each replay (`trace` shows it), as who paused an output is
    by = f"{operator()} (event-router dlq replay)"
    report = replay(spool, config, load_schemas(config, registry), where, progress=progress, by=by)
    if report.replayed + report.dead_again + report.skipped > 500:
        print(file=sys.stderr)
    print(f"replayed {report.replayed}, still invalid or unrouted {report.dead_again}, skipped {report.skipped}")
    for dlid, why in report.problems or ():
        print(f"  {dlid}: {why}", file=sys.stderr)
    return 0 if not report.problems and not report.dead_again else 1


def _unknown_name(args: argparse.Namespace, config: RouterConfig, spool: Spool) -> str | None:
    """Why `--output` or `--reason` names nothing a dead letter can have (a typo, usually), with a guess; None
    when both are fine. An output router.toml no longer has, or a reason of an older router's, is fine while
    dead letters have it."""

    def unheld(where: DeadLetterFilter) -> bool:
        return spool.count_dead_letters(where)[0] == 0

    output, reason = args.output, args.reason
    if output is not None and output not in config.outputs and unheld(DeadLetterFilter(output=output)):
        held = {count.output for count in spool.status().dead_letters if count.output is not None}
        known = sorted({*config.outputs, *held})
        return (
            f"no output named {output!r} in {config.path.name} or among the dead letters "
            f"(outputs: {', '.join(known) or 'none'}){did_you_mean(output, known)}"
        )
    if reason is not None and reason not in DEAD_LETTER_REASONS and unheld(DeadLetterFilter(reason=reason)):
        reasons = ", ".join(DEAD_LETTER_REASONS)
        return f"no dead letter reason {reason!r} (reasons: {reasons}){did_you_mean(reason, DEAD_LETTER_REASONS)}"
    return None


def _missing_ids(spool: Spool, where: DeadLetterFilter) -> list[int]:
    """The ids of `where` that match no dead letter under its filters, in the order given."""
    if not where.ids:
        return []
    found = {row.dlid for row in spool.dead_letters(where)}
    return [dlid for dlid in dict.fromkeys(where.ids) if dlid not in found]


#: what each command says it did not do when nothing matches
_NOTHING_DONE = {"replay": "; nothing replayed", "purge": "; nothing purged"}


def _nothing_matches(args: argparse.Namespace, config: RouterConfig, registry: PluginRegistry) -> int:
    """Say that the selection matches no dead letter, the same way for every `dlq` command: an error (exit
    status 1) when it names ids (they name no dead letter: replayed, purged, or a typo), else a note (exit
    status 0: nothing to do is no failure for a script that runs the command on a schedule). JSON output
    is still JSON: an empty list. A `--trigger` that no schema knows is warned about with a guess."""
    if args.trigger is not None and "*" in args.trigger:
        print(f"warning: --trigger {args.trigger}: dlq takes a trigger as written, not a glob", file=sys.stderr)
    elif args.trigger is not None:
        from event_router.app import load_schemas

        schemas = load_schemas(config, registry)
        said = pattern_matches_no_known_trigger(args.trigger, schemas.triggers(), schemas.is_known)
        if said is not None:
            print(f"warning: --trigger {args.trigger}: {said}", file=sys.stderr)
    if args.dlq_command == "show" or (args.dlq_command == "list" and args.json):
        sys.stdout.write("[]\n")
    said = f"no dead letter matches ({_selection(args)}){_NOTHING_DONE.get(args.dlq_command, '')}"
    if args.ids:
        print(f"error: {said}", file=sys.stderr)
        return 1
    print(said, file=sys.stderr)
    return 0


def _purge(args: argparse.Namespace, spool: Spool, where: DeadLetterFilter, *, everything: bool) -> int:
    count, highest = spool.count_dead_letters(where)
    selection = _selection(args)
    if args.dry_run:
        print("\n".join(_dead_letter_table(spool.dead_letters(where))))
        print(f"dry run: would purge {count} dead letter(s) ({selection}); nothing was deleted")
        return 0
    if not args.yes:
        if sys.stdin.isatty():
            print(
                f"purge {count} dead letter(s) ({selection})? They cannot be replayed afterwards. [y/N] ",
                end="",
                file=sys.stderr,
                flush=True,
            )
            if sys.stdin.readline().strip().lower() not in ("y", "yes"):
                print("not confirmed; nothing purged", file=sys.stderr)
                return 1
        elif everything:
            print(
                f"error: dlq purge --all would delete all {count} dead letter(s) and there is no terminal to "
                "confirm on: add --yes (or see them first with --dry-run)",
                file=sys.stderr,
            )
            return 2
    # only those counted (and confirmed): dead letters stored meanwhile by a running router stay
    print(f"purged {spool.purge_dead_letters(replace(where, upto=highest))} dead letter(s)")
    return 0
