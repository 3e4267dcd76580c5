"""Guest images: the built ones, and builds run by xeniad (`xenia image build` from the
web UI, with its progress lines; the CLI builds in its own process)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel

from xenia.api.deps import ImageBuildsDep

router = APIRouter(prefix="/v1")


class BuildRequest(BaseModel):
    name: str
    force: bool = False


@router.get("/images")
async def images(request: Request) -> list[dict[str, Any]]:
    from xenia.images.tiny import list_images

    found = await asyncio.to_thread(list_images, request.app.state.engine.paths.images)
    return [{"name": i.name, "kernel_version": i.kernel_version, "size": i.size,
             "path": str(i.path), "built": i.built.isoformat()} for i in found]


@router.post("/images/builds", status_code=202)
async def build(req: BuildRequest, b: ImageBuildsDep) -> dict[str, Any]:
    return b.start(req.name, req.force).view()


@router.get("/images/builds/{build_id}")
async def build_state(build_id: str, b: ImageBuildsDep) -> dict[str, Any]:
    return b.get(build_id).view()
