"""RULES: the scope each route needs over TCP, in one table; authorize() applies it.

`enforce`, a global dependency of the app, runs before every route's handler: on TCP it
checks the route's entry against the request's token (TokenAuth put its Access in the
scope), and a route without an entry is refused (403): a route added later is closed to
tokens until someone decides its scope (tests/unit/test_scopes.py checks that every route
has one). On the UNIX socket (root-only) there is no Access and nothing is checked.

How the domain of a request is checked against a token's patterns (Rule.domain):
- REF: the route's `{ref}` names it; it is resolved here (403 naming the pattern).
- HANDLER: the handler checks it through api/access.py (a name in the body, a job's
  domain) or filters its rows by it (lists).
- HOST: the route concerns the host (pools, networks, tokens, ...), no domain.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.exceptions import WebSocketException
from starlette.requests import HTTPConnection

from xenia.api.access import Access
from xenia.api.pathrule import PathRule
from xenia.errors import PermissionDenied, XeniaError
from xenia.peers.scopes import Grant

REF, HANDLER, HOST = "ref", "handler", "host"


@dataclass(frozen=True)
class Rule:
    scopes: tuple[str, ...]  # any one of them will do
    domain: str = HOST
    # Audited: every mutating call (not GET) unless marked read-only (a POST that waits).
    readonly: bool = False


def _r(scopes: str, domain: str = HOST, readonly: bool = False) -> Rule:
    return Rule(tuple(scopes.split("|")), domain, readonly)


D = "/v1/domains/{ref}"
RULES: dict[tuple[str, str], Rule] = {
    # -- host and domains (api/domains.py) -- peers read /v1/host before a migration.
    ("GET", "/v1/host"): _r("read|migrate|cluster"),
    ("GET", "/v1/domains"): _r("read", HANDLER),
    ("POST", "/v1/domains"): _r("create", HANDLER),
    ("GET", D): _r("read", REF),
    ("DELETE", D): _r("create", REF),
    ("POST", D + "/shutdown"): _r("power", REF),
    ("POST", D + "/reboot"): _r("power", REF),
    ("POST", D + "/pause"): _r("power", REF),
    ("POST", D + "/unpause"): _r("power", REF),
    ("POST", D + "/start"): _r("power", REF),  # a preserved domain's boot
    ("POST", D + "/ha"): _r("admin", REF),  # HA: docs/cluster.md
    ("GET", "/v1/ha"): _r("read", HANDLER),  # restarts etc. filtered by patterns
    ("POST", D + "/rename"): _r("create", REF),  # the new name is checked by the handler
    ("POST", D + "/wait"): _r("read", REF, readonly=True),
    ("POST", D + "/save"): _r("create", REF),
    ("POST", "/v1/restore"): _r("create", HANDLER),
    # -- devices of a domain (api/devices.py)
    ("GET", D + "/disks"): _r("read", REF),
    ("POST", D + "/disks"): _r("create", REF),
    ("DELETE", D + "/disks/{vdev}"): _r("create", REF),
    ("POST", D + "/cdrom/{vdev}"): _r("create", REF),
    ("DELETE", D + "/cdrom/{vdev}"): _r("create", REF),
    ("GET", D + "/nics"): _r("read", REF),
    ("POST", D + "/nics"): _r("create", REF),
    ("DELETE", D + "/nics/{devid}"): _r("create", REF),
    ("GET", D + "/pci"): _r("read", REF),
    ("POST", D + "/pci"): _r("create", REF),
    ("DELETE", D + "/pci/{bdf}"): _r("create", REF),
    ("POST", D + "/memory"): _r("create", REF),
    ("POST", D + "/maxmem"): _r("create", REF),
    ("POST", D + "/vcpus"): _r("create", REF),
    ("POST", D + "/vcpu-pin"): _r("create", REF),
    ("POST", D + "/sched-credit"): _r("create", REF),
    ("GET", D + "/screenshot"): _r("console", REF),
    ("POST", D + "/console/run"): _r("console", REF),  # api/console.py
    ("GET", D + "/console/log"): _r("console", REF),
    ("GET", "/v1/stats"): _r("read", HANDLER),
    ("GET", "/v1/vcpus"): _r("read", HANDLER),
    # -- xl's remaining verbs (api/xl.py). The QEMU monitor can do anything QEMU can
    # (read host files through a new -drive, say): admin only, as device_model_args.
    ("POST", D + "/trigger"): _r("power", REF),
    ("POST", D + "/sysrq"): _r("power", REF),
    ("POST", D + "/button"): _r("power", REF),
    ("POST", D + "/monitor"): _r("admin", REF),
    # -- USB and S3 (api/usb.py); a host USB device (hostdev) needs admin (api/access.py).
    ("GET", D + "/usb"): _r("read", REF),
    ("POST", D + "/usbctrl"): _r("create", REF),
    ("DELETE", D + "/usbctrl/{devid}"): _r("create", REF),
    ("POST", D + "/usbdev"): _r("create", REF),
    ("DELETE", D + "/usbdev/{controller}/{port}"): _r("create", REF),
    ("POST", D + "/suspend"): _r("power", REF),
    ("POST", D + "/resume"): _r("power", REF),
    ("GET", "/v1/host/dmesg"): _r("admin"),
    ("POST", D + "/dump-core"): _r("create", REF),  # the file passes the path rule
    ("POST", D + "/config"): _r("create", REF),  # paths and args checked as a create's
    # -- cpupools (api/cpupools.py): host CPUs are the host's, so changes are admin's.
    ("GET", "/v1/cpupools"): _r("read"),
    ("POST", "/v1/cpupools"): _r("admin"),
    ("POST", "/v1/cpupools-numa-split"): _r("admin"),
    ("DELETE", "/v1/cpupools/{name}"): _r("admin"),
    ("POST", "/v1/cpupools/{name}/rename"): _r("admin"),
    ("POST", "/v1/cpupools/{name}/cpus"): _r("admin"),
    ("POST", D + "/cpupool"): _r("admin", REF),
    ("GET", "/v1/sched-credit"): _r("read", HANDLER),
    ("GET", "/v1/pci-assignable"): _r("read"),
    ("POST", "/v1/pci-assignable"): _r("admin"),
    ("DELETE", "/v1/pci-assignable/{bdf}"): _r("admin"),
    # -- migration (api/migration.py): sending is the source's, receiving a peer's.
    ("POST", D + "/migrate"): _r("create", REF),
    ("POST", D + "/migrate/cancel"): _r("create", REF),
    ("GET", "/v1/migrations/{job_id}"): _r("read", HANDLER),
    ("POST", "/v1/migrations/{job_id}/cancel"): _r("create", HANDLER),
    ("POST", "/v1/migrations/check"): _r("migrate|cluster", HANDLER),
    ("POST", "/v1/migrations/incoming"): _r("migrate|cluster", HANDLER),
    ("POST", "/v1/migrations/incoming/{job_id}/commit"): _r("migrate|cluster", HANDLER),
    ("DELETE", "/v1/migrations/incoming/{job_id}"): _r("migrate|cluster", HANDLER),
    ("GET", "/v1/migrations/incoming/{job_id}"): _r("migrate|cluster", HANDLER),
    # -- storage (api/storage.py): volumes are not tied to a domain, so they are admin's.
    ("GET", "/v1/pools"): _r("read"),
    ("POST", "/v1/pools"): _r("admin"),
    ("GET", "/v1/pools/{pool}"): _r("read"),
    ("DELETE", "/v1/pools/{pool}"): _r("admin"),
    ("GET", "/v1/pools/{pool}/volumes"): _r("read"),
    ("POST", "/v1/pools/{pool}/volumes"): _r("admin"),
    ("GET", "/v1/pools/{pool}/volumes/{name}"): _r("read"),
    ("DELETE", "/v1/pools/{pool}/volumes/{name}"): _r("admin"),
    ("POST", "/v1/pools/{pool}/volumes/{name}/clone"): _r("admin"),
    ("POST", "/v1/pools/{pool}/volumes/{name}/resize"): _r("admin"),
    ("GET", "/v1/pools/{pool}/volumes/{name}/snapshots"): _r("read"),
    ("POST", "/v1/pools/{pool}/volumes/{name}/snapshots"): _r("admin"),
    ("DELETE", "/v1/pools/{pool}/volumes/{name}/snapshots/{snap}"): _r("admin"),
    ("POST", "/v1/pools/{pool}/volumes/{name}/snapshots/{snap}/restore"): _r("admin"),
    # -- replicated volumes (api/replicas.py): the replica host's side is a peer's.
    ("POST", "/v1/pools/{pool}/replicated-volumes"): _r("admin"),
    ("POST", "/v1/pools/{pool}/volumes/{name}/resync"): _r("admin"),
    ("GET", "/v1/replicas"): _r("read|migrate|cluster"),
    ("POST", "/v1/replicas"): _r("migrate|cluster"),
    # An export is its maker's (storage/replicas.py): a token re-serves or ends only its
    # own; admin ends any.
    ("DELETE", "/v1/replicas/{pool}/{name}"): _r("migrate|cluster|admin"),
    # -- domain snapshots (api/snapshots.py): a snapshot outlives its domain, so the
    # handler checks the domain name in the path.
    ("POST", D + "/snapshots"): _r("create", REF),
    ("GET", "/v1/domain-snapshots/{dom}"): _r("read", HANDLER),
    ("POST", "/v1/domain-snapshots/{dom}/{snap}/revert"): _r("create", HANDLER),
    ("DELETE", "/v1/domain-snapshots/{dom}/{snap}"): _r("create", HANDLER),
    ("POST", "/v1/domain-snapshots/{dom}/{snap}/start"): _r("create", HANDLER),
    # -- networks (api/network.py)
    ("GET", "/v1/networks"): _r("read"),
    ("POST", "/v1/networks"): _r("admin"),
    ("GET", "/v1/networks/{name}"): _r("read"),
    ("DELETE", "/v1/networks/{name}"): _r("admin"),
    # -- identity, tokens, peers (api/peers.py)
    ("GET", "/v1/host/identity"): _r("read"),
    ("GET", "/v1/host/certificate"): _r("read|migrate|cluster"),
    ("GET", "/v1/host/tokens"): _r("admin"),
    ("POST", "/v1/host/tokens"): _r("admin"),  # no more than the maker (peers/tokens.py)
    ("DELETE", "/v1/host/tokens/{name}"): _r("admin"),
    ("GET", "/v1/peers"): _r("admin"),
    ("POST", "/v1/peers/probe"): _r("admin"),
    ("POST", "/v1/peers"): _r("admin"),
    ("GET", "/v1/peers/{name}"): _r("admin"),
    ("DELETE", "/v1/peers/{name}"): _r("admin"),
    # -- the cluster (api/cluster.py). `cluster` is a member's credential: it joins,
    # forwards domain verbs to the owning member, and sends migrations inside the cluster.
    ("GET", "/v1/cluster"): _r("read"),
    ("GET", "/v1/cluster/domains"): _r("read", HANDLER),
    ("POST", "/v1/cluster/init"): _r("admin"),
    ("POST", "/v1/cluster/token"): _r("admin"),
    ("POST", "/v1/cluster/join"): _r("admin"),
    ("POST", "/v1/cluster/leave"): _r("admin"),
    ("POST", "/v1/cluster/remove"): _r("admin"),
    ("POST", "/v1/cluster/hosts/{host}/maintenance"): _r("admin"),
    ("POST", "/v1/cluster/hosts/{host}/evacuate"): _r("admin"),
    ("POST", "/v1/cluster/admit"): _r("cluster"),
    ("POST", "/v1/cluster/paths"): _r("cluster"),
    ("POST", "/v1/cluster/forward"): _r("cluster"),
    ("GET", "/v1/cluster/quorum"): _r("cluster"),
    # /openapi.json, /docs and /redoc are not path operations: closed over TCP.
    # -- Prometheus (api/metrics.py): rows filtered by the token's domain patterns.
    ("GET", "/metrics"): _r("metrics", HANDLER),
    # -- the web UI's own (api/webui.py): a dry run starts nothing, so it is not audited.
    ("POST", "/v1/config/parse"): _r("create", readonly=True),
    # `cluster`: a member relays `xenia console` of a domain here (cluster/console.py).
    ("WEBSOCKET", D + "/console"): _r("console|cluster", REF),
    ("WEBSOCKET", D + "/vnc"): _r("console", REF),
    ("GET", D + "/history"): _r("read", REF),
    ("GET", "/v1/host/history"): _r("read"),
    ("GET", "/v1/host/audit"): _r("admin"),  # who did what: tokens and clients
    ("GET", "/v1/host/targets"): _r("read"),  # migration targets' names, for the picker
    # -- guest images (api/images.py): a build writes the host's image dir: admin's.
    ("GET", "/v1/images"): _r("read"),
    ("POST", "/v1/images/builds"): _r("admin"),
    ("GET", "/v1/images/builds/{build_id}"): _r("admin"),
}


class ScopeMissing(PermissionDenied):
    """A 403 for a missing scope; `need` names it ("'console'" or "'read' or 'admin'")."""

    def __init__(self, need: str, message: str) -> None:
        super().__init__(message)
        self.need = need


# A WebSocket close reason is at most 123 bytes (RFC 6455): longer ones are cut.
WS_REASON = 120


def ws_reason(e: XeniaError) -> str:
    """A refused WebSocket's close reason: what is missing first, so a long domain name
    in the message cannot push the scope out of the cut."""
    text = f"needs the scope {e.need}: {e.message}" if isinstance(e, ScopeMissing) \
        else e.message
    return text.encode()[:WS_REASON].decode(errors="ignore")


def is_audited(method: str, rule: Rule | None) -> bool:
    return method not in ("GET", "HEAD") and not (rule is not None and rule.readonly)


def lookup(method: str, template: str) -> Rule | None:
    return RULES.get(("GET" if method == "HEAD" else method, template))


def authorize(access: Access, method: str, path: str, template: str, params: dict[str, Any],
              domain_name: Callable[[str], str | None]) -> Rule:
    """The route's rule if `access`'s token may call it; else PermissionDenied naming the
    scope (or the pattern) that is missing."""
    if "ref" in params:
        access.domain = str(params["ref"])
    rule = lookup(method, template)
    if rule is None:
        raise PermissionDenied(
            f"Failed {method} {path}: this route is not open over TCP (no scope covers it); "
            "use the host's local socket"
        )
    grant = access.grant
    assert grant is not None
    if not any(grant.has(s) for s in rule.scopes):
        need = " or ".join(f"'{s}'" for s in rule.scopes)
        raise ScopeMissing(need,
            f"Failed {method} {path}: token '{grant.token}' lacks the scope {need}; make a "
            f"token with it on that host (`xenia host token create --scope "
            f"{rule.scopes[0]}`)"
        )
    if rule.domain == REF and access.domain is not None:
        # A ref that names no domain goes on to the handler, which answers 404.
        name = domain_name(access.domain)
        if name is not None:
            access.require_domain(name, f"{method} {path}")
    return rule


def _domain_name(request: HTTPConnection) -> Callable[[str], str | None]:
    def name(ref: str) -> str | None:
        try:
            return str(request.app.state.engine.manager.resolve(ref).name)
        except XeniaError:
            return None
    return name


async def enforce(request: HTTPConnection) -> None:
    """make_app()'s global dependency: runs before every route's handler (and before its
    body is read). A request from TCP carries an Access (TokenAuth); the route's rule is
    checked against it. TokenAuth refuses any success that did not pass here (routes
    that are not FastAPI's path operations, e.g. /docs, are closed over TCP)."""
    state = request.scope.get("state", {})
    access = state.get("access")
    if not isinstance(access, Access) or access.grant is None:
        return  # the UNIX socket
    route = request.scope.get("route")
    template = str(getattr(route, "path", request.url.path))
    state["route"] = template
    # HTTPConnection, not Request: a websocket route gets the same check.
    method = str(request.scope.get("method", "WEBSOCKET"))
    try:
        rule = authorize(access, method, request.url.path, template,
                         dict(request.path_params), _domain_name(request))
    except XeniaError as e:
        if request.scope.get("type") != "websocket":
            raise
        # The app's exception handlers answer HTTP only; a WebSocket is refused by
        # closing it before the accept (policy violation), with the message as reason.
        raise WebSocketException(code=1008, reason=ws_reason(e)) from e
    state["audited"] = is_audited(method, rule)
    state["authorized"] = True


def make_access_factory(app: Any, allowed: Iterable[Path]) -> Callable[[Grant], Access]:
    """Grant -> its Access on `app` (a make_app() app): the path rule over the host's
    pools and the admin's `allowed` directories."""
    from xenia.storage.manager import POOL_KIND
    from xenia.storage.qemuimg import QemuImg

    store = app.state.engine.store

    def pool_dirs() -> list[str]:
        return [str(rec["config"]["path"]) for rec in store.obj_list(POOL_KIND)
                if rec.get("config", {}).get("path")]

    qemu_img = QemuImg()

    def image_info(path: Path, fmt: str | None) -> dict[str, Any]:
        return qemu_img.info(path, fmt, f"to read the image {path}")

    rule = PathRule(allowed, pool_dirs, image_info)
    return lambda grant: Access(grant, rule)
