"""The REST API: thin handlers over DomainManager. Errors are mapped in one place."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

import xenia
from xenia.config.model import DomainConfig
from xenia.errors import InvalidConfig, XeniaError
from xenia.host.manager import DomainManager

log = logging.getLogger(__name__)


class CreateRequest(BaseModel):
    config: dict[str, Any]
    paused: bool = False


class ShutdownRequest(BaseModel):
    wait: bool = False


class RebootRequest(BaseModel):
    force: bool = False


class RenameRequest(BaseModel):
    name: str


class WaitRequest(BaseModel):
    timeout: float | None = None


def error_body(err: XeniaError) -> dict[str, str]:
    return {"error": err.kind, "message": err.message}


def make_app(manager: DomainManager) -> FastAPI:
    app = FastAPI(title="xeniad", version=xenia.__version__)

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

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        err = InvalidConfig(f"Failed to read the request: {exc.errors()}")
        return JSONResponse(error_body(err), status_code=err.http_status)

    @app.get("/v1/host")
    async def host() -> dict[str, Any]:
        return manager.host_info()

    @app.get("/v1/domains")
    async def domains() -> list[dict[str, Any]]:
        return manager.list()

    @app.post("/v1/domains", status_code=201)
    async def create(req: CreateRequest) -> dict[str, Any]:
        try:
            cfg = DomainConfig.from_dict(req.config)
        except (TypeError, ValueError) as e:
            raise InvalidConfig(f"Failed to read the domain config: {e}") from e
        rec = await manager.create(cfg, paused=req.paused)
        return manager.describe(rec)

    @app.get("/v1/domains/{ref}")
    async def get(ref: str) -> dict[str, Any]:
        return manager.describe(manager.resolve(ref))

    @app.delete("/v1/domains/{ref}")
    async def destroy(ref: str) -> dict[str, Any]:
        await manager.destroy(ref)
        return {}

    @app.post("/v1/domains/{ref}/shutdown")
    async def shutdown(ref: str, req: ShutdownRequest) -> dict[str, Any]:
        await manager.shutdown(ref, wait=req.wait)
        return {}

    @app.post("/v1/domains/{ref}/reboot")
    async def reboot(ref: str, req: RebootRequest) -> dict[str, Any]:
        await manager.reboot(ref, force=req.force)
        return {}

    @app.post("/v1/domains/{ref}/pause")
    async def pause(ref: str) -> dict[str, Any]:
        await manager.pause(ref)
        return {}

    @app.post("/v1/domains/{ref}/unpause")
    async def unpause(ref: str) -> dict[str, Any]:
        await manager.unpause(ref)
        return {}

    @app.post("/v1/domains/{ref}/rename")
    async def rename(ref: str, req: RenameRequest) -> dict[str, Any]:
        return manager.describe(await manager.rename(ref, req.name))

    @app.post("/v1/domains/{ref}/wait")
    async def wait(ref: str, req: WaitRequest) -> dict[str, Any]:
        rec = manager.resolve(ref)
        await manager.wait_stopped(rec.uuid, req.timeout)
        return {}

    return app
