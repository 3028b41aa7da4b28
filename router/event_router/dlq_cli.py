"""`event-router dlq list|show|replay|purge`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson

from event_router.config import RouterConfig
from event_router.deadletters import list_dead_letters, purge, replay, spool_status, to_json
from event_router.plugins import PluginRegistry
from event_router.spool import DeadLetterFilter, Spool

__all__ = ["add_dlq_parser", "run_dlq", "spool_status"]


def _timestamp(value: str) -> float:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO 8601 time like 2026-11-26T10:00:00Z") from None


def add_dlq_parser(sub: Any, config_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    dlq = sub.add_parser("dlq", help="inspect, replay and purge dead letters")
    actions = dlq.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)
    for name, text in (
        ("list", "list dead letters"),
        ("show", "show dead letters in full (event, payload, error)"),
        ("replay", "put dead letters back into the pipeline"),
        ("purge", "delete dead letters for good"),
    ):
        p = actions.add_parser(name, help=text)
        config_arg(p)
        p.add_argument("ids", nargs="*", type=int, help="dead letter ids")
        p.add_argument("--output", help="only those that failed at this output")
        p.add_argument("--trigger", help="only this trigger")
        p.add_argument("--reason", help="only this reason (validation, permanent, retries_exhausted...)")
        p.add_argument("--since", type=_timestamp, help="dead-lettered at or after (ISO 8601)")
        p.add_argument("--until", type=_timestamp, help="dead-lettered before (ISO 8601)")
        if name in ("replay", "purge"):
            p.add_argument("--all", action="store_true", help="act on every dead letter (needed without filters)")
        if name == "list":
            p.add_argument("--limit", type=int, default=100)
            p.add_argument("--json", action="store_true")


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
    spool = Spool(config.data_dir / "spool.db")
    spool.open()
    try:
        assert spool._reader is not None
        if args.dlq_command == "list":
            rows = list_dead_letters(spool._reader, where, args.limit)
            if args.json:
                sys.stdout.write(orjson.dumps([to_json(r) for r in rows], option=orjson.OPT_INDENT_2).decode() + "\n")
            else:
                for r in rows:
                    item = to_json(r)
                    print(
                        f"{item['id']:>6}  {item['created_at']}  {item['reason']:<17} {r.output or '-':<12} "
                        f"{r.trigger or '-'}  {(r.error or '')[:80]}"
                    )
            return 0
        if args.dlq_command == "show":
            rows = list_dead_letters(spool._reader, where)
            if not rows:
                print("error: no dead letter matches", file=sys.stderr)
                return 1
            sys.stdout.write(orjson.dumps([to_json(r, full=True) for r in rows], option=orjson.OPT_INDENT_2).decode())
            sys.stdout.write("\n")
            return 0
        if args.dlq_command == "purge":
            print(f"purged {purge(spool, where)} dead letter(s)")
            return 0
        from event_router.app import load_schemas

        def progress(done: int, total: int) -> None:
            if total > 500:
                print(f"\rreplayed {done}/{total}", end="", file=sys.stderr, flush=True)

        report = replay(spool, config, load_schemas(config, registry), where, progress=progress)
        if report.replayed + report.dead_again + report.skipped > 500:
            print(file=sys.stderr)
        print(f"replayed {report.replayed}, still invalid or unrouted {report.dead_again}, skipped {report.skipped}")
        for dlid, why in report.problems or ():
            print(f"  {dlid}: {why}", file=sys.stderr)
        return 0 if not report.problems and not report.dead_again else 1
    finally:
        spool.close()
