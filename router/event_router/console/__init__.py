"""The web console on the admin endpoint (`/console/`): server-rendered pages over what the router and its
spool know, for people.

Pages: overview (inputs, outputs, backlog, rates, recent failures, live activity), events (search by
trigger, time, id, route, outcome; `events.search`), one event's trace (`events.trace`), dead letters (show,
replay, purge, each with a confirmation page), outputs (pause, resume, retry now), and the configuration
in force with its secrets masked (`configview`).

How it is built: jinja2 templates with autoescaping (`templates/`) and one stylesheet and one small script
(`static/`), all shipped in the package: nothing is built at run time and nothing loads from elsewhere (the
pages' Content-Security-Policy allows this endpoint only). The live parts read `GET /tap` (server-sent
events) with a few lines of script; everything else works without it. Reads go to a read-only spool of
the console's own (`events.Reader`), in a worker thread; actions go through the running router (`App`),
which records them in its spool and wakes its workers.

Who may use it and which requests are refused: `security` (a token off the loopback, CSRF tokens on every
form, no cross-site POST). Events' data is masked unless `[router.admin] unmask = true` and asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from event_router.console.host import ConsoleHost


def mount(web_app: web.Application, app: ConsoleHost) -> None:
    """Add the console's routes to the admin endpoint's `web_app` (whose middleware is `security.guard`)."""
    from event_router.console.views import Console

    Console(app).add_routes(web_app)


__all__ = ["mount"]
