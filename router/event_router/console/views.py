"""The console's pages and actions (see the package's doc). Each GET renders a template; each POST does one
thing through the running router and redirects to a page that says what it did (POST, redirect, GET)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, urlencode

import anyio
import jinja2
import orjson
from aiohttp import web

from event_router import __version__
from event_router.api.errors import SpoolError
from event_router.console import events, security
from event_router.console.configview import config_text
from event_router.core.gate import UnknownOutput
from event_router.core.routing import trigger_glob_problem
from event_router.core.spool import DeadLetter, DeadLetterFilter, Spool
from event_router.ops.show import iso_time, spool_status
from event_router.ops.when import parse_when

if TYPE_CHECKING:
    from event_router.console.host import ConsoleHost

_T = TypeVar("_T")

HERE = Path(__file__).resolve().parent
#: dead letters the dead letters page lists at most, and one action takes at most
PAGE_SIZE = 100
MAX_SELECTED = 500
#: the overview's recent failures: dead letters among the newest ids
RECENT = 10
#: seconds between samples of the counters the overview's rates come from, and the window they span
RATE_SAMPLE = 5.0
RATE_WINDOW = 60.0
#: the events page's window when none is given
DEFAULT_SINCE = "1h"


class Rates:
    """Events received, deliveries and dead letters per minute over the last RATE_WINDOW seconds, from the
    router's counters sampled every RATE_SAMPLE seconds (while the admin endpoint runs)."""

    COUNTERS: Mapping[str, tuple[str, dict[str, str]]] = {
        "received": ("events_received", {}),
        "delivered": ("deliveries", {"outcome": "delivered"}),
        "retried": ("deliveries", {"outcome": "retry"}),
        "dead_lettered": ("dead_letters", {}),
    }

    def __init__(self, read: Callable[[str, dict[str, str]], int]):
        self._read = read
        self._samples: deque[tuple[float, dict[str, int]]] = deque(maxlen=int(RATE_WINDOW / RATE_SAMPLE) + 2)

    def sample(self) -> dict[str, int]:
        counts = {name: self._read(metric, labels) for name, (metric, labels) in self.COUNTERS.items()}
        self._samples.append((time.monotonic(), counts))
        return counts

    def per_minute(self) -> dict[str, float | None]:
        """Per counter: how many in the last minute (scaled from the sampled window; before a minute of
        samples, all since the first, which all came within the minute). None before the first sample."""
        now, counts = time.monotonic(), self.sample()
        base = next(((t, c) for t, c in self._samples if now - t <= RATE_WINDOW + RATE_SAMPLE), None)
        if base is None or base[0] == now:
            return dict.fromkeys(counts)
        elapsed = max(now - base[0], RATE_WINDOW)
        return {name: (counts[name] - base[1][name]) * 60.0 / elapsed for name in counts}

    async def run(self) -> None:
        while True:
            self.sample()
            await anyio.sleep(RATE_SAMPLE)


