"""ClusterForward: on a cluster member, requests about another member's domain go to that
member, and `xenia create` goes where placement puts it.

An ASGI middleware around the app. It acts only on requests from the local UNIX socket
(root on this host); a request from TCP carries a token whose scopes are checked inside
the app, so it is never forwarded (a TCP client asks the owning member directly). A
forwarded request carries the header x-xenia-forwarded and is never forwarded again.

- POST /v1/domains: placement (cluster/placer.py) picks the member, or the body's "host"
  (`xenia create --host H`); a domain name that exists on another member is refused.
- /v1/domains/{ref}...: when {ref} is no domain here but the cluster-wide list has it on
  member H, the request goes to H (POST /v1/cluster/forward with this member's credential,
  over the peer TLS channel pinned to H's fingerprint). The answer gets "host": H.
- /v1/migrations/{id}...: a migration started through a forward is followed on its host.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, NoReturn

from xenia.errors import KINDS, AlreadyExists, InvalidConfig, XeniaError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_DOMAIN = re.compile(r"^/v1/domains/([^/]+)(/.*)?$")
_JOB = re.compile(r"^/v1/migrations/([^/]+)(/cancel)?$")


def raise_answer(ans: dict[str, Any], host: str) -> NoReturn:
    """A forwarded request's error answer as the XeniaError it was."""
    body = ans.get("body") or {}
    cls = KINDS.get(str(body.get("error", "")), XeniaError)
    raise cls(f"{body.get('message', 'failed')} (on cluster member '{host}')")


async def _respond(send: Send, status: int, body: Any) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        msg = await receive()
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body"):
            return b"".join(chunks)


def replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


async def owner(node: Any, ref: str) -> str | None:
    """The member that has domain `ref`, if it is not this one (None: let the app
    answer, found or not). Also the console relay's (cluster/console.py)."""
    try:
        node.engine.manager.resolve(ref)
        return None
    except XeniaError:
        pass
    import asyncio

    from xenia.cluster.status import cluster_rows

    rows = await asyncio.to_thread(cluster_rows, node.client())
    hits = {r["host"] for r in rows if r.get("host") != node.name
            and ref in (r.get("name"), r.get("uuid"))}
    if len(hits) > 1:
        raise InvalidConfig(f"Failed to find domain '{ref}': members {', '.join(sorted(hits))}"
                            " each have one of that name; name it by its UUID")
    return hits.pop() if hits else None


class ClusterForward:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        node = None
        if scope["type"] == "http" and "app" in scope:
            node = getattr(scope["app"].state, "cluster", None)
        if node is None or not node.is_member:
            await self.app(scope, receive, send)
            return
        state = scope.get("state") or {}
        try:
            if (state.get("access") is not None
                    or any(k == b"x-xenia-forwarded" for k, _ in scope.get("headers", []))):
                await self.app(scope, receive, send)
            else:
                await self._route(node, scope, receive, send)
        except XeniaError as e:
            await _respond(send, e.http_status, {"error": e.kind, "message": e.message})
        finally:
            # The change on its way to the others' lists (forwarded requests too: they
            # change this host's domains).
            if scope["method"] != "GET" and node.publisher is not None:
                node.publisher.kick()

    async def _route(self, node: Any, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        query = scope.get("query_string", b"").decode()
        full = path + (f"?{query}" if query else "")
        if method == "POST" and path == "/v1/domains":
            await self._create(node, scope, receive, send)
            return
        host = None
        m = _DOMAIN.match(path)
        if m:
            host = await owner(node, m.group(1))
        j = _JOB.match(path)
        if j and j.group(1) not in node.engine.sender.jobs:
            host = node.jobs.get(j.group(1))
        if host is None:
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        status, ans = await self._forward(node, host, method, full,
                                          json.loads(body) if body else None)
        if m and (m.group(2) or "") == "/migrate" and isinstance(ans, dict) and ans.get("id"):
            node.jobs[str(ans["id"])] = host
        await _respond(send, status, ans)

    async def _forward(self, node: Any, host: str, method: str, path: str, body: Any
                       ) -> tuple[int, Any]:
        ans = await node.peer(host, timeout=3600).arequest(
            "POST", "/v1/cluster/forward", {"method": method, "path": path, "body": body})
        if ans["status"] >= 400:
            raise_answer(ans, host)
        out = ans["body"]
        if isinstance(out, dict):
            out.setdefault("host", host)
        return int(ans["status"]), out

    async def _create(self, node: Any, scope: Scope, receive: Receive, send: Send) -> None:
        import asyncio

        from xenia.cluster.placer import choose
        from xenia.cluster.status import cluster_rows
        from xenia.config.model import DomainConfig

        raw = await _read_body(receive)
        try:
            body = json.loads(raw)
            wanted = body.pop("host", None)
            cfg = DomainConfig.from_dict(body["config"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise InvalidConfig(f"Failed to read the domain config: {e}") from e
        rows = await asyncio.to_thread(cluster_rows, node.client())
        taken = [r["host"] for r in rows if r.get("name") == cfg.name
                 and r.get("host") != node.name]
        if taken:
            raise AlreadyExists(f"Failed to create domain '{cfg.name}': cluster member "
                                f"'{taken[0]}' has a domain of that name; pick another name")
        decision = await choose(node, cfg, wanted)
        if decision.host == node.name:
            await self.app(scope, replay(json.dumps(body).encode()), send)
            return
        status, ans = await self._forward(node, decision.host, "POST", "/v1/domains", body)
        await _respond(send, status, ans)
