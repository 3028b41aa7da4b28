"""`event-router`: run the daemon, check and dry-run configs, list plugins and schemas, manage dead letters,
pause, resume and retry outputs, replay kept events, trace an event."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from event_router import __version__
from event_router.api.errors import ConfigError, RouterError
from event_router.api.listen import format_listen
from event_router.config import ConfigErrors, SecretsMode, load_config
from event_router.core.model import RouterConfig
from event_router.plugin_loader import PluginRegistry, load_plugins

if TYPE_CHECKING:
    from event_router.app import App

DEFAULT_CONFIG = "router.toml"


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")


def _config_arg(parser: argparse.ArgumentParser) -> None:
    # None: not given; `main` fills in the default and notes that it is one (`schemas` can do without)
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=None,
        help="router.toml to use (default: $EVENT_ROUTER_CONFIG or ./router.toml)",
    )


def _version_text(registry: PluginRegistry | None) -> str:
    lines = [f"event-router {__version__}"]
    if registry is not None:
        external = sorted({(p.distribution, p.version) for p in registry.plugins if not p.builtin})
        lines += [f"  {dist} {version}" for dist, version in external]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="event-router", description=__doc__)
    parser.add_argument("--version", action="store_true", help="print the version and plugin versions")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run the router")
    _config_arg(p)
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", choices=["auto", "json", "text"], default="auto")

    p = sub.add_parser("check", help="validate router.toml, plugins, schemas and data_dir")
    _config_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    secrets = p.add_mutually_exclusive_group()
    secrets.add_argument(
        "--credentials-dir",
        type=Path,
        metavar="DIR",
        help="read { credential = NAME } secrets from DIR/NAME, as the unit's LoadCredential= would provide them "
        "(default: $CREDENTIALS_DIRECTORY)",
    )
    secrets.add_argument(
        "--no-secrets",
        action="store_true",
        help="check the secret references' form but do not read them (no variable, file or credential needed; "
        "with --connect, only the spool's connection string is read)",
    )
    p.add_argument(
        "--connect",
        action="store_true",
        help="also try the spool: connect to its PostgreSQL database (or look at data_dir) and say what is there",
    )

    p = sub.add_parser(
        "test",
        help="dry run: show what the router would do with events, or run route tests (--expect); sends nothing",
        description="Dry run: validate and route events as the router would, print a JSON report on stdout "
        "(validation, routes, what each output would receive, dead letter) and send nothing. With --expect, "
        "run test files instead: each case is an event and what must happen to it (routes, outputs, payloads, "
        "dead letter); see docs/routing.md, 'Testing routes'.",
        epilog="exit status: 0 when no event would be dead-lettered; 1 when one would "
        "(invalid under the input's validation policy, unknown trigger or no route with dead-letter settings, "
        "or an output that cannot build its request), or when the config or the events file cannot be used. "
        "Each dead-lettered event is named on stderr as FILE[i] (its index in the list), so `event-router test` "
        "can gate a CI job. With --expect, exit status: 0 when every case passes; 1 when one does not (each "
        "mismatch is printed); 2 when a test file or the config cannot be used. Secrets are not read (it sends "
        "nothing): no variable or credential is needed.",
    )
    _config_arg(p)
    p.add_argument(
        "events",
        type=Path,
        nargs="?",
        help='JSON file: {"trigger", "data"} as the Connector posts it (or {"namespace", "data"}), or a list',
    )
    p.add_argument(
        "--expect",
        type=Path,
        nargs="+",
        metavar="FILE",
        help="test files (TOML or JSON) to run: cases of an event and what must happen to it",
    )
    p.add_argument("--input", help="apply this input's validation policy (default: the first input's)")

    p = sub.add_parser(
        "explain",
        help="why each route matches an event or not, and what each delivery would be; sends nothing",
        description="For each route, in order: whether it matches the event, and when it does not, the first "
        "condition that fails and the value the event has there; for the routes that match, what each output "
        "would receive. Sends nothing and reads no secret.",
        epilog="exit status: 0 once explained (whatever the event's fate); 1 when the config or the events file "
        "cannot be used.",
    )
    _config_arg(p)
    p.add_argument(
        "events",
        type=Path,
        help='JSON file: {"trigger", "data"} as the Connector posts it (or {"namespace", "data"}), or a list',
    )
    p.add_argument("--input", help="the input the event comes in on (default: the first)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")

    p = sub.add_parser("plugins", help="list installed plugins")
    p.add_argument(
        "-c", "--config", type=Path, help="accepted like the other commands' and not read: plugins are installed"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")

    p = sub.add_parser("init", help="write a starter router.toml")
    p.add_argument("-o", "--output", type=Path, default=Path(DEFAULT_CONFIG))
    p.add_argument("--force", action="store_true", help="overwrite an existing file")

    p = sub.add_parser("schemas", help="list the event types the router knows")
    _config_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")

    p = sub.add_parser(
        "status",
        help="pending events; per output: pending deliveries and the oldest's age, paused or breaker open, next "
        "retry, last error; dead letters",
    )
    _config_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")

    p = sub.add_parser("reload", help="make a running router re-read its router.toml")
    _config_arg(p)
    p.add_argument("--pid", type=int, help="send SIGHUP to this process instead of using the admin endpoint")

    from event_router.ops.dlq import add_dlq_parser

    add_dlq_parser(sub, _config_arg)

    p = sub.add_parser(
        "output",
        help="pause, resume an output, or retry its waiting deliveries now: every router on the spool follows",
        description="Pause or resume an output, or make its deliveries that wait for a retry due now, beside "
        "running routers (or none): the state is kept in the spool, and every router on it follows within a "
        "second, also after a restart. A paused output starts no delivery (those in flight finish), keeps its "
        "backlog in the spool and counts no attempt.",
    )
    actions = p.add_subparsers(dest="output_command", metavar="ACTION", required=True)
    for name, text in (
        ("pause", "start none of the output's deliveries until it is resumed"),
        ("resume", "deliver again, the backlog first"),
        ("retry", "make the output's deliveries that wait for a retry due now (the console's \"Retry now\")"),
    ):
        action = actions.add_parser(name, help=text)
        _config_arg(action)
        action.add_argument("name", metavar="NAME", help="the output, as named in router.toml")
    from event_router.ops.replay import add_replay_parser

    add_replay_parser(sub, _config_arg)

    from event_router.ops.importer import add_import_parser

    add_import_parser(sub)

    from event_router.ops.tap import add_tap_parser

    add_tap_parser(sub, _config_arg)

    from event_router.ops.trace import add_trace_parser

    add_trace_parser(sub, _config_arg)
    return parser


#: options whose value may be a time ago written with a minus (`--since -2h`), which argparse takes for an option
_TIME_OPTIONS = ("--since", "--until")


def _joined_times(argv: Sequence[str]) -> list[str]:
    """`--since -2h` as `--since=-2h`: argparse reads a value that starts with `-` (and is no plain number) as
    an option, and would refuse the command for a missing value."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in _TIME_OPTIONS and arg[:2].startswith("-") and arg[1:2].isdigit():
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_joined_times(sys.argv[1:] if argv is None else argv))
    if args.version:
        try:
            registry: PluginRegistry | None = load_plugins()
        except RouterError:
            registry = None
        print(_version_text(registry))
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    if "config" in args and args.config is None:
        from_env = os.environ.get("EVENT_ROUTER_CONFIG")
        args.config = Path(from_env or DEFAULT_CONFIG)
        args.config_defaulted = not from_env
    try:
        result: int = COMMANDS[args.command](args)
    except ConfigErrors as exc:
        for error in exc.errors:
            print(f"error: {error}", file=sys.stderr)
        return 1
    except RouterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _reader_gone()
    try:
        sys.stdout.flush()  # what is still buffered meets a closed pipe here, not at interpreter exit
    except BrokenPipeError:
        return _reader_gone()
    return result


