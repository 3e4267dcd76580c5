"""Cluster routes under /v1/cluster: the verbs (init, token, join, leave, remove, status),
the cluster-wide domain list, maintenance and evacuation, and the member-to-member routes
(admit, forward, paths) that a member credential (`cluster` scope) may call.

Thin: the work is in cluster/ (node.py, status.py, evacuate.py). api/forward.py sends
requests about another member's domain to that member.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from xenia.api.access import Acc, Access
from xenia.api.deps import Views
from xenia.errors import InvalidConfig, NotSupported, PermissionDenied
from xenia.peers.scopes import Grant

if TYPE_CHECKING:
    from xenia.cluster.node import ClusterNode

router = APIRouter(prefix="/v1/cluster")

FORWARDED = "x-xenia-forwarded"
# What a member may forward to another: the domain verbs and migration jobs; nothing that
# changes the host itself (pools, networks, tokens, peers, cluster membership).
FORWARDABLE = ("/v1/domains", "/v1/migrations/")
# A forwarded request runs with these scopes (forward() below). Admin's only for a
# domain's HA flag and evacuation, which name no file and pass nothing to QEMU.
FORWARD_SCOPES = frozenset({"read", "power", "create", "console"})
ADMIN_FORWARDS = re.compile(r"/v1/(domains/[^/?]+/ha|cluster/hosts/[^/?]+/evacuate)")
MEMBER_PREFIX = "member:"  # cluster/node.py's grants of member credentials


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
async def forward(req: ForwardRequest, request: Request, n: Node, a: Acc) -> dict[str, Any]:
    """A request another member forwards: the answer's status and body. Only domain
    verbs, migration jobs and evacuation, and only from a member's credential (a join
    token, or any other token with the `cluster` scope, is refused).

    It runs here with the member's own Access, not root's: the scopes of FORWARD_SCOPES
    (no `admin`: no /monitor, device_model_args, host USB, container privileges)
    and this host's path rule. A member taken over is then no more than a `create` token
    on the others."""
    n.client()
    path = req.path
    allowed = path.startswith(FORWARDABLE) or (
        path.startswith("/v1/cluster/hosts/") and path.endswith("/evacuate"))
    if not allowed or ".." in path or req.method not in ("GET", "POST", "DELETE", "PUT"):
        raise InvalidConfig(f"Failed to run a forwarded {req.method} {path}: only domain "
                            "verbs and migrations are forwarded between members")
    inner = _member_access(a, n, req.method, path)
    status, body, route = await run_inner(request.app, inner, req.method, path, req.body)
    # The audit line of this call (peers/auth.py) names the request run, and its domain.
    a.domain = inner.domain
    request.scope.setdefault("state", {})["audit_extra"] = {
        "forwarded": {"method": req.method, "route": route, "status": status}}
    return {"status": status, "body": body}


def _member_access(a: Access, n: ClusterNode, method: str, path: str) -> Access:
    """The Access a forwarded request runs with: unlimited from the UNIX socket (root
    here already); from TCP only a current member's credential (node.verify's
    `member:NAME` grants; a token's name cannot hold a colon), with FORWARD_SCOPES."""
    if a.grant is None:
        return Access()
    token = a.grant.token
    member = token.removeprefix(MEMBER_PREFIX)
    if not token.startswith(MEMBER_PREFIX) or member not in n.members:
        raise PermissionDenied(
            f"Failed to run a forwarded {method} {path}: only a cluster member's own "
            f"credential may forward requests, and token '{token}' is not one (a join "
            "token or a host token with the 'cluster' scope is not)")
    scopes = FORWARD_SCOPES | ({"admin"} if ADMIN_FORWARDS.fullmatch(path) else set())
    return Access(Grant(token, frozenset(scopes)), a.paths)


async def run_inner(app: Any, access: Access, method: str, path: str, body: Any
                    ) -> tuple[int, Any, str]:
    """`method path` through `app` in this process with `access` (its scopes, patterns
    and path rule checked as for a token): (status, decoded body, route template).
    `path` is as the sending member's ASGI scope had it: decoded already (decoding it
    again would turn a checked %2e%2e into ..)."""
    from xenia.api.forward import replay

    where, _, query = path.partition("?")
    data = b"" if body is None else json.dumps(body).encode()
    headers = [(FORWARDED.encode(), b"1"), (b"content-length", str(len(data)).encode())]
    if body is not None:
        headers.append((b"content-type", b"application/json"))
    state: dict[str, Any] = {"access": access}
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "https", "path": where,
             "raw_path": where.encode(), "query_string": query.encode(), "root_path": "",
             "headers": headers, "client": None, "server": None, "state": state}
    status, chunks = 500, []

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, replay(data), send)
    raw = b"".join(chunks)
    try:
        decoded = json.loads(raw) if raw else None
    except ValueError:
        decoded = {"error": "XeniaError", "message": raw[:200].decode(errors="replace")}
    return status, decoded, str(state.get("route", where))
