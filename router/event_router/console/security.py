"""Who may use the admin endpoint, and which requests are refused whoever sends them.

One aiohttp middleware (`guard`) in front of every route of the admin endpoint:

- `/healthz`, `/readyz`, `/metrics` are open (probes and Prometheus), as they always were.
- `[router.admin] token` set (required off the loopback, config.loader): every other path asks for it, as
  `Authorization: Bearer TOKEN` (the CLI, scripts) or as the console's session cookie, which the login page
  sets once the token is typed in: an HMAC of its issue time keyed by the token, so it outlives restarts
  and dies with a changed token or after SESSION_HOURS. The cookie lets a browser in to the console and
  to GET /tap (its live views); the JSON endpoints' POSTs take the bearer token only, so no cookie a
  browser sends on its own can change anything there.
- No token (a loopback listener): nothing is asked, but the Host must name the loopback (`127.0.0.1:9187`,
  `localhost:9187`, `[::1]:9187`): a page of another site whose name was made to resolve to 127.0.0.1 (DNS
  rebinding) reads nothing and posts nothing.
- A POST (or any method but GET and HEAD) that a browser marks as coming from another site (`Origin` other
  than this endpoint's own, or `Sec-Fetch-Site: cross-site`/`same-site`) is refused, wherever it goes: a
  page elsewhere cannot make an operator's browser reload, pause or replay (the JSON endpoints included).
- The console's own POSTs carry a CSRF token besides (double submit): a random value in a cookie
  (`SameSite=Strict`, `HttpOnly`, path /console) that the page repeats in a hidden form field; the two must
  match. Another site can neither read the cookie nor set it.

Every console page goes out with a Content-Security-Policy that allows scripts, styles, images and
connections from this endpoint only (no inline script), no framing, and forms posting here only.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, urlsplit

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from event_router.api.listen import is_loopback
from event_router.api.secrets import Secret

#: paths anyone who reaches the endpoint may GET: probes and the Prometheus scrape
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
#: where the console lives; its login page and static files are open (they show nothing of the router)
CONSOLE = "/console"
LOGIN = f"{CONSOLE}/login"
STATIC = f"{CONSOLE}/static/"
SESSION_COOKIE = "event_router_session"
CSRF_COOKIE = "event_router_csrf"
#: the form field that repeats the CSRF cookie
CSRF_FIELD = "csrf"
#: how long a console login lasts
SESSION_HOURS = 12
#: seconds a wrong token is answered late: typing it again costs a person nothing, guessing costs more
LOGIN_FAILURE_DELAY = 1.0
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

#: what every console page may load and where its forms may post: this endpoint alone
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # not "no-referrer": with it a browser sends `Origin: null` on the console's own forms
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

Token = Callable[[], Secret | None]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _refuse(status: int, error: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps({"error": error}), content_type="application/json")


def session_value(token: str, issued: int) -> str:
    mac = hmac.new(token.encode(), f"console-session:{issued}".encode(), hashlib.sha256).hexdigest()
    return f"{issued}.{mac}"


def session_valid(token: str, value: str | None, now: float | None = None) -> bool:
    """Whether `value` is a session cookie this token issued less than SESSION_HOURS ago."""
    if not value or "." not in value:
        return False
    issued_text = value.partition(".")[0]
    if not issued_text.isdigit():
        return False
    issued = int(issued_text)
    age = (time.time() if now is None else now) - issued
    if not 0 <= age < SESSION_HOURS * 3600:
        return False
    return hmac.compare_digest(value, session_value(token, issued))


def bearer_valid(token: str, header: str | None) -> bool:
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer ") :].strip().encode(), token.encode())


def token_matches(token: str, given: str) -> bool:
    return hmac.compare_digest(given.encode(), token.encode())


def host_is_loopback(host_header: str | None) -> bool:
    """Whether a request's Host names the loopback (`127.0.0.1:9187`, `[::1]:9187`, `localhost:9187`)."""
    if not host_header:
        return False
    try:
        hostname = urlsplit(f"//{host_header}").hostname
    except ValueError:
        return False
    return hostname is not None and is_loopback(hostname)