def _reader_gone() -> int:
    """stdout's reader went away (`event-router status | head -2`): stop quietly, as `cat` does. Python
    would flush stdout again at exit and print a traceback; pointing it at /dev/null prevents that."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + 13  # killed by SIGPIPE, as the shell reports it


def _load(args: argparse.Namespace, secrets: SecretsMode = "resolve") -> tuple[RouterConfig, PluginRegistry]:
    """router.toml and the plugins. Commands that send nothing load it with `secrets="skip"` (or "spool",
    those that open the spool): an operator's shell has none of the service's variables or credentials, and
    those commands need none (but the PostgreSQL spool's connection string)."""
    registry = load_plugins()
    config = load_config(args.config, registry, secrets=secrets, credentials_dir=getattr(args, "credentials_dir", None))
    return config, registry


def cmd_run(args: argparse.Namespace) -> int:
    import anyio

    from event_router.app import App
    from event_router.ops.logs import setup_logging
    from event_router.runtime import has_uvloop, tune_for_router_process

    as_json = setup_logging(args.log_level or "info", args.log_format)
    try:
        config, registry = _load(args)
        if args.log_level is None:
            as_json = setup_logging(config.log_level, args.log_format)
        # `--log-level` chooses for the life of the process; else a reload applies `[router] log_level`
        app = App(config, registry, follow_log_level=args.log_level is None)
        tune_for_router_process()
        try:
            anyio.run(_serve, app, backend="asyncio", backend_options={"use_uvloop": has_uvloop()})
        except BaseExceptionGroup as group:
            # a start-up failure (port in use, data_dir unwritable) comes wrapped by the task groups: say the
            # cause in one line; anything that is not the router's own error keeps its traceback
            causes = _leaves(group)
            if not all(isinstance(exc, RouterError) for exc in causes):
                raise
            raise causes[0] from None
    except RouterError as exc:
        if as_json:
            # where the log is JSON lines (journald, a file), the failure is a record like every other line,
            # so a log pipeline (`jq`) sees it; `main` still prints the one `error:` line for a person
            import logging

            failures = exc.errors if isinstance(exc, ConfigErrors) else [exc]
            for failure in failures:
                # `key` only when there is one: a file that cannot be read is named by `error` itself
                key = failure.path if isinstance(failure, ConfigError) else ""
                fields = {"key": key, "error": str(failure)} if key else {"error": str(failure)}
                logging.getLogger("event_router").error("router failed to start", extra=fields)
        raise
    return 0


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions `group` holds, however deeply nested."""
    found: list[BaseException] = []
    for exc in group.exceptions:
        found += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return found


async def _serve(app: App) -> None:
    import anyio

    from event_router.runtime import freeze_startup_heap

    async with anyio.create_task_group() as tg:
        await tg.start(app.run)  # returns once the router is ready
        freeze_startup_heap()


def cmd_check(args: argparse.Namespace) -> int:
    from event_router.api.errors import SpoolError
    from event_router.app import load_schemas
    from event_router.core.reachability import dead_routes, outputs_fed_only_by
    from event_router.core.routing import unknown_triggers
    from event_router.core.spool.backend import describe as describe_spool
    from event_router.core.spool.backend import directory_problem
    from event_router.core.spool.backend import probe as probe_spool

    try:
        config, registry = _load(args, ("spool" if args.connect else "skip") if args.no_secrets else "resolve")
    except ConfigErrors as exc:
        if not exc.unresolved:
            raise
        for error in exc.errors:
            print(f"error: {error}", file=sys.stderr)
        if args.no_secrets:  # only the spool's connection string was read: --connect needs it
            hint = (
                "--connect reads the spool's connection string, also with --no-secrets: set it, or leave out --connect"
            )
        else:
            hint = (
                "check reads secrets as the service would: set the variables, give --credentials-dir DIR for "
                "{ credential = ... }, or check everything but their values with --no-secrets"
            )
        print(f"hint: {hint}", file=sys.stderr)
        return 1
    problem = directory_problem(config.data_dir)
    if problem is not None:
        raise ConfigErrors([ConfigError("router.data_dir", problem, file=config.path.name)])
    spool = describe_spool(config.data_dir, config.spool)
    if args.connect:
        try:
            spool = probe_spool(config.data_dir, config.spool)
        except SpoolError as exc:
            key = "router.data_dir" if config.spool.backend == "sqlite" else "router.spool.dsn"
            raise ConfigErrors([ConfigError(key, str(exc), file=config.path.name)]) from None
    if not config.inputs:
        # `run` accepts it (a router that only drains its spool, or delivers replayed dead letters), but
        # as a configuration to deploy it is almost surely a mistake: it would receive nothing
        raise ConfigErrors(
            [ConfigError("inputs", "no input configured: the router would receive nothing", file=config.path.name)]
        )
    schemas = load_schemas(config, registry)
    warnings = [*config.warnings] + [
        f"{config.path.name}: routes[{route.index}].match.{warning}"
        for route in config.routes
        for warning in unknown_triggers(route.match, schemas.triggers(), schemas.is_known)
    ]
    dead = dead_routes(config, schemas.is_known)
    warnings += [
        f'{config.path.name}: routes[{d.route.index}]: route "{d.route.name}" can never match: {d.reason}' for d in dead
    ]
    for output, routes in outputs_fed_only_by(dead, config).items():
        named = ", ".join(f'routes[{r.index}] ("{r.name}")' for r in routes)
        warnings.append(
            f"{config.path.name}: outputs.{output}: only routes that can never match send to this output ({named}): "
            "it receives nothing"
        )
    promised = guarantees(config)
    telemetry = _telemetry_summary(config)
    summary = {
        "config": str(args.config),
        "inputs": {name: i.type for name, i in config.inputs.items()},
        "outputs": {name: o.type for name, o in config.outputs.items()},
        "routes": [r.name for r in config.routes],
        "schemas": len(schemas.triggers()),
        "spool": {"backend": config.spool.backend, "where": spool, "connected": bool(args.connect)},
        "telemetry": telemetry,
        "warnings": warnings,
        "unresolved_secrets": list(config.unresolved_secrets),
        "guarantees": promised,
    }
    if args.json:
        _print_json({"ok": True, **summary})
        return 0
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if config.unresolved_secrets:
        print(
            f"note: {len(config.unresolved_secrets)} secret(s) not read (--no-secrets): "
            + ", ".join(config.unresolved_secrets),
            file=sys.stderr,
        )
    print(
        f"{args.config}: ok: {len(config.inputs)} input(s), {len(config.outputs)} output(s), "
        f"{len(config.routes)} route(s), {summary['schemas']} event schemas"
    )
    print(f"spool ({config.spool.backend}): {spool}" + ("" if args.connect else " (not tried: --connect tries it)"))
    if telemetry is not None:
        print(
            f"telemetry: traces over OTLP/HTTP to {telemetry['endpoint']}, service {telemetry['service_name']!r}, "
            f"sample_ratio {telemetry['sample_ratio']:g}"
            + (f", headers {', '.join(telemetry['headers'])}" if telemetry["headers"] else "")
        )
    for row in promised:
        print(
            f'route "{row["route"]}": {row["input_type"]} "{row["input"]}" ({row["input_guarantee"]}) -> '
            f'{row["output_type"]} "{row["output"]}" ({row["output_guarantee"]})'
        )
    return 0


def _telemetry_summary(config: RouterConfig) -> dict[str, Any] | None:
    """`[router.telemetry]` as `check` shows it (None: off): where spans go, header names but never values."""
    if config.telemetry is None:
        return None
    # imported only when configured; the loader checked the `otel` extra is there
    from event_router.api.secrets import redact_url
    from event_router.core.telemetry import traces_endpoint

    return {
        "endpoint": redact_url(traces_endpoint(config.telemetry)),
        "service_name": config.telemetry.service_name,
        "sample_ratio": config.telemetry.sample_ratio,
        "headers": sorted(config.telemetry.headers),
    }


def guarantees(config: RouterConfig) -> list[dict[str, str]]:
    """Per route, per input that can feed it and per output it sends to: what each promises, as the plugins
    say it (`guarantee()`). Together they are the route's guarantee from the Connector to the receiver; the
    part in between (the spool, retries, dead letters) is the same for every route.

    An input that rebuilds what another one missed (`covers()`) has no lines of its own: its events take
    the covered input's routes, so its guarantee is added to that input's (`webhook (lost while
    unreachable; recovered from the Connector every 5m)`), and `recovered_by` names it."""
    from event_router.core.routing import compile_source_filter

    stand_ins = {
        covered: source for source in config.inputs.values() if (covered := source.plugin.covers()) is not None
    }
    rows = []
    for route in config.routes:
        admits = compile_source_filter(route.match)
        for source in config.inputs.values():
            if source.plugin.covers() is not None or (admits is not None and not admits(source.name)):
                continue
            promise = source.plugin.guarantee()
            stand_in = stand_ins.get(source.name)
            if stand_in is not None:
                promise = f"{promise}; {stand_in.plugin.guarantee()}"
            for name in route.to:
                output = config.outputs[name]
                row = {
                    "route": route.name,
                    "input": source.name,
                    "input_type": source.type,
                    "input_guarantee": promise,
                    "output": output.name,
                    "output_type": output.type,
                    "output_guarantee": output.plugin.guarantee(),
                }
                if stand_in is not None:
                    row["recovered_by"] = stand_in.name
                rows.append(row)
    return rows


def cmd_test(args: argparse.Namespace) -> int:
    if args.expect:
        if args.events is not None:
            print("error: give either an events file or --expect test files, not both", file=sys.stderr)
            return 2
        from event_router.ops.expect import run_test_files

        return run_test_files(args)
    if args.events is None:
        print("error: give an events file (or --expect test files)", file=sys.stderr)
        return 2
    from event_router.api.event import Event
    from event_router.app import load_schemas
    from event_router.core.plan import plan_for_input
    from event_router.ops.dryrun import EventFileError, dry_deliveries, event_source, events_for_input, wire_event

    # it sends nothing, so like the operator commands it reads no secret: a CI job has none of them
    config, registry = _load(args, "skip")
    schemas = load_schemas(config, registry)
    try:
        items, is_list, policy = events_for_input(args.events, config, args.input)
    except EventFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report = []
    failed = 0
    for where, item in items:
        trigger, data = wire_event(item, where)
        event = Event(trigger=trigger, data=data, source=event_source(policy), meta={"dry_run": True})
        plan = plan_for_input(event, policy, config=config, schemas=schemas)
        deliveries = []
        problems: list[str] = []
        if plan.dead_letter is not None:
            problems.append(f"{plan.dead_letter[0]}: {plan.dead_letter[1]}")
        for d in dry_deliveries(plan, config):
            described = {"error": d.error} if d.error is not None else d.described
            if d.error is not None:
                problems.append(f"output {d.output} (route {d.route!r}): {d.error}")
            ordering: dict[str, Any] = {}
            if d.ordering_key is not None:
                ordering = {"ordering_key": d.ordering_key}
            elif d.key_error is not None:  # stored as a dead letter instead of a pending delivery
                ordering = {"error": d.key_error}
                problems.append(d.key_error)
            deliveries.append({"output": d.output, "type": d.type, "route": d.route, **described, **ordering})
        report.append(
            {
                "trigger": event.trigger,
                "validation": {
                    "valid": plan.validation.valid,
                    "schema": plan.validation.schema,
                    "errors": list(plan.validation.errors),
                },
                "routes": [r.name for r in plan.routes],
                "deliveries": deliveries,
                "dead_letter": (
                    {"reason": plan.dead_letter[0], "error": plan.dead_letter[1]} if plan.dead_letter else None
                ),
            }
        )
        for problem in problems:
            print(f"error: {where} ({event.trigger}) would be dead-lettered: {problem}", file=sys.stderr)
        failed += bool(problems)
    _print_json(report if is_list else report[0])
    if failed:
        print(f"test: {failed} of {len(items)} event(s) would be dead-lettered", file=sys.stderr)
        return 1
    print(f"test: {len(items)} event(s), none would be dead-lettered", file=sys.stderr)
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    registry = load_plugins()
    if args.json:
        _print_json([p.to_dict() for p in registry.plugins])
        return 0
    from event_router.ops.show import table

    rows = [
        (
            p.name,
            p.version,
            "built-in" if p.builtin else p.distribution,
            ", ".join([f"input {t}" for t in p.inputs] + [f"output {t}" for t in p.outputs]) or "schemas only",
        )
        for p in registry.plugins
    ]
    print("\n".join(table(("NAME", "VERSION", "DISTRIBUTION", "PROVIDES"), rows)))
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from event_router.ops.init import write_starter

    if args.output.exists() and not args.force:
        print(f"error: {args.output} exists; use --force to overwrite it", file=sys.stderr)
        return 1
    write_starter(args.output)
    print(f"wrote {args.output}; next: event-router check -c {args.output}")
    return 0


def cmd_schemas(args: argparse.Namespace) -> int:
    from event_router.app import load_schemas

    if getattr(args, "config_defaulted", False) and not args.config.exists():
        # no router.toml here and none asked for: the schemas every router knows (no `schemas_dir`)
        print(f"note: no {args.config}: built-in and plugin schemas only", file=sys.stderr)
        schemas = load_schemas(None, load_plugins())
    else:
        config, registry = _load(args, "skip")
        schemas = load_schemas(config, registry)
    rows = schemas.describe()
    if args.json:
        _print_json([{"trigger": t, "title": title, "file": f} for t, title, f in rows])
        return 0
    from event_router.ops.show import table

    print("\n".join(table(("TRIGGER", "TITLE"), [(trigger, title) for trigger, title, _file in rows])))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from event_router.ops.dlq import open_spool
    from event_router.ops.show import age_text, one_line, router_readiness, spool_status, table

    config, _ = _load(args, "spool")  # of the secrets, only the PostgreSQL spool's connection string
    spool = open_spool(config, "readonly")
    try:
        status = spool_status(config, spool)
    finally:
        spool.close()
    # the inputs are the running router's, not the spool's: asked of its /readyz (open, no token)
    status["router"] = router = router_readiness(config)
    if args.json:
        _print_json(status)
        return 0
    print(f"spool: {status['spool']}")
    age = status["oldest_pending_age_seconds"]
    print(f"pending events: {status['pending_events']}" + (f" (oldest {age:.1f}s ago)" if age is not None else ""))
    print()
    if router["inputs"] is None:
        print(f"inputs: unknown: {router['error']}")
    else:
        print(f"router on {router['admin']}: {'ready' if router['ready'] else 'not ready'}")
        input_rows = [
            (name, "yes" if inp["ready"] else "no", one_line(inp["reason"], 1000))
            for name, inp in router["inputs"].items()
        ]
        print("\n".join(table(("INPUT", "READY", "REASON"), input_rows)))
        if router["spool_writable"] is False:
            print(f"spool: not writable: {one_line(router.get('spool_error'))}")
        if router["error"] is not None:
            print(f"warning: {router['error']}")
    rows = []
    for name, output in status["outputs"].items():
        next_retry = None
        if output["next_retry_at"] is not None:
            wait = output["next_retry_in_seconds"]
            when = f"in {wait:.0f}s" if wait >= 0.5 else "due now"
            # due or not, nothing starts while the output is held: say what it waits for
            if output["paused"]:
                when += ", held: paused"
            elif output["breaker"] == "open":
                when += ", held: breaker open until its probe"
            next_retry = f"{output['next_retry_at']} ({when}, attempt {output['next_retry_attempt']})"
        name_shown = name if output["configured"] else f"{name} (not configured)"
        oldest = output["oldest_pending_age_seconds"]
        counts = (
            output["pending"],
            None if oldest is None else age_text(oldest),
            output["max_pending"],
            output["retrying"],
            output["dead_letters"],
        )
        flags = (("paused", output["paused"]), ("breaker open", output["breaker"] == "open"))
        state = ", ".join(flag for flag, on in flags if on) or "active"
        rows.append((name_shown, state, *counts, next_retry, one_line(output["last_error"])))
    if rows:
        print()
        headers = (
            "OUTPUT",
            "STATE",
            "PENDING",
            "OLDEST",
            "MAX PENDING",
            "RETRYING",
            "DEAD LETTERS",
            "NEXT RETRY",
            "LAST ERROR",
        )
        print("\n".join(table(headers, rows, right=(2, 3, 4, 5, 6))))
    for name, output in status["outputs"].items():
        if output["paused"]:
            by = f" by {output['paused_by']}" if output["paused_by"] else ""
            print(f"{name}: paused since {output['paused_at']}{by}; resume: event-router output resume {name}")
        if output["breaker"] == "open":
            print(
                f"{name}: breaker open since {output['breaker_opened_at']} on router {output['breaker_router']}: "
                f"{one_line(output['breaker_error'])}"
            )
    dead = status["dead_letters"]
    print()
    print(f"dead letters: {dead['total']}")
    if dead["counts"]:
        by_reason = [(c["output"], c["reason"], c["count"]) for c in dead["counts"]]
        print("\n".join("  " + line for line in table(("OUTPUT", "REASON", "COUNT"), by_reason, right=(2,))))
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    if args.pid is not None:
        import signal

        try:
            os.kill(args.pid, signal.SIGHUP)
        except OSError as exc:
            print(f"error: cannot signal process {args.pid}: {exc.strerror}", file=sys.stderr)
            return 1
        print(f"sent SIGHUP to {args.pid}; its log says whether the new configuration was applied")
        return 0
    # the running router re-reads the file with its secrets; this only needs where it listens, and its token.
    # It reads the whole file first: one the router would refuse is not sent (nor could it be: where the
    # router listens is in it), so the router logs nothing about it
    try:
        config, _ = _load(args, "admin")
    except ConfigErrors as exc:
        for error in exc.errors:
            print(f"error: {error}", file=sys.stderr)
        print("reload not sent: the running router keeps its configuration", file=sys.stderr)
        return 1
    if config.admin_listen is None:
        print("error: [router.admin] is not configured; use --pid PID (or systemctl reload)", file=sys.stderr)
        return 1
    import urllib.error
    import urllib.request

    from event_router.core.tap import CONFIG_HEADER, config_identity
    from event_router.ops.tap import admin_headers

    where = format_listen(*config.admin_listen)
    # the router refuses (409) when it runs another file: this command reloads only the router of its file
    headers = {CONFIG_HEADER: config_identity(config.path), **admin_headers(config.admin_token)}
    request = urllib.request.Request(f"http://{where}/reload", method="POST", data=b"", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            result = orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        result = orjson.loads(exc.read() or b"{}")
    except OSError as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        why = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
        # the router listens where the file said when it started (or was last reloaded): a file whose admin
        # address changed since cannot reach it, but a signal can
        print(
            f"error: no router answers on {where}, the [router.admin] listen of {config.path} ({why.lower()}).\n"
            "A running router listens at the admin address of the file it was started (or last reloaded) with: "
            "if that was another, reload it with `event-router reload --pid PID` or `systemctl reload "
            "event-router`.",
            file=sys.stderr,
        )
        return 1
    if result.get("reloaded"):
        print("reloaded")
        for warning in result.get("warnings", []):  # applied in part: what waits for the next start
            print(f"warning: {warning}", file=sys.stderr)
        return 0
    if "error" in result:  # not let in (401), or another router's endpoint (409): nothing was read again
        print(f"error: the admin endpoint on {where} refused the reload: {result['error']}", file=sys.stderr)
        return 1
    for error in result.get("errors", []):
        print(f"error: {error}", file=sys.stderr)
    print("reload refused; the router keeps its running configuration", file=sys.stderr)
    return 1


def cmd_output(args: argparse.Namespace) -> int:
    from event_router.core.gate import POLL, UnknownOutput
    from event_router.ops.dlq import open_spool
    from event_router.ops.operator import operator
    from event_router.ops.show import age_text, iso_time

    # the spool's connection string is the one secret read, as for `dlq`
    config, _ = _load(args, "spool")
    name = args.name
    if args.output_command == "retry":
        return _retry_output(config, name)
    pause = args.output_command == "pause"
    spool = open_spool(config, "shared")
    try:
        # an output removed from router.toml while paused can still be resumed (`status` says to): else its
        # pause would wait in the spool for the output to come back, and hold it paused then
        held = not pause and (state := spool.output_states().get(name)) is not None and state.paused
        if name not in config.outputs and not held:
            raise UnknownOutput(name, list(config.outputs))
        state, changed = spool.set_paused(name, pause, f"{operator()} (event-router output {args.output_command})")
        # a resume starts what is due; a delivery that failed before waits for its retry's time
        backlog = spool.status().backlogs.get(name) if not pause and changed else None
    finally:
        spool.close()
    if pause and changed:
        print(
            f"paused {name}: routers on this spool start none of its deliveries within {POLL:g}s (those in flight "
            f"finish); its backlog stays in the spool. Resume it with: event-router output resume {name}"
        )
    elif pause:
        since = "" if state.pause_changed_at is None else f" since {iso_time(state.pause_changed_at)}"
        print(f"{name} is paused already{since}" + (f" by {state.pause_changed_by}" if state.pause_changed_by else ""))
    elif changed:
        print(f"resumed {name}: routers on this spool deliver its backlog again within {POLL:g}s")
        wait = None if backlog is None else backlog.next_retry_in
        if wait is not None and wait > POLL:
            print(
                f"its deliveries that failed before keep the time of their retry (the next in {age_text(wait)}); "
                f"to try them now: event-router output retry {name}"
            )
    else:
        print(f"{name} is not paused")
    return 0


def _retry_output(config: RouterConfig, name: str) -> int:
    """`output retry NAME`: the admin endpoint's `POST /outputs/NAME/retry` (the console's "Retry now"), done
    in the spool as `pause` is, so that it needs no admin endpoint and every router on the spool follows."""
    from event_router.core.gate import POLL, UnknownOutput
    from event_router.ops.dlq import open_spool

    if name not in config.outputs:
        raise UnknownOutput(name, list(config.outputs))
    spool = open_spool(config, "shared")
    try:
        count = spool.retry_now(name)
        state = spool.output_states().get(name)
    finally:
        spool.close()
    if count == 0:
        print(f"no delivery of {name} waits for a retry: nothing made due")
        return 0
    deliveries = "1 delivery" if count == 1 else f"{count} deliveries"
    print(f"made {deliveries} of {name} due now: routers on this spool try them within {POLL:g}s")
    # due, and still held: say by what, as `status` does
    if state is not None and state.paused:
        print(f"{name} is paused: they wait until it is resumed (event-router output resume {name})")
    elif state is not None and state.breaker_open_since is not None:
        print(f"{name}'s breaker is open: they wait for its probe to go through")
    return 0


def _dlq(args: argparse.Namespace) -> int:
    from event_router.ops.dlq import run_dlq

    # replay plans with the outputs' names, never their secrets; the PostgreSQL spool's connection string is
    # the one secret read
    config, registry = _load(args, "spool")
    return run_dlq(args, config, registry)


def _tap(args: argparse.Namespace) -> int:
    from event_router.app import load_schemas
    from event_router.ops.tap import cmd_tap

    config, registry = _load(args, "admin")  # only where the admin endpoint listens, and its token
    # the schemas, to warn about a --trigger that matches none of their triggers
    return cmd_tap(args, config, schemas=load_schemas(config, registry) if args.trigger else None)


def _trace(args: argparse.Namespace) -> int:
    from event_router.ops.trace import run_trace

    config, _ = _load(args, "spool")  # of the secrets, only the PostgreSQL spool's connection string
    return run_trace(args, config)


def _explain(args: argparse.Namespace) -> int:
    from event_router.ops.explain import cmd_explain

    return cmd_explain(args)


def _replay(args: argparse.Namespace) -> int:
    from event_router.ops.replay import run_replay

    # like `dlq replay`: routes with the outputs' names, never their secrets, but the PostgreSQL spool's dsn
    config, registry = _load(args, "spool")
    return run_replay(args, config, registry)


def _import_connector_config(args: argparse.Namespace) -> int:
    from event_router.ops.importer import cmd_import_connector_config

    return cmd_import_connector_config(args)


COMMANDS = {
    "run": cmd_run,
    "check": cmd_check,
    "test": cmd_test,
    "explain": _explain,
    "plugins": cmd_plugins,
    "init": cmd_init,
    "schemas": cmd_schemas,
    "status": cmd_status,
    "reload": cmd_reload,
    "dlq": _dlq,
    "output": cmd_output,
    "replay": _replay,
    "import-connector-config": _import_connector_config,
    "tap": _tap,
    "trace": _trace,
}
