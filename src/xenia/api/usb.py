"""Routes of xl's USB verbs (usbctrl-attach/-detach, usbdev-attach/-detach, usb-list) and
of suspend/resume; host/devices.py and host/xlverbs.py do the work."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from xenia.api.access import Acc
from xenia.api.deps import Devices
from xenia.api.xl import Verbs
from xenia.config.xldevices import parse_usbctrl, parse_usbdev

router = APIRouter(prefix="/v1/domains/{ref}")


class UsbRequest(BaseModel):
    spec: str  # as xl's usbctrl=/usbdev= entries: "version=3,ports=4", "type=tablet"


@router.get("/usb")
async def usb_list(ref: str, d: Devices) -> list[dict[str, Any]]:
    return await d.usb_list(ref)


@router.post("/usbctrl", status_code=201)
async def usbctrl_attach(ref: str, req: UsbRequest, d: Devices) -> dict[str, Any]:
    return {"devid": await d.usbctrl_attach(ref, parse_usbctrl(req.spec))}


@router.delete("/usbctrl/{devid}")
async def usbctrl_detach(ref: str, devid: int, d: Devices) -> dict[str, Any]:
    await d.usbctrl_detach(ref, devid)
    return {}


@router.post("/usbdev", status_code=201)
async def usbdev_attach(ref: str, req: UsbRequest, d: Devices, a: Acc) -> dict[str, Any]:
    dev = parse_usbdev(req.spec)
    a.require_admin_for_host_usb([dev], f"to attach a USB device to '{ref}'")
    if dev["type"] == "storage":
        a.check_path(str(dev["path"]), "usbdev storage")
    return await d.usbdev_attach(ref, dev)


@router.delete("/usbdev/{controller}/{port}")
async def usbdev_detach(ref: str, controller: int, port: int, d: Devices) -> dict[str, Any]:
    await d.usbdev_detach(ref, controller, port)
    return {}


@router.post("/suspend")
async def suspend(ref: str, x: Verbs) -> dict[str, Any]:
    await x.suspend(ref)
    return {}


@router.post("/resume")
async def resume(ref: str, x: Verbs) -> dict[str, Any]:
    await x.resume(ref)
    return {}
