"""Routes of xl's remaining domain verbs: trigger, sysrq, button-press,
qemu-monitor-command, and the host's dmesg (host/xlverbs.py does the work)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from xenia.api.access import Acc
from xenia.config.model import DomainConfig
from xenia.errors import InvalidConfig
from xenia.host.xlverbs import XlVerbs

router = APIRouter(prefix="/v1")


def _verbs(request: Request) -> XlVerbs:
    return XlVerbs(request.app.state.engine.manager)


Verbs = Annotated[XlVerbs, Depends(_verbs)]


class TriggerRequest(BaseModel):
    kind: str


class KeyRequest(BaseModel):
    key: str


class ButtonRequest(BaseModel):
    button: str


class MonitorRequest(BaseModel):
    command: str


@router.post("/domains/{ref}/trigger")
async def trigger(ref: str, req: TriggerRequest, x: Verbs) -> dict[str, Any]:
    await x.trigger(ref, req.kind)
    return {}


@router.post("/domains/{ref}/sysrq")
async def sysrq(ref: str, req: KeyRequest, x: Verbs) -> dict[str, Any]:
    await x.sysrq(ref, req.key)
    return {}


@router.post("/domains/{ref}/button")
async def button(ref: str, req: ButtonRequest, x: Verbs) -> dict[str, Any]:
    await x.button_press(ref, req.button)
    return {}


@router.post("/domains/{ref}/monitor")
async def monitor(ref: str, req: MonitorRequest, x: Verbs) -> dict[str, Any]:
    return {"output": await x.monitor_command(ref, req.command)}


class DumpRequest(BaseModel):
    file: str | None = None


@router.post("/domains/{ref}/dump-core")
async def dump_core(ref: str, req: DumpRequest, x: Verbs, a: Acc) -> dict[str, Any]:
    if req.file is not None:
        a.check_path(req.file, "core file")
    elif a.grant is not None:
        raise InvalidConfig("Failed to dump a core over TCP: name the file (a path the "
                            "token's path rule allows)")
    return {"file": await x.dump_core(ref, req.file)}


class ConfigRequest(BaseModel):
    config: dict[str, Any]


@router.post("/domains/{ref}/config")
async def config_update(ref: str, req: ConfigRequest, x: Verbs, a: Acc) -> dict[str, Any]:
    try:
        cfg = DomainConfig.from_dict(req.config)
    except (TypeError, ValueError) as e:
        raise InvalidConfig(f"Failed to read the domain config: {e}") from e
    await asyncio.to_thread(a.check_config, cfg, f"to update the config of '{ref}'")
    await x.config_update(ref, cfg)
    return {}


@router.get("/host/dmesg")
async def dmesg(x: Verbs, clear: bool = False) -> dict[str, Any]:
    return {"lines": x.dmesg(clear)}
