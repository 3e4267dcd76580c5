"""Cluster routes under /v1/cluster: the verbs (init, token, join, leave, remove, status),
the cluster-wide domain list, maintenance and evacuation, and the member-to-member routes
(admit, forward, paths) that a member credential (`cluster` scope) may call.

Thin: the work is in cluster/ (node.py, status.py, evacuate.py). api/forward.py sends
requests about another member's domain to that member.
"""

from __future__ import annotations

import asyncio
import http.client
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from xenia.api.access import Acc
from xenia.api.deps import Views
from xenia.errors import InvalidConfig, NotSupported

if TYPE_CHECKING:
    from xenia.cluster.node import ClusterNode

router = APIRouter(prefix="/v1/cluster")

FORWARDED = "x-xenia-forwarded"
# What a member may forward to another: the domain verbs and migration jobs; nothing that
# changes the host itself (pools, networks, tokens, peers, cluster membership).
FORWARDABLE = ("/v1/domains", "/v1/migrations/")


def _node(request: Request) -> ClusterNode:
    node: ClusterNode | None = getattr(request.app.state, "cluster", None)
    if node is None:
        raise NotSupported("Failed to use the cluster: this xeniad runs without cluster "
                           "support (an app made outside xeniad)")
    return node


# Any, not ClusterNode: FastAPI resolves the annotation, and the node's module is loaded
# only by xeniad (it is light, but its users are not).
Node = Annotated[Any, Depends(_node)]


class InitRequest(BaseModel):
    name: str | None = None
    address: str | None = None
    cluster: str = "xenia"
    etcd_voters: int = 5


class JoinRequest(BaseModel):
    address: str
    token: str
    name: str | None = None
    own_address: str | None = None


class RemoveRequest(BaseModel):
    host: str


class MaintenanceRequest(BaseModel):
    on: bool


class EvacuateRequest(BaseModel):
    parallel: int = 2


class ForwardRequest(BaseModel):
    method: str
    path: str
    body: Any = None


class PathsRequest(BaseModel):
    paths: list[str]


@router.get("")
async def status(n: Node) -> dict[str, Any]:
    if not n.is_member:
        return {"member": False}
    from xenia.cluster.status import cluster_status

    st = await asyncio.to_thread(cluster_status, n.client(), n.name)
    hold = n.agent.hold_status() if n.agent is not None else None
    if hold is not None:
        # This member keeps its HA domains through the quorum loss (cluster/quorum.py).
        st["failover"] = hold["state"]
        st["hold"] = hold
    return st


@router.get("/quorum")
async def quorum(n: Node) -> dict[str, Any]:
    """What this host's etcd member knows (a member asks before it fences: quorum.py)."""
    from xenia.cluster.quorum import local_answer

    return {"host": n.name, **await asyncio.to_thread(local_answer, n.runtime)}


@router.post("/init", status_code=201)
async def init(req: InitRequest, n: Node) -> dict[str, Any]:
    return await n.init(req.name, req.address, req.cluster, req.etcd_voters)


@router.post("/token", status_code=201)
async def token(n: Node) -> dict[str, Any]:
    return n.make_token()


@router.post("/admit")
async def admit(req: dict[str, Any], n: Node, a: Acc) -> dict[str, Any]:
    return await n.admit(a.grant, req)


@router.post("/join", status_code=201)
async def join(req: JoinRequest, n: Node) -> dict[str, Any]:
    return await n.join(req.address, req.token, req.name, req.own_address)


@router.post("/leave")
async def leave(n: Node) -> dict[str, Any]:
    return await n.leave()


@router.post("/remove")
async def remove(req: RemoveRequest, n: Node) -> dict[str, Any]:
    return await n.remove(req.host)


@router.get("/domains")
async def domains(n: Node, v: Views, a: Acc) -> dict[str, Any]:
    """Every member's domains (this host's live, the others' as published), with a host
    field; {"member": false} on a host outside any cluster."""
    if not n.is_member:
        return {"member": False}
    from xenia.cluster.status import cluster_rows

    local = [{**r, "host": n.name} for r in v.list() if r["domid"] != 0]
    others = [r for r in await asyncio.to_thread(cluster_rows, n.client())
              if r.get("host") != n.name]
    rows = sorted(local + others, key=lambda r: (r.get("host", ""), r.get("name", "")))
    return {"member": True, "host": n.name, "domains": a.visible(rows)}


@router.post("/hosts/{host}/maintenance")
async def maintenance(host: str, req: MaintenanceRequest, n: Node) -> dict[str, Any]:
    from xenia.cluster.evacuate import set_maintenance

    await set_maintenance(n, host, req.on)
    return {"host": host, "maintenance": req.on}


@router.post("/hosts/{host}/evacuate")
async def evacuate(host: str, req: EvacuateRequest, n: Node) -> dict[str, Any]:
    from xenia.cluster.evacuate import evacuate as run

    n.client()
    if host != n.name:
        # The migrations run on the host being emptied: ask it.
        ans: dict[str, Any] = await n.peer(host, timeout=3600).arequest(
            "POST", "/v1/cluster/forward", {"method": "POST", "path":
                                           f"/v1/cluster/hosts/{host}/evacuate",
                                           "body": req.model_dump()})
        if ans["status"] >= 400:
            from xenia.api.forward import raise_answer

            raise_answer(ans, host)
        return dict(ans["body"])
    return await run(n, req.parallel)


@router.post("/paths")
async def paths(req: PathsRequest) -> dict[str, Any]:
    """Which of these paths exist here (placement's storage check). Existence only."""
    return {"found": [p for p in req.paths if p.startswith("/") and Path(p).exists()]}


@router.post("/forward")
async def forward(req: ForwardRequest, n: Node) -> dict[str, Any]:
    """A request another member forwards, run here as on the local socket: the answer's
    status and body. Only domain verbs, migration jobs and evacuation."""
    n.client()
    path = req.path
    allowed = path.startswith(FORWARDABLE) or (
        path.startswith("/v1/cluster/hosts/") and path.endswith("/evacuate"))
    if not allowed or ".." in path or req.method not in ("GET", "POST", "DELETE", "PUT"):
        raise InvalidConfig(f"Failed to run a forwarded {req.method} {path}: only domain "
                            "verbs and migrations are forwarded between members")
    return await asyncio.to_thread(_local, n, req.method, path, req.body)


def _local(n: ClusterNode, method: str, path: str, body: Any) -> dict[str, Any]:
    from xenia.cli.client import UnixHTTPConnection

    conn = UnixHTTPConnection(str(n.paths.api_socket), 3600)
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {FORWARDED: "1"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        status, raw = resp.status, resp.read()
    except (OSError, http.client.HTTPException) as e:
        raise NotSupported(f"Failed to run a forwarded {method} {path}: {e}") from e
    finally:
        conn.close()
    try:
        decoded = json.loads(raw) if raw else None
    except ValueError:
        decoded = {"error": "XeniaError", "message": raw[:200].decode(errors="replace")}
    return {"status": status, "body": decoded}
