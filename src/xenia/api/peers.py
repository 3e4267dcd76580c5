"""Peer and token routes: this host's identity, its bearer tokens, the peers it knows.

Over TCP these need the `admin` scope (api/scopes.py); a token made over TCP can do no
more than the one that made it, and is revoked with it (peers/tokens.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from xenia.api.access import Acc
from xenia.peers.service import PeerService

router = APIRouter(prefix="/v1")


def _peers(request: Request) -> PeerService:
    svc: PeerService | None = getattr(request.app.state, "peers", None)
    if svc is None:
        # An app not started by xeniad (tests): the service is made on first use.
        engine = request.app.state.engine
        svc = PeerService(engine.paths, engine.store)
        request.app.state.peers = svc
    return svc


Peers = Annotated[PeerService, Depends(_peers)]


class TokenRequest(BaseModel):
    name: str | None = None
    scopes: list[str] | None = None  # None: a peer's (migrate)
    domains: list[str] | None = None  # domain-name patterns; None: every domain


class ProbeRequest(BaseModel):
    address: str


class PeerRequest(BaseModel):
    name: str
    address: str
    token: str
    fingerprint: str | None = None
    tls: bool = True


@router.get("/host/identity")
async def identity(p: Peers) -> dict[str, Any]:
    return p.info()


@router.get("/host/certificate")
async def certificate(p: Peers) -> dict[str, Any]:
    ident = p.identity()
    return {"fingerprint": ident.fingerprint, "pem": ident.pem}


@router.get("/host/tokens")
async def tokens(p: Peers) -> list[dict[str, Any]]:
    return p.tokens.list()


@router.post("/host/tokens", status_code=201)
async def create_token(req: TokenRequest, p: Peers, a: Acc) -> dict[str, Any]:
    rec, token = p.tokens.create(req.name, req.scopes, req.domains, maker=a.grant)
    return {**rec, "token": token}


@router.delete("/host/tokens/{name}")
async def revoke_token(name: str, p: Peers) -> dict[str, Any]:
    return {"revoked": p.tokens.revoke(name)}


@router.get("/peers")
async def peers(p: Peers, status: bool = True) -> list[dict[str, Any]]:
    if status:
        return await p.peers.status_all()
    return p.peers.list()


@router.post("/peers/probe")
async def probe(req: ProbeRequest, p: Peers) -> dict[str, Any]:
    return await p.peers.probe(req.address)


@router.post("/peers", status_code=201)
async def add_peer(req: PeerRequest, p: Peers) -> dict[str, Any]:
    return await p.peers.add(req.name, req.address, req.token, req.fingerprint, tls=req.tls)


@router.get("/peers/{name}")
async def peer(name: str, p: Peers) -> dict[str, Any]:
    p.peers.client(name)  # NotFound with the usual message
    return await p.peers.status(name)


@router.delete("/peers/{name}")
async def remove_peer(name: str, p: Peers) -> dict[str, Any]:
    p.peers.remove(name)
    return {}
