"""The REST API app: routers per area, and the one place errors become HTTP answers."""

from __future__ import annotations

import logging

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import xenia
from xenia.api import (
    cluster,
    console,
    cpupools,
    devices,
    domains,
    ha,
    images,
    metrics,
    migration,
    network,
    peers,
    replicas,
    snapshots,
    storage,
    usb,
    webui,
    xl,
)
from xenia.api.forward import ClusterForward
from xenia.api.scopes import enforce
from xenia.engine import Engine
from xenia.errors import InvalidConfig, XeniaError

log = logging.getLogger(__name__)


def error_body(err: XeniaError) -> dict[str, str]:
    return {"error": err.kind, "message": err.message}


def make_app(engine: Engine) -> FastAPI:
    # enforce: the scope check of requests from TCP, before every handler (api/scopes.py).
    app = FastAPI(title="xeniad", version=xenia.__version__, dependencies=[Depends(enforce)])
    app.state.engine = engine
    app.include_router(domains.router)
    app.include_router(devices.router)
    app.include_router(devices.host_router)
    app.include_router(migration.router)
    app.include_router(storage.router)
    app.include_router(replicas.router)
    app.include_router(snapshots.router)
    app.include_router(network.router)
    app.include_router(peers.router)
    app.include_router(xl.router)
    app.include_router(usb.router)
    app.include_router(cpupools.router)
    app.include_router(metrics.router)
    app.include_router(webui.router)
    app.include_router(ha.router)
    app.include_router(cluster.router)
    app.include_router(console.router)
    app.include_router(images.router)
    # On a cluster member: another member's domains are reached through it (forward.py).
    app.add_middleware(ClusterForward)

    @app.exception_handler(XeniaError)
    async def _xenia_error(_: Request, exc: XeniaError) -> JSONResponse:
        return JSONResponse(error_body(exc), status_code=exc.http_status)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        err = XeniaError(
            f"Failed {request.method} {request.url.path}: internal error "
            f"({type(exc).__name__}: {exc}); see the xeniad log"
        )
        return JSONResponse(error_body(err), status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # No such route, method not allowed, ...: the error JSON like every other answer.
        kind = "not-found" if exc.status_code == 404 else "invalid-request"
        message = f"Failed {request.method} {request.url.path}: {exc.detail}"
        return JSONResponse({"error": kind, "message": message}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Where and what, never the input: pydantic's errors carry the whole value (a
        # 1 MiB string would come back in the answer).
        where = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}"
                          for e in exc.errors()[:10])
        err = InvalidConfig(f"Failed to read the request: {where}")
        return JSONResponse(error_body(err), status_code=err.http_status)

    return app