def _ago(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    seconds = max(0.0, time.time() - timestamp)
    return _duration(seconds) + " ago"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m {seconds % 60:.0f}s"
    if seconds < 86400:
        return f"{seconds // 3600:.0f}h {seconds % 3600 // 60:.0f}m"
    return f"{seconds // 86400:.0f}d {seconds % 86400 // 3600:.0f}h"


def _pretty(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}/min"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every value is escaped: event data, errors and names are never markup
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(iso=lambda t: "-" if t is None else iso_time(t), ago=_ago, duration=_duration)
    env.filters.update(pretty=_pretty, rate=_rate, q=lambda text: quote(str(text), safe=""))
    return env


def _ids(values: list[str]) -> list[int] | None:
    """Dead letter ids from a form or query (None when one is not a number)."""
    try:
        ids = sorted({int(v) for v in values})
    except ValueError:
        return None
    return ids if all(i > 0 for i in ids) else None


def _who(request: web.Request) -> str:
    return f"console ({request.remote})"


class Console:
    def __init__(self, app: ConsoleHost):
        self.app = app
        self.templates = _environment()
        # the spool the router runs on: a reload never moves it (App.reload keeps the running one)
        self.reader = events.Reader(app.config.data_dir, app.config.spool)
        # one read at a time on the console's read-only spool
        self._reading = anyio.CapacityLimiter(1)
        self.rates = Rates(lambda name, labels: app.stats.get(name, **labels))
        self._tasks: set[asyncio.Task[None]] = set()

    def add_routes(self, web_app: web.Application) -> None:
        router = web_app.router
        router.add_get("/console", self.to_console)
        router.add_get("/console/", self.overview)
        router.add_get("/console/login", self.login_page)
        router.add_post("/console/login", self.login)
        router.add_post("/console/logout", self.logout)
        router.add_get("/console/events", self.events_page)
        router.add_get("/console/events/{event_id}", self.trace_page)
        router.add_get("/console/dead-letters", self.dead_letters_page)
        router.add_get("/console/dead-letters/confirm", self.confirm_page)
        router.add_post("/console/dead-letters/replay", self.replay)
        router.add_post("/console/dead-letters/purge", self.purge)
        router.add_get(r"/console/dead-letters/{dlid:\d+}", self.dead_letter_page)
        router.add_get("/console/outputs", self.outputs_page)
        router.add_post("/console/outputs/{name}/{action:pause|resume|retry}", self.output_action)
        router.add_get("/console/config", self.config_page)
        router.add_static("/console/static/", HERE / "static", name="console-static")
        web_app.on_startup.append(self._start)
        web_app.on_cleanup.append(self._stop)

    async def _start(self, _: web.Application) -> None:
        task = asyncio.create_task(self.rates.run())
        self._tasks.add(task)

    async def _stop(self, _: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await anyio.to_thread.run_sync(self.reader.close)

    # --- helpers ------------------------------------------------------------------------------------

    async def _read(self, work: Callable[[Spool], _T]) -> _T:
        """`work` on the console's read-only spool, in a worker thread."""
        reader = self.reader

        def run() -> _T:
            return work(reader.get())

        return await anyio.to_thread.run_sync(run, limiter=self._reading)

    def _render(self, request: web.Request, template: str, status: int = 200, **values: Any) -> web.Response:
        config = self.app.config
        page = self.templates.get_template(template).render(
            csrf=security.csrf_token(request),
            csrf_field=security.CSRF_FIELD,
            version=__version__,
            logged_in=config.admin_token is not None,
            path=request.path,
            notice=values.pop("notice", None),
            **values,
        )
        return web.Response(status=status, text=page, content_type="text/html")

    def _unmask(self, request: web.Request) -> tuple[bool, str | None]:
        """Whether this page shows events' data unmasked, and why not when it was asked for."""
        if request.query.get("unmask") not in ("1", "true", "yes"):
            return False, None
        if not self.app.config.admin_unmask:
            return False, "unmasked data is not allowed on this router: [router.admin] unmask = true allows it"
        return True, None

    # --- pages --------------------------------------------------------------------------------------

    async def to_console(self, _: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("/console/")

    async def login_page(self, request: web.Request) -> web.Response:
        if self.app.config.admin_token is None:  # nothing to log in to
            raise web.HTTPSeeOther(security.safe_next(request.query.get("next")))
        return self._render(request, "login.html", next=security.safe_next(request.query.get("next")), failed=False)

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        token = self.app.config.admin_token
        target = security.safe_next(form.get("next"))
        given = form.get("token")
        if token is None:
            raise web.HTTPSeeOther(target)
        if not isinstance(given, str) or not security.token_matches(token, given):
            await anyio.sleep(security.LOGIN_FAILURE_DELAY)
            return self._render(request, "login.html", status=401, next=target, failed=True)
        response = web.HTTPSeeOther(target)
        security.set_session(request, response, token)
        raise response

    async def logout(self, request: web.Request) -> web.Response:
        response = web.HTTPSeeOther(security.LOGIN)
        security.clear_session(response)
        raise response

    async def overview(self, request: web.Request) -> web.Response:
        app = self.app
        config = app.config

        def read(spool: Spool) -> tuple[dict[str, Any], list[DeadLetter]]:
            status = spool_status(config, spool)
            _, highest = spool.count_dead_letters(DeadLetterFilter())
            recent: list[DeadLetter] = []
            if highest is not None:
                window = DeadLetterFilter(ids=tuple(range(max(1, highest - 99), highest + 1)))
                recent = spool.dead_letters(window)[-RECENT:][::-1]
            return status, recent

        readiness = app.readiness()
        try:
            status, recent = await self._read(read)
            problem = None
        except SpoolError as exc:
            status, recent, problem = None, [], str(exc)
        inputs = [
            {
                "name": name,
                "type": inp.type,
                "ready": readiness["inputs"].get(name),
                "reason": readiness.get("reasons", {}).get(name),
            }
            for name, inp in config.inputs.items()
        ]
        return self._render(
            request,
            "overview.html",
            readiness=readiness,
            inputs=inputs,
            outputs=self._outputs(status),
            summary=status,
            recent=recent,
            rates=self.rates.per_minute(),
            problem=problem,
            tap_url="/tap",
        )

    def _outputs(self, status: dict[str, Any] | None) -> list[dict[str, Any]]:
        config = self.app.config
        report = self.app.outputs_report()
        rows = []
        for name, state in report.items():
            spooled = (status or {}).get("outputs", {}).get(name, {})
            rows.append({"name": name, "type": config.outputs[name].type, **spooled, **state})
        return rows

    async def events_page(self, request: web.Request) -> web.Response:
        query = request.query
        config = self.app.config
        now = time.time()
        form = {key: query.get(key, "") for key in ("trigger", "id", "route", "outcome", "since", "until")}
        form["since"] = form["since"] or DEFAULT_SINCE
        errors: list[str] = []
        try:
            since = parse_when(form["since"], now)
        except ValueError as exc:
            errors.append(f"since: {exc}")
            since = now - 3600
        try:
            until = parse_when(form["until"], now) if form["until"] else now + 1
        except ValueError as exc:
            errors.append(f"until: {exc}")
            until = now + 1
        if form["trigger"] and (problem := trigger_glob_problem(form["trigger"])):
            errors.append(f"trigger: {problem}")
        if form["route"] and config.route(form["route"]) is None:
            errors.append(f"route: no route named {form['route']!r}")
        if form["outcome"] and form["outcome"] not in events.OUTCOMES:
            errors.append(f"outcome: one of {', '.join(events.OUTCOMES)}")
        result = None
        problem = None
        if not errors:
            search = events.Query(
                since=since,
                until=until,
                trigger=form["trigger"] or None,
                event_id=form["id"].strip() or None,
                route=form["route"] or None,
                outcome=form["outcome"] or None,
            )
            schemas = self.app.schemas
            try:
                result = await self._read(lambda spool: events.search(spool, config, schemas, search))
            except SpoolError as exc:
                problem = str(exc)
        return self._render(
            request,
            "events.html",
            form=form,
            errors=errors,
            result=result,
            problem=problem,
            routes=[route.name for route in config.routes],
            outcomes=events.OUTCOMES,
            retention=config.retention,
            window=(since, until),
        )

    async def trace_page(self, request: web.Request) -> web.Response:
        event_id = request.match_info["event_id"]
        config = self.app.config
        schemas = self.app.schemas
        unmask, refused = self._unmask(request)
        try:
            found = await self._read(lambda spool: events.trace(spool, config, schemas, event_id))
            problem = None
        except SpoolError as exc:
            found, problem = None, str(exc)
        return self._render(
            request,
            "trace.html",
            status=200 if found is not None or problem else 404,
            event_id=event_id,
            trace=found,
            shown=None if found is None else events.shown_event(found.body, schemas, unmask=unmask),
            unmasked=unmask,
            can_unmask=config.admin_unmask,
            notice=refused,
            problem=problem,
            retention=config.retention,
            tap_url="/tap",
        )

    async def dead_letters_page(self, request: web.Request) -> web.Response:
        query = request.query
        form = {key: query.get(key, "") for key in ("output", "trigger", "reason", "since", "until")}
        errors: list[str] = []
        now = time.time()
        times: dict[str, float | None] = {"since": None, "until": None}
        for key in ("since", "until"):
            if form[key]:
                try:
                    times[key] = parse_when(form[key], now)
                except ValueError as exc:
                    errors.append(f"{key}: {exc}")
        where = DeadLetterFilter(
            output=form["output"] or None,
            trigger=form["trigger"] or None,
            reason=form["reason"] or None,
            since=times["since"],
            until=times["until"],
        )
        rows: list[DeadLetter] = []
        total = 0
        problem = None
        if not errors:
            try:
                rows, total = await self._read(
                    lambda spool: (spool.dead_letters(where, PAGE_SIZE), spool.count_dead_letters(where)[0])
                )
            except SpoolError as exc:
                problem = str(exc)
        return self._render(
            request,
            "dead_letters.html",
            form=form,
            errors=errors,
            rows=rows,
            total=total,
            problem=problem,
            notice=_done_notice(request.query),
            outputs=list(self.app.config.outputs),
        )

    async def dead_letter_page(self, request: web.Request) -> web.Response:
        dlid = int(request.match_info["dlid"])
        unmask, refused = self._unmask(request)
        rows = await self._read(lambda spool: spool.dead_letters(DeadLetterFilter(ids=(dlid,))))
        if not rows:
            return self._render(request, "missing.html", status=404, what=f"dead letter {dlid}")
        (dl,) = rows
        return self._render(
            request,
            "dead_letter.html",
            dl=dl,
            event=events.shown_event(dl.body, self.app.schemas, unmask=unmask),
            payload=events.shown_payload(dl.payload, unmask=unmask),
            unmasked=unmask,
            can_unmask=self.app.config.admin_unmask,
            notice=refused,
        )

    async def confirm_page(self, request: web.Request) -> web.Response:
        """What a replay or purge would act on, with the button that does it: nothing changes here."""
        action = request.query.get("action")
        ids = _ids(request.query.getall("id", []))
        if action not in ("replay", "purge") or not ids or len(ids) > MAX_SELECTED:
            raise web.HTTPSeeOther("/console/dead-letters?" + urlencode({"done": "none"}))
        rows = await self._read(lambda spool: spool.dead_letters(DeadLetterFilter(ids=tuple(ids))))
        return self._render(request, "confirm.html", action=action, rows=rows, missing=len(ids) - len(rows))

    async def replay(self, request: web.Request) -> web.Response:
        ids = await self._confirmed(request)
        report = await self.app.replay_dead_letters(ids, _who(request))
        done = {
            "done": "replayed",
            "replayed": report.replayed,
            "again": report.dead_again,
            "skipped": report.skipped,
        }
        raise web.HTTPSeeOther("/console/dead-letters?" + urlencode(done))

    async def purge(self, request: web.Request) -> web.Response:
        ids = await self._confirmed(request)
        count = await self.app.purge_dead_letters(ids, _who(request))
        raise web.HTTPSeeOther("/console/dead-letters?" + urlencode({"done": "purged", "purged": count}))

    async def _confirmed(self, request: web.Request) -> list[int]:
        form = await request.post()
        ids = _ids([str(v) for v in form.getall("id", [])])
        if form.get("confirm") != "yes" or not ids or len(ids) > MAX_SELECTED:
            raise web.HTTPBadRequest(text="confirm on the confirmation page: it names the dead letters acted on")
        return ids

    async def outputs_page(self, request: web.Request) -> web.Response:
        try:
            status = await self._read(partial(spool_status, self.app.config))
            problem = None
        except SpoolError as exc:
            status, problem = None, str(exc)
        return self._render(
            request,
            "outputs.html",
            outputs=self._outputs(status),
            problem=problem,
            notice=_done_notice(request.query, self.app.config.outputs),
        )

    async def output_action(self, request: web.Request) -> web.Response:
        name, action = request.match_info["name"], request.match_info["action"]
        try:
            if action == "retry":
                count = await self.app.retry_output(name, _who(request))
                done = {"done": "retried", "output": name, "count": count}
            else:
                state = await self.app.pause_output(name, action == "pause", _who(request))
                done = {"done": "paused" if action == "pause" else "resumed", "output": name}
                if not state["changed"]:
                    done["unchanged"] = "1"
        except UnknownOutput as exc:
            raise web.HTTPNotFound(text=str(exc)) from None
        except SpoolError as exc:
            raise web.HTTPServiceUnavailable(text=f"not recorded: {exc}") from None
        raise web.HTTPSeeOther("/console/outputs?" + urlencode(done))

    async def config_page(self, request: web.Request) -> web.Response:
        config = self.app.config
        return self._render(
            request,
            "config.html",
            text=config_text(config),
            file=str(config.path),
            warnings=config.warnings,
        )


def _done_notice(query: Mapping[str, str], outputs: Collection[str] = ()) -> str | None:
    """What the last action did, from the codes its redirect carried: no text of the URL is shown but an
    output's name that the router has."""
    done = query.get("done")

    def number(key: str) -> int:
        value = query.get(key, "0")
        return int(value) if value.isdigit() else 0

    if done == "replayed":
        return (
            f"Replayed {number('replayed')} dead letter(s); still invalid or unrouted {number('again')}, "
            f"skipped {number('skipped')}. The router delivers them within a second."
        )
    if done == "purged":
        return f"Purged {number('purged')} dead letter(s)."
    if done == "none":
        return "Nothing selected."
    output = query.get("output", "")
    if output not in outputs:
        return None
    unchanged = query.get("unchanged") == "1"
    if done == "paused":
        return f"{output} was paused already." if unchanged else f"Paused {output}: none of its deliveries start."
    if done == "resumed":
        return f"{output} was not paused." if unchanged else f"Resumed {output}: its backlog is delivered again."
    if done == "retried":
        return f"{number('count')} retry(s) of {output} made due now."
    return None