def cross_site(request: web.Request) -> str | None:
    """Why a browser's request came from another site (None: it did not, or no browser marked it)."""
    origin = request.headers.get("Origin")
    if origin is not None:
        # the host alone: behind a proxy that ends TLS the scheme seen here is not the browser's
        try:
            host = urlsplit(origin).netloc
        except ValueError:
            host = ""
        if host.lower() != request.host.lower():
            return f"a request from {origin} (not from {request.host}) is refused"
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return f"a {fetch_site} request is refused"
    return None


def csrf_token(request: web.Request) -> str:
    """The request's CSRF token: its cookie's, or a new one (`set_csrf_cookie` sends it with the page)."""
    value = request.cookies.get(CSRF_COOKIE)
    if value and len(value) >= 32:
        return value
    made: str = request.get("csrf_new") or secrets.token_urlsafe(32)
    request["csrf_new"] = made
    return made


def set_csrf_cookie(request: web.Request, response: web.StreamResponse) -> None:
    made = request.get("csrf_new")
    if made:
        response.set_cookie(
            CSRF_COOKIE, made, path=CONSOLE, httponly=True, samesite="Strict", secure=request.secure or None
        )


async def csrf_valid(request: web.Request) -> bool:
    """Whether a console POST repeats its CSRF cookie in its form (double submit)."""
    cookie = request.cookies.get(CSRF_COOKIE)
    if not cookie:
        return False
    form = await request.post()
    given = form.get(CSRF_FIELD)
    return isinstance(given, str) and hmac.compare_digest(given.encode(), cookie.encode())


def set_session(request: web.Request, response: web.StreamResponse, token: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        session_value(token, int(time.time())),
        path="/",
        max_age=SESSION_HOURS * 3600,
        httponly=True,
        samesite="Strict",
        secure=request.secure or None,
    )


def clear_session(response: web.StreamResponse) -> None:
    response.del_cookie(SESSION_COOKIE, path="/")


def safe_next(value: Any) -> str:
    """Where the login page sends a person on: a path of the console, never another site."""
    if isinstance(value, str) and value.startswith(CONSOLE) and not value.startswith("//") and "\\" not in value:
        return value
    return f"{CONSOLE}/"


def guard(token_of: Token) -> Middleware:
    """The middleware; `token_of` reads the token in force (a reload may change it)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path in OPEN_PATHS and request.method in SAFE_METHODS:
            return await handler(request)
        token = token_of()
        if token is None and not host_is_loopback(request.host):
            # no token: only the loopback may use this endpoint, and a rebound name is not the loopback
            return _refuse(421, f"this endpoint answers to the loopback only, not to host {request.host!r}")
        if request.method not in SAFE_METHODS:
            why = cross_site(request)
            if why is not None:
                return _refuse(403, why)
        console = path == CONSOLE or path.startswith(CONSOLE + "/")
        if token is not None and not (console and (path == LOGIN or path.startswith(STATIC))):
            bearer = bearer_valid(token, request.headers.get("Authorization"))
            # the cookie opens the console, and GETs elsewhere (the live tap); POSTs outside the console
            # need the bearer token, which no browser sends by itself
            cookie = (console or request.method in SAFE_METHODS) and session_valid(
                token, request.cookies.get(SESSION_COOKIE)
            )
            if not (bearer or cookie):
                if console and request.method in SAFE_METHODS:
                    raise web.HTTPSeeOther(f"{LOGIN}?next={quote(request.path_qs, safe='')}")
                refused = _refuse(401, "this endpoint asks for its token ([router.admin] token): Bearer TOKEN")
                refused.headers["WWW-Authenticate"] = 'Bearer realm="event-router admin"'
                return refused
        if console and request.method not in SAFE_METHODS and not await csrf_valid(request):
            return _refuse(403, "the form's CSRF token does not match its cookie: load the page again")
        response = await handler(request)
        if console and not path.startswith(STATIC):
            response.headers.update(PAGE_HEADERS)
            set_csrf_cookie(request, response)
        return response

    return middleware


__all__ = [
    "CSRF_FIELD",
    "LOGIN",
    "LOGIN_FAILURE_DELAY",
    "clear_session",
    "csrf_token",
    "guard",
    "safe_next",
    "set_session",
    "token_matches",
]
