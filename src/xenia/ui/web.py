"""UiFront: the web UI in front of the API on TCP: pages, static files, login and logout.

Everything under /ui/ is the UI's own (no token needed to fetch a page or a script: they
hold no data); every other path goes on to the API behind TokenAuth. The pages are static
HTML and JavaScript that call the same /v1/... routes as the CLI, with the session cookie
instead of a bearer token (ui/sessions.py), so the server-side scope checks, the domain
patterns and the audit log are the API's own, not a second copy in the UI.

Every answer of the UI carries a Content-Security-Policy that allows this origin only:
the browser itself refuses a request to another origin, whatever a page tried.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from xenia.peers.audit import AuditLog
from xenia.peers.scopes import Grant
from xenia.ui.sessions import (
    BAD_CSRF,
    CSRF_HEADER,
    Sessions,
    clear_cookie_header,
    cookie,
    cookie_header,
)

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
PAGES_DIR = Path(__file__).parent / "pages"
XTERM = ('<link rel="stylesheet" href="/ui/static/vendor/xterm/xterm.css">\n',
         '<script src="/ui/static/vendor/xterm/xterm.js"></script>\n')
UPLOT = ('<link rel="stylesheet" href="/ui/static/vendor/uplot/uPlot.min.css">\n',
         '<script src="/ui/static/vendor/uplot/uPlot.iife.min.js"></script>\n')
NOVNC = ("", '<script type="module" src="/ui/static/vnc.js"></script>\n')
CLUSTER = ("", '<script src="/ui/static/cluster.js"></script>\n')
IMAGES = ("", '<script src="/ui/static/images.js"></script>\n')


@dataclass(frozen=True)
class Page:
    title: str
    libs: tuple[tuple[str, str], ...] = ()  # (stylesheet link, script tag) of each


# /ui/<key>: pages/<file>.html inside pages/layout.html (the bar, the message box, app.js).
PAGES: dict[str, tuple[str, Page]] = {
    "": ("index", Page("Domains")),
    "login": ("login", Page("Log in")),
    "domain": ("domain", Page("Domain", (XTERM, UPLOT, NOVNC))),
    "create": ("create", Page("Create")),
    "host": ("host", Page("Cluster", (UPLOT, CLUSTER))),
    "events": ("events", Page("Events")),
    "images": ("images", Page("Images", (IMAGES,))),
    "tokens": ("tokens", Page("Tokens")),
}


@functools.cache
def render(key: str) -> bytes:
    """The page as served: fixed text only (no request data goes into a page)."""
    name, page = PAGES[key]
    html = (PAGES_DIR / "layout.html").read_text()
    for slot, text in (("title", page.title), ("page", name),
                       ("head", "".join(css for css, _ in page.libs)),
                       ("scripts", "".join(js for _, js in page.libs)),
                       ("body", (PAGES_DIR / f"{name}.html").read_text())):
        html = html.replace("{{" + slot + "}}", text)
    return html.encode()


# 'unsafe-inline' styles: xterm.js and uPlot set element styles; scripts stay 'self' only.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; connect-src 'self'; font-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
BAD_LOGIN = ("Failed to log in: the token is not valid on this host (revoked, mistyped, or "
             "made on another host); make one with `xenia host token create --scope ...`")


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"error": kind, "message": message}, status_code=status)


class UiFront:
    """`api`: the API app behind TokenAuth; `verify`: token -> Grant (the registry's);
    `secure`: the listener is TLS (the cookie gets Secure)."""

    def __init__(self, api: ASGIApp, sessions: Sessions, verify: Callable[[str], Grant | None],
                 secure: bool, audit: AuditLog | None = None) -> None:
        self.api = api
        self.sessions = sessions
        self.verify = verify
        self.secure = secure
        # Logins (a refused one may be someone guessing tokens) and logouts are on record
        # as the API's mutating calls are: the token's name and the result, never the
        # token presented.
        self.audit = audit
        self.ui = Starlette(routes=[
            Route("/", self.root),
            Route("/ui/login", self.login, methods=["POST"]),
            Route("/ui/logout", self.logout, methods=["POST"]),
            Route("/ui/session", self.session),
            Mount("/ui/static", StaticFiles(directory=STATIC), name="static"),
            Route("/ui/{page:str}", self.page),
            Route("/ui/", self.page),
        ])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == "/" or path.startswith("/ui/")):
            await self.api(scope, receive, send)
            return

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + SECURITY_HEADERS
            await send(message)

        await self.ui(scope, receive, with_headers)  # type: ignore[arg-type]

    async def root(self, _: Request) -> Response:
        return RedirectResponse("/ui/", status_code=303)

    async def page(self, request: Request) -> Response:
        key = request.path_params.get("page", "")
        if key not in PAGES:
            return _error(404, "NotFound", f"Failed to find the page {request.url.path}")
        return Response(render(key), media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-store"})

    async def login(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
            token = str(body.get("token", "")).strip()
        except (ValueError, AttributeError):
            token = ""
        grant = self.verify(token) if token else None
        if grant is None:
            log.warning("UI login refused from %s", request.client.host if request.client
                        else "?")
            self._record(request, None, 401)
            return _error(401, "Unauthorized", BAD_LOGIN)
        sid, sess = self.sessions.open(grant)
        self._record(request, grant.token, 200)
        log.info("UI login of token '%s'", grant.token)
        resp = JSONResponse(self._view(grant, sess.csrf, sess.expires()))
        resp.headers["set-cookie"] = cookie_header(sid, self.secure)
        return resp

    async def logout(self, request: Request) -> Response:
        sid = cookie(request.scope)
        sess = self.sessions.lookup(sid) if sid else None
        if sess is not None:
            if request.headers.get(CSRF_HEADER, "") != sess.csrf:
                self._record(request, sess.token, 403)
                return _error(403, "PermissionDenied",
                              BAD_CSRF.format(method="POST", path="/ui/logout"))
            self.sessions.close(str(sid))
        self._record(request, sess.token if sess is not None else None, 200)
        resp = JSONResponse({})
        resp.headers["set-cookie"] = clear_cookie_header(self.secure)
        return resp

    def _record(self, request: Request, token: str | None, status: int) -> None:
        if self.audit is not None:
            path = request.url.path
            self.audit.record(token=token, client=request.client.host if request.client
                              else None, method=request.method, route=path, path=path,
                              domain=None, status=status)

    async def session(self, request: Request) -> Response:
        """Who is logged in, with what scopes, and the CSRF token for the page's calls (a
        page of another origin cannot read this answer: no CORS)."""
        sid = cookie(request.scope)
        sess = self.sessions.lookup(sid) if sid else None
        grant = self.sessions.grant_of(sess.token) if sess is not None else None
        if sess is None or grant is None:
            return _error(401, "Unauthorized", "Not logged in")
        return JSONResponse(self._view(grant, sess.csrf, sess.expires()))

    @staticmethod
    def _view(grant: Grant, csrf: str, expires: float) -> dict[str, Any]:
        return {"token": grant.token, "scopes": sorted(grant.scopes),
                "domains": list(grant.domains), "csrf": csrf, "expires": expires}
