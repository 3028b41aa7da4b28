"""`event-router tap`: follow a running router's events and delivery attempts live (its admin endpoint's
`GET /tap`, server-sent events), a line each, until interrupted."""

from __future__ import annotations

import argparse
import http.client
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import orjson

from event_router.api.listen import format_listen
from event_router.api.secrets import Secret
from event_router.core.model import RouterConfig
from event_router.core.routing import pattern_matches_no_known_trigger
from event_router.core.tap import CONFIG_HEADER, DELIVERY_OUTCOMES, EVENT_OUTCOMES, config_identity
from event_router.core.validation import SchemaRegistry


def admin_headers(token: Secret | None) -> dict[str, str]:
    """What a command sends the admin endpoint to be let in: its `[router.admin] token`, if it has one."""
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def add_tap_parser(sub: Any, config_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "tap",
        help="follow a running router's events and delivery attempts live",
        description="Print each event a running router takes in and each delivery attempt it records, as they "
        "happen, until interrupted (Ctrl-C). Needs [router.admin]. Events' data is masked unless --unmask is "
        "given and the router allows it ([router.admin] unmask = true).",
        epilog="A tap that reads slower than records come is told how many it missed ('dropped'); the router "
        "never waits for it.",
    )
    config_arg(p)
    p.add_argument("--trigger", action="append", default=[], metavar="GLOB", help="e.g. 'transport.**' (repeatable)")
    p.add_argument("--route", action="append", default=[], help="only this route's events and deliveries")
    p.add_argument("--output", action="append", default=[], help="only this output's events and deliveries")
    p.add_argument(
        "--outcome",
        action="append",
        default=[],
        choices=EVENT_OUTCOMES + DELIVERY_OUTCOMES,
        help="only records with this outcome (repeatable)",
    )
    p.add_argument("--unmask", action="store_true", help="show events' data as received (if the router allows it)")
    p.add_argument("--data", action="store_true", help="print each event's data (masked unless --unmask)")
    p.add_argument("--json", action="store_true", help="one JSON object per line, as the router sends them")


def trigger_warnings(patterns: Sequence[str], schemas: SchemaRegistry) -> list[str]:
    """A warning per `--trigger` pattern that matches no trigger the router's schemas know (a typo, usually),
    for stderr: such a pattern is still used, as events of triggers without a schema exist."""
    known = schemas.triggers()
    return [
        f"warning: --trigger {pattern}: {said} (tapping it all the same: events of a trigger without a schema may come)"
        for pattern in patterns
        if (said := pattern_matches_no_known_trigger(pattern, known, schemas.is_known)) is not None
    ]


def cmd_tap(
    args: argparse.Namespace, config: RouterConfig, out: TextIO = sys.stdout, schemas: SchemaRegistry | None = None
) -> int:
    """`schemas`: the router's, to warn about a `--trigger` that matches none of their triggers."""
    if config.admin_listen is None:
        print("error: [router.admin] is not configured: the tap reads the admin endpoint", file=sys.stderr)
        return 1
    warnings = [] if schemas is None else trigger_warnings(args.trigger, schemas)
    query = [("trigger", t) for t in args.trigger] + [("route", r) for r in args.route]
    query += [("output", o) for o in args.output] + [("outcome", o) for o in args.outcome]
    if args.unmask:
        query.append(("unmask", "1"))
    where = format_listen(*config.admin_listen)
    host, port = config.admin_listen
    connection = http.client.HTTPConnection(host, port, timeout=60)
    try:
        headers = {"Accept": "text/event-stream", **admin_headers(config.admin_token)}
        connection.request("GET", "/tap?" + urllib.parse.urlencode(query), headers=headers)
        response = connection.getresponse()
    except OSError as exc:
        print(f"error: no router answers on {where}: {exc}", file=sys.stderr)
        return 1
    problem = other_router(response.getheader(CONFIG_HEADER), config.path, where, response.status)
    if problem is not None:
        connection.close()
        print(f"error: {problem}", file=sys.stderr)
        return 1
    if response.status != 200:
        body = response.read()
        try:
            error = orjson.loads(body).get("error", body.decode(errors="replace"))
        except orjson.JSONDecodeError:
            error = body.decode(errors="replace")
        print(f"error: the router refused the tap ({response.status}): {error}", file=sys.stderr)
        return 1
    # once the router took the tap (a pattern it refuses is said as its refusal, not warned about)
    for warning in warnings:
        print(warning, file=sys.stderr)
    print(f"tapping {where} (Ctrl-C to stop)", file=sys.stderr)
    try:
        for record in _records(response):
            out.write((orjson.dumps(record).decode() if args.json else line(record, data=args.data)) + "\n")
            out.flush()
    except (OSError, http.client.HTTPException) as exc:
        print(f"error: the tap ended: {exc}", file=sys.stderr)
        return 1
    finally:
        connection.close()
    print("the router closed the tap (it stopped)", file=sys.stderr)
    return 0


def other_router(answered: str | None, config: Path, where: str, status: int) -> str | None:
    """Why the router answering on `where` is not the one of `config` (None when it is): the admin
    endpoint's answer names the router.toml it runs (`CONFIG_HEADER`). A refusal that names none (a wrong
    token, 401, is refused before the router says who it is) is left to say what it says."""
    if answered is None:
        if status != 200:
            return None
        return (
            f"the router on {where} does not say which router.toml it runs (an event-router older than this "
            f"command, or another program?): not tapping it for {config}"
        )
    if answered == config_identity(config):
        return None
    return (
        f"the router on {where} runs {urllib.parse.unquote(answered)}, not {config.resolve()}: another router "
        f"listens where {config.name} says ([router.admin] listen); stop it, or tap it with its own file"
    )


def _records(response: http.client.HTTPResponse) -> Iterator[dict[str, Any]]:
    """The JSON of each `data:` line; comments (keep-alives) are skipped. Ends when the router closes."""
    while True:
        raw = response.readline()
        if not raw:
            return
        if raw.startswith(b"data: "):
            yield orjson.loads(raw[6:])


def line(record: dict[str, Any], *, data: bool = False) -> str:
    """One record for people: time, kind, what, outcome."""
    when = time.strftime("%H:%M:%S", time.localtime(record.get("time", time.time())))
    when += f".{int(record.get('time', 0) * 1000) % 1000:03d}"
    kind = record["type"]
    if kind == "dropped":
        return f"{when} -- {record['count']} records dropped: {record['why']}"
    if kind == "event":
        event_id = record["event_id"] or "-"  # an undecodable body never became an event
        text = f"{when} event    {record['outcome']:<13} {record['trigger']} {event_id} from {record['input']}"
        if record["routes"]:
            text += f" -> {', '.join(record['outputs']) or 'nothing'} (routes: {', '.join(record['routes'])})"
        if "dead_letter" in record:
            text += f" dead letter {record['dead_letter']}"
        if record.get("errors"):
            text += f": {'; '.join(record['errors'])}"
        if data:
            text += " data=" + orjson.dumps(record.get("data")).decode()
        return text
    text = (
        f"{when} delivery {record['outcome']:<13} {record['output']} {record['event_id']} "
        f"(delivery {record['delivery']}, attempt {record['attempt']}, route {record['route']})"
    )
    if "retry_in" in record:
        text += f" retry in {record['retry_in']:g}s"
    if record.get("dead_letter") is not None:
        text += f" dead letter {record['dead_letter']}"
    if record.get("error"):
        text += f": {record['error']}"
    return text
