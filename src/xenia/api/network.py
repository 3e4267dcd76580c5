"""Network routes: bridges and NAT networks (thin: the work is in NetworkManager).

Handlers are plain functions, so FastAPI runs them in its thread pool: creating or
deleting a NAT network waits for dnsmasq and nft.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from xenia.api.deps import Network

router = APIRouter(prefix="/v1")


class CreateNetworkRequest(BaseModel):
    name: str
    nat: bool = False
    subnet: str | None = None
    interface: str | None = None


@router.get("/networks")
def list_networks(net: Network, all: bool = False) -> list[dict[str, Any]]:
    return net.list_networks(include_host=all)


@router.post("/networks", status_code=201)
def create_network(req: CreateNetworkRequest, net: Network) -> dict[str, Any]:
    return net.create_network(req.name, nat=req.nat, subnet=req.subnet,
                              interface=req.interface)


@router.get("/networks/{name}")
def get_network(name: str, net: Network) -> dict[str, Any]:
    return net.get_network(name)


@router.delete("/networks/{name}")
def delete_network(name: str, net: Network) -> dict[str, Any]:
    net.delete_network(name)
    return {}
