"""Scoped tokens on TCP, through FastAPI's test client: the route table, missing scopes,
domain patterns, the path rule, token minting, the audit log. The daemon with a real
listener and guests: tests/integration/test_scopes.py."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from xenia.api.app import make_app
from xenia.api.scopes import RULES, lookup, make_access_factory
from xenia.cli.hosts import format_tokens
from xenia.config.model import DomainConfig
from xenia.errors import InvalidConfig, NotFound, PermissionDenied
from xenia.paths import Paths
from xenia.peers.audit import AuditLog
from xenia.peers.auth import TokenAuth
from xenia.peers.scopes import SCOPES, Grant, parse_patterns, parse_scopes
from xenia.peers.tokens import KIND as TOKEN_KIND
from xenia.peers.tokens import TokenRegistry, hash_token
from xenia.store.sqlite import SqliteStore


# -- the table -----------------------------------------------------------------------------
def every_route() -> list[tuple[str, str]]:
    """(method, path template) of every path operation of the app, as its OpenAPI
    description lists them (FastAPI's public view of its routes)."""
    from fastapi.routing import APIWebSocketRoute

    app = make_app(SimpleNamespace())  # type: ignore[arg-type]
    # OpenAPI leaves WebSocket routes out; enforce() checks them as method WEBSOCKET.
    # (routers are included without a prefix of their own: the path is the route's)
    routers = [getattr(r, "original_router", None) for r in app.routes]
    sockets = [("WEBSOCKET", r.path) for router in routers if router is not None
               for r in router.routes if isinstance(r, APIWebSocketRoute)]
    return [(method.upper(), path) for path, ops in app.openapi()["paths"].items()
            for method in ops] + sockets


def test_every_route_has_a_scope() -> None:
    missing = [r for r in every_route() if lookup(*r) is None]
    assert len(every_route()) > 70
    assert missing == [], f"routes without a scope in api/scopes.py RULES: {missing}"
    stale = sorted(set(RULES) - set(every_route()))
    assert stale == [], f"RULES entries without a route: {stale}"
    for rule in RULES.values():
        assert rule.scopes and all(s in SCOPES for s in rule.scopes)


def test_scope_table_follows_the_issue() -> None:
    d = "/v1/domains/{ref}"
    assert lookup("POST", d + "/shutdown").scopes == ("power",)  # type: ignore[union-attr]
    assert lookup("POST", "/v1/domains").scopes == ("create",)  # type: ignore[union-attr]
    assert lookup("POST", "/v1/networks").scopes == ("admin",)  # type: ignore[union-attr]
    assert lookup("GET", d + "/screenshot").scopes == ("console",)  # type: ignore[union-attr]
    # `migrate` opens the incoming side, what a peer reads first, and keeping a
    # replicated volume's copy for a peer (its data, like a migration's), nothing else.
    migrate = sorted(k for k, r in RULES.items() if "migrate" in r.scopes)
    assert migrate == sorted([
        ("GET", "/v1/host"), ("GET", "/v1/host/certificate"),
        ("POST", "/v1/migrations/check"), ("POST", "/v1/migrations/incoming"),
        ("POST", "/v1/migrations/incoming/{job_id}/commit"),
        ("DELETE", "/v1/migrations/incoming/{job_id}"),
        ("GET", "/v1/migrations/incoming/{job_id}"),
        ("GET", "/v1/replicas"), ("POST", "/v1/replicas"),
        ("DELETE", "/v1/replicas/{pool}/{name}")])


def test_parse_scopes_and_patterns() -> None:
    assert parse_scopes(["power,read", " console "]) == ("read", "console", "power")
    assert parse_scopes(["all"]) == tuple(SCOPES)
    with pytest.raises(InvalidConfig, match="no such scope; use some of read, console"):
        parse_scopes(["read,root"])
    with pytest.raises(InvalidConfig, match="none given"):
        parse_scopes([","])
    assert parse_patterns(["web-*,db-?", "web-*"]) == ("web-*", "db-?")
    for bad in ("a/b", "x" * 65, "web *", "$(x)"):
        with pytest.raises(InvalidConfig, match="Failed to read the domain pattern"):
            parse_patterns([bad])
    g = Grant("t", frozenset({"read"}), ("web-*",))
    assert g.allows_domain("web-1") and not g.allows_domain("db-1")
    assert not g.allows_domain("WEB-1")  # names are case-sensitive
    assert g.covers(["read"], ("web-*",)) is None
    assert "lacks (power)" in str(g.covers(["power"], ("web-*",)))
    assert "exactly that" in str(g.covers(["read"], ()))


# -- a host behind TokenAuth ---------------------------------------------------------------
@dataclass
class Dom:
    name: str
    uuid: str
    domid: int


@dataclass
class FakeManager:
    """The manager methods the routes under test call; records what ran."""

    paths: Paths
    store: SqliteStore
    calls: list[tuple[str, Any]] = field(default_factory=list)
    doms: dict[str, Dom] = field(default_factory=dict)
    restore_config: DomainConfig | None = None

    def __post_init__(self) -> None:
        for i, n in enumerate(("web-1", "web-2", "db-1"), 1):
            self.doms[n] = Dom(n, f"uuid-{n}", i)
        self.storage = SimpleNamespace(create_pool=self._pool)
        self.receiver = SimpleNamespace(jobs={}, prepare=self._prepare,
                                        check=lambda *a: [])

    def _pool(self, name: str, type: str, path: str | None, device: str | None = None,
              vg: str | None = None, shared: bool = False) -> Any:
        self.calls.append(("pool", path))
        return SimpleNamespace(to_dict=lambda: {"name": name})

    async def _prepare(self, req: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("prepare", req["record"]["config"]["name"]))
        return {"port": 1}

    def host_info(self) -> dict[str, Any]:
        return {"host": "b", "domains": len(self.doms)}

    def resolve(self, ref: str) -> Dom:
        for d in self.doms.values():
            if ref in (d.name, d.uuid, str(d.domid)):
                return d
        raise NotFound(f"Failed to find domain '{ref}'")

    def describe(self, d: Any) -> dict[str, Any]:
        return {"name": d.name, "domid": d.domid}

    def list(self) -> list[dict[str, Any]]:
        return [{"name": "Domain-0", "domid": 0}] + [self.describe(d)
                                                     for d in self.doms.values()]

    async def stats(self) -> list[dict[str, Any]]:
        return self.list()

    async def create(self, cfg: DomainConfig, paused: bool = False) -> Dom:
        self.calls.append(("create", cfg.name))
        return Dom(cfg.name, "u", 9)

    async def shutdown(self, ref: str, wait: bool = False) -> None:
        self.calls.append(("shutdown", self.resolve(ref).name))

    async def destroy(self, ref: str) -> None:
        self.calls.append(("destroy", self.resolve(ref).name))

    async def start(self, ref: str) -> Dom:
        self.calls.append(("start", self.resolve(ref).name))
        return self.resolve(ref)

    async def rename(self, ref: str, new: str) -> Dom:
        self.calls.append(("rename", new))
        return Dom(new, "u", 1)

    async def save(self, ref: str, path: str, keep: bool, paused: bool) -> dict[str, Any]:
        self.calls.append(("save", path))
        return {}

    async def restore(self, path: str, paused: bool, overrides: Any, admit: Any) -> Dom:
        cfg = self.restore_config or DomainConfig(name="web-9")
        admit(cfg)
        self.calls.append(("restore", cfg.name))
        return Dom(cfg.name, "u", 9)

    async def wait_stopped(self, uuid: str, timeout: float | None) -> None:
        pass

    async def block_attach(self, ref: str, spec: Any) -> None:
        self.calls.append(("block-attach", spec.target))

    async def cd_insert(self, ref: str, vdev: str, target: str, fmt: str) -> None:
        self.calls.append(("cd-insert", target))

    async def usbdev_attach(self, ref: str, dev: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("usbdev", dev.get("path") or dev["type"]))
        return {}


@dataclass
class FakeClones:
    """Clones.start: admits the snapshot's config (`config`, renamed), records the start."""

    m: FakeManager
    config: DomainConfig | None = None

    async def start(self, ref: str, name: str, paused: bool = False, admit: Any = None
                    ) -> Dom:
        cfg = DomainConfig.from_dict({**(self.config or DomainConfig(name=name)).to_dict(),
                                      "name": name})
        if admit is not None:
            admit(cfg)
        self.m.calls.append(("clone", f"{ref}->{name}"))
        return Dom(name, "u", 9)


@dataclass
class Host:
    tcp: TestClient
    local: TestClient
    m: FakeManager
    tokens: TokenRegistry
    allowed: Path
    outside: Path
    audit: Path

    def token(self, *scopes: str, domains: tuple[str, ...] = (), name: str | None = None
              ) -> dict[str, str]:
        _, t = self.tokens.create(name, list(scopes) or None, list(domains))
        return {"Authorization": f"Bearer {t}"}

    def audit_lines(self) -> list[dict[str, Any]]:
        if not self.audit.exists():
            return []
        return [json.loads(line) for line in self.audit.read_text().splitlines()]


def fake_app(tmp_path: Path) -> tuple[Any, FakeManager, Paths, SqliteStore, TokenRegistry]:
    """The API app over a FakeManager, and its paths, store and token registry."""
    paths = Paths(state=tmp_path / "state", run=tmp_path / "run")
    paths.ensure()
    store = SqliteStore(paths.db)
    m = FakeManager(paths, store)
    # The fake stands for each engine part the routes under test use.
    engine = SimpleNamespace(paths=paths, store=store, manager=m, views=m, devices=m, saves=m,
                             clones=FakeClones(m), storage=m.storage, receiver=m.receiver)
    return make_app(engine), m, paths, store, TokenRegistry(store)  # type: ignore[arg-type]


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    app, m, paths, store, tokens = fake_app(tmp_path)
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    audit = AuditLog(paths.audit_log)
    guarded = TokenAuth(app, tokens.verify, make_access_factory(app, [allowed]), audit)
    with TestClient(guarded) as tcp, TestClient(app) as local:  # type: ignore[arg-type]
        yield Host(tcp, local, m, tokens, allowed, outside, paths.audit_log)
    audit.close()
    store.close()


def refused(r: Any, *words: str) -> None:
    assert r.status_code == 403, r.text
    body = r.json()
    assert body["error"] == "permission-denied", body
    for w in words:
        assert w in body["message"], (w, body["message"])


def test_missing_scope_is_403_naming_it(host: Host) -> None:
    read = host.token("read", name="ro")
    r = host.tcp.get("/v1/domains", headers=read)
    assert r.status_code == 200 and len(r.json()) == 4
    refused(host.tcp.post("/v1/domains/web-1/shutdown", headers=read, json={}),
            "token 'ro' lacks the scope 'power'", "--scope power")
    refused(host.tcp.delete("/v1/domains/web-1", headers=read), "'create'")
    refused(host.tcp.post("/v1/networks", headers=read, json={"name": "x"}), "'admin'")
    refused(host.tcp.get("/v1/domains/web-1/screenshot", headers=read), "'console'")
    assert host.m.calls == []  # nothing ran
    power = host.token("power")
    assert host.tcp.post("/v1/domains/web-1/shutdown", headers=power, json={}).status_code == 200
    refused(host.tcp.get("/v1/domains", headers=power), "'read'")
    assert host.m.calls == [("shutdown", "web-1")]


def test_start_needs_power(host: Host) -> None:
    assert lookup("POST", "/v1/domains/{ref}/start").scopes == ("power",)  # type: ignore[union-attr]
    for scopes in (("read",), ("read", "create", "console")):
        refused(host.tcp.post("/v1/domains/web-1/start", headers=host.token(*scopes, name="t"
                              + str(len(scopes)))), "lacks the scope 'power'", "--scope power")
    assert host.m.calls == []
    # A power token limited to web-*: web-1 starts (the domain's view comes back), db-1 not.
    power = host.token("power", domains=("web-*",))
    r = host.tcp.post("/v1/domains/web-1/start", headers=power)
    assert r.status_code == 200 and r.json() == {"name": "web-1", "domid": 1}
    refused(host.tcp.post("/v1/domains/db-1/start", headers=power), "web-*")
    assert host.m.calls == [("start", "web-1")]


def test_peer_and_legacy_tokens_only_migrate(host: Host) -> None:
    peer = host.token()  # no --scope: a peer's token
    assert host.tokens.list()[0]["scopes"] == ["migrate"]
    # A token stored before scopes existed: only ever given to peers.
    host.m.store.obj_put(TOKEN_KIND, "old", {"name": "old", "sha256": hash_token("xenia_old"),
                                             "created": 1.0})
    old = {"Authorization": "Bearer xenia_old"}
    for h in (peer, old):
        assert host.tcp.get("/v1/host", headers=h).json()["host"] == "b"
        refused(host.tcp.get("/v1/domains", headers=h), "'read'")
        refused(host.tcp.post("/v1/domains/web-1/shutdown", headers=h, json={}), "'power'")
        refused(host.tcp.get("/v1/host/tokens", headers=h), "'admin'")
        r = host.tcp.post("/v1/migrations/check", headers=h,
                          json={"record": {"config": {"name": "web-5"}}})
        assert r.status_code == 200, r.text
    legacy = next(t for t in host.local.get("/v1/host/tokens").json() if t["name"] == "old")
    assert legacy["legacy"] and legacy["scopes"] == ["migrate"]
    assert "migrate (legacy)" in format_tokens([legacy])[1]


def test_unknown_routes_are_refused_over_tcp(host: Host) -> None:
    app = host.local.app

    @app.post("/v1/added-later")  # type: ignore[attr-defined, untyped-decorator]
    async def added() -> dict[str, str]:
        host.m.calls.append(("added", None))
        return {}

    everything = host.token("all")
    refused(host.tcp.post("/v1/added-later", headers=everything),
            "not open over TCP (no scope covers it)")
    assert host.m.calls == []
    assert host.local.post("/v1/added-later").status_code == 200
    r = host.tcp.get("/v1/no-such-route", headers=everything)
    assert r.status_code == 404
    # Routes that are not path operations (FastAPI's docs) are closed too.
    refused(host.tcp.get("/openapi.json", headers=everything), "not open over TCP")
    refused(host.tcp.get("/docs", headers=everything), "not open over TCP")
    assert host.local.get("/openapi.json").status_code == 200
    # Without a token nothing about routes is told.
    assert host.tcp.get("/v1/no-such-route").status_code == 401


def test_domain_patterns(host: Host) -> None:
    web = host.token("read", "power", "create", domains=("web-*",), name="web")
    names = [d["name"] for d in host.tcp.get("/v1/domains", headers=web).json()]
    assert names == ["Domain-0", "web-1", "web-2"]
    assert [d["name"] for d in host.tcp.get("/v1/stats", headers=web).json()] == names
    refused(host.tcp.post("/v1/domains/db-1/shutdown", headers=web, json={}),
            "limited to domains matching 'web-*'", "'db-1' does not match")
    # By domid and uuid too: the ref is resolved before the check.
    refused(host.tcp.post("/v1/domains/3/shutdown", headers=web, json={}), "'db-1'")
    refused(host.tcp.get("/v1/domains/uuid-db-1", headers=web), "'web-*'")
    assert host.tcp.post("/v1/domains/web-2/shutdown", headers=web, json={}).status_code == 200
    refused(host.tcp.post("/v1/domains", headers=web, json={"config": {"name": "db-2"}}),
            "to create domain 'db-2'", "'web-*'")
    refused(host.tcp.post("/v1/domains/web-1/rename", headers=web, json={"name": "db-9"}),
            "'db-9' does not match")
    # A ref that names no domain is the handler's 404, not a hint.
    assert host.tcp.get("/v1/domains/nope", headers=web).status_code == 404
    r = host.tcp.post("/v1/domains", headers=web, json={"config": {"name": "web-3"}})
    assert r.status_code == 201, r.text
    assert host.m.calls == [("shutdown", "web-2"), ("create", "web-3")]
    # A clone of another domain's snapshot, under a name of its own patterns, is refused.
    refused(host.tcp.post("/v1/domains", headers=web, json={
        "config": {"name": "web-8", "from_snapshot": "db-1@s"}}),
        "from a snapshot of 'db-1'", "'web-*'")
    r = host.tcp.post("/v1/domains", headers=web,
                      json={"config": {"name": "web-8", "from_snapshot": "web-1@s"}})
    assert r.status_code == 201, r.text
    assert host.m.calls[2:] == [("clone", "web-1@s->web-8")]
    # An incoming migration of another name is refused for a pattern-limited peer.
    mig = host.token("migrate", domains=("web-*",))
    refused(host.tcp.post("/v1/migrations/incoming", headers=mig,
                          json={"id": "j", "record": {"config": {"name": "db-1"}}}), "'db-1'")
    r = host.tcp.post("/v1/migrations/incoming", headers=mig,
                      json={"id": "j", "record": {"config": {"name": "web-7"}}})
    assert r.status_code == 201, r.text


def test_paths_over_tcp(host: Host) -> None:
    make = host.token("create")
    inside = host.allowed / "k"
    inside.write_text("kernel")
    outside = host.outside / "k"
    outside.write_text("secret")

    def create(**cfg: Any) -> Any:
        return host.tcp.post("/v1/domains", headers=make,
                             json={"config": {"name": "web-5", **cfg}})

    refused(create(kernel=str(outside)), f"the kernel '{outside}'",
            "xeniad --allow-path DIR", str(host.allowed))
    refused(create(kernel="vmlinuz"), "must be absolute")
    refused(create(kernel=str(host.allowed / ".." / "outside" / "k")), "resolved")
    link = host.allowed / "link"
    link.symlink_to(outside)
    refused(create(ramdisk=str(link)), f"resolved: '{outside}'")
    refused(create(disks=[{"vdev": "xvda", "target": str(outside)}]), "disk xvda")
    refused(create(disks=[{"vdev": "xvda", "target": "sda", "backendtype": "phy"}]),
            "'/dev/sda'")
    refused(create(type="container", rootfs="/"), "rootfs")
    refused(create(firmware="/etc/passwd"), "firmware")
    assert host.m.calls == []
    assert create(kernel=str(inside), disks=[{"vdev": "xvdb", "format": "empty",
                                              "devtype": "cdrom"}]).status_code == 201
    # The root-only socket is not limited.
    r = host.local.post("/v1/domains", json={"config": {"name": "x", "kernel": str(outside)}})
    assert r.status_code == 201
    # Hot-plug, cdroms, save, restore, pools.
    refused(host.tcp.post("/v1/domains/web-1/disks", headers=make,
                          json={"args": [f"vdev=xvdc,target={outside}"]}), "disk xvdc")
    refused(host.tcp.post("/v1/domains/web-1/cdrom/hdc", headers=make,
                          json={"target": str(outside)}), "cdrom hdc")
    refused(host.tcp.post("/v1/domains/web-1/save", headers=make,
                          json={"file": str(host.outside / "s")}), "save file")
    refused(host.tcp.post("/v1/restore", headers=make, json={"file": str(outside)}),
            "save file")
    host.m.restore_config = DomainConfig(name="web-9", kernel="/etc/passwd")
    (host.allowed / "s").write_text("")
    refused(host.tcp.post("/v1/restore", headers=make, json={"file": str(host.allowed / "s")}),
            "the kernel '/etc/passwd'")
    host.m.restore_config = None
    path_fields(host, make, outside, inside)
    admin = host.token("admin")
    refused(host.tcp.post("/v1/pools", headers=admin, json={"name": "p", "path": "/etc"}),
            "pool directory '/etc'")
    r = host.tcp.post("/v1/pools", headers=admin,
                      json={"name": "p", "path": str(host.allowed / "p")})
    assert r.status_code == 201, r.text
    assert [c for c in host.m.calls if c[0] == "pool"] == [("pool", str(host.allowed / "p"))]


def path_fields(host: Host, make: dict[str, str], outside: Path, inside: Path) -> None:
    """test_paths_over_tcp's other fields: serial and channel files, a core dump, USB
    hot-plug, config-update, clones (create's from_snapshot, clone-start), host USB."""
    before = list(host.m.calls)

    def create(**cfg: Any) -> Any:
        return host.tcp.post("/v1/domains", headers=make,
                             json={"config": {"name": "web-5", **cfg}})

    refused(create(serial=["pty", f"file:{outside}"]), "a serial port or channel socket",
            str(outside))
    refused(create(channel=[f"name=org.x.y,connection=socket,path={host.outside}/s"]),
            f"'{host.outside}/s'")
    refused(create(usbdev=[{"type": "hostdev", "hostbus": 1, "hostaddr": 2}]),
            "host USB device (type=hostdev)", "'admin' scope")
    w = "/v1/domains/web-1"
    refused(host.tcp.post(w + "/dump-core", headers=make, json={"file": str(outside)}),
            "core file")
    refused(host.tcp.post(w + "/usbdev", headers=make,
                          json={"spec": f"type=storage,path={outside}"}), "usbdev storage")
    refused(host.tcp.post(w + "/usbdev", headers=make,
                          json={"spec": "type=hostdev,hostbus=1,hostaddr=2"}),
            "host USB device", "'admin' scope")
    refused(host.tcp.post(w + "/config", headers=make,
                          json={"config": {"name": "web-1", "ramdisk": str(outside)}}),
            f"the ramdisk '{outside}'")
    # A clone's config comes from the snapshot: its paths are checked as a create's.
    host.local.app.state.engine.clones.config = DomainConfig(  # type: ignore[attr-defined]
        name="x", kernel=str(outside))
    refused(create(from_snapshot="web-1@s"), f"the kernel '{outside}'")
    refused(host.tcp.post("/v1/domain-snapshots/web-1/s/start", headers=make,
                          json={"name": "web-6"}), f"the kernel '{outside}'")
    assert host.m.calls == before  # nothing ran
    host.local.app.state.engine.clones.config = None  # type: ignore[attr-defined]
    r = host.tcp.post(w + "/usbdev", headers=make, json={"spec": f"type=storage,path={inside}"})
    assert r.status_code == 201, r.text
    r = host.tcp.post("/v1/domain-snapshots/web-1/s/start", headers=make, json={"name": "web-6"})
    assert r.status_code == 201, r.text
    assert host.m.calls[len(before):] == [("usbdev", str(inside)), ("clone", "web-1@s->web-6")]


def test_container_privileges_need_admin(host: Host) -> None:
    """cap_add beyond the default set, pids_limit = 0 or above the default and idmap
    loosen a container's hardening: over TCP only an admin token may ask for them."""
    rootfs = host.allowed / "rootfs"
    rootfs.mkdir()

    def create(h: dict[str, str], **cfg: Any) -> Any:
        return host.tcp.post("/v1/domains", headers=h, json={"config": {
            "name": "ct", "type": "container", "rootfs": str(rootfs), **cfg}})

    make = host.token("create")
    for cfg, words in (({"cap_add": ["CAP_SYS_ADMIN"]}, "cap_add CAP_SYS_ADMIN"),
                       ({"cap_add": ["net_admin"]}, "cap_add net_admin"),
                       ({"pids_limit": 0}, "pids_limit = 0"),
                       ({"pids_limit": 4194304}, "pids_limit = 4194304"),
                       ({"pids_limit": 2049}, "pids_limit = 2049"),
                       ({"idmap": "100000:65536"}, "idmap '100000:65536'")):
        refused(create(make, **cfg), words, "'admin' scope")
    assert host.m.calls == []
    # The default set, a limit of its own and dropped capabilities are the creator's.
    r = create(make, cap_add=["CAP_CHOWN"], cap_drop=["CAP_KILL"], pids_limit=2048)
    assert r.status_code == 201, r.text
    r = create(host.token("create", "admin"), cap_add=["CAP_SYS_ADMIN"], pids_limit=0)
    assert r.status_code == 201, r.text
    assert host.m.calls == [("create", "ct"), ("create", "ct")]


def test_a_pools_directory_is_allowed(host: Host, tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "d.raw").write_bytes(b"\0" * 512)
    host.m.store.obj_put("pool", "p", {"name": "p", "config": {"path": str(pool)}})
    r = host.tcp.post("/v1/domains/web-1/disks", headers=host.token("create"),
                      json={"args": [f"format=raw,vdev=xvdc,target={pool}/d.raw"]})
    assert r.status_code == 201, r.text


def test_backing_chain_is_checked(host: Host) -> None:
    """A qcow2 in an allowed dir naming a host file as its backing file is refused."""
    evil = host.allowed / "evil.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/passwd", "-F",
                    "raw", "-u", str(evil), "1M"], check=True)
    make = host.token("create")
    refused(host.tcp.post("/v1/domains/web-1/disks", headers=make,
                          json={"args": [f"format=qcow2,vdev=xvdc,target={evil}"]}),
            "backing file of disk xvdc '/etc/passwd'")
    base = host.allowed / "base.raw"
    base.write_bytes(b"\0" * 4096)
    good = host.allowed / "good.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw",
                    str(good)], check=True)
    r = host.tcp.post("/v1/domains/web-1/disks", headers=make,
                      json={"args": [f"format=qcow2,vdev=xvdc,target={good}"]})
    assert r.status_code == 201, r.text
    # An external data file (qcow2's data_file) is opened by QEMU too: checked the same.
    # (qemu-img create makes and truncates the data file: never name a host file here.)
    victim = host.outside / "victim.raw"
    data = host.allowed / "data.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                    f"data_file={victim},data_file_raw=on", str(data), "1M"], check=True)
    refused(host.tcp.post("/v1/domains/web-1/disks", headers=make,
                          json={"args": [f"format=qcow2,vdev=xvde,target={data}"]}),
            f"data file of disk xvde '{victim}'")
    # A relative name is opened from QEMU's working directory, wherever that is: refused.
    rel = host.allowed / "rel.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "data_file=rel.raw",
                    str(rel), "1M"], check=True, cwd=host.allowed)
    refused(host.tcp.post("/v1/domains/web-1/disks", headers=make,
                          json={"args": [f"format=qcow2,vdev=xvde,target={rel}"]}),
            "data file of disk xvde 'rel.raw'", "must be absolute")
    inner = host.allowed / "inner.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                    f"data_file={host.allowed}/inner.raw", str(inner), "1M"], check=True)
    r = host.tcp.post("/v1/domains/web-1/disks", headers=make,
                      json={"args": [f"format=qcow2,vdev=xvde,target={inner}"]})
    assert r.status_code == 201, r.text
    # Read as raw, the same file opens nothing else: allowed.
    r = host.tcp.post("/v1/domains/web-1/disks", headers=make,
                      json={"args": [f"format=raw,vdev=xvdd,target={evil}"]})
    assert r.status_code == 201, r.text


def test_tokens_over_tcp_cannot_exceed_their_maker(host: Host) -> None:
    admin = host.token("admin", "read", name="boss")
    r = host.tcp.post("/v1/host/tokens", headers=admin, json={"name": "x", "scopes": ["power"]})
    refused(r, "Failed to create token 'x'", "lacks (power)")
    r = host.tcp.post("/v1/host/tokens", headers=admin, json={"name": "kid", "scopes": ["read"]})
    assert r.status_code == 201 and r.json()["parent"] == "boss"
    kid = {"Authorization": f"Bearer {r.json()['token']}"}
    r = host.tcp.post("/v1/host/tokens", headers=admin,
                      json={"name": "gk", "scopes": ["admin"]})
    grandkid = {"Authorization": f"Bearer {r.json()['token']}"}
    assert host.tcp.get("/v1/domains", headers=kid).status_code == 200
    # Revoking the maker revokes what it made: a leaked token's offspring die with it.
    r = host.local.delete("/v1/host/tokens/boss")
    assert sorted(r.json()["revoked"]) == ["boss", "gk", "kid"]
    for h in (admin, kid, grandkid):
        assert host.tcp.get("/v1/host", headers=h).status_code == 401
    limited = host.token("admin", domains=("web-*",))
    refused(host.tcp.post("/v1/host/tokens", headers=limited, json={"scopes": ["admin"]}),
            "exactly that")
    r = host.tcp.post("/v1/host/tokens", headers=limited,
                      json={"scopes": ["admin"], "domains": ["web-*"]})
    assert r.status_code == 201 and r.json()["domains"] == ["web-*"]


def test_audit_log(host: Host) -> None:
    ops = host.token("read", "power", name="ops")
    host.tcp.get("/v1/domains", headers=ops)
    assert host.tcp.post("/v1/domains/web-1/wait", headers=ops,
                         json={"timeout": 0}).status_code == 200
    assert host.audit_lines() == []  # reads are not audited
    host.tcp.post("/v1/domains/2/shutdown", headers=ops, json={})
    host.tcp.delete("/v1/domains/web-1", headers=ops)
    host.tcp.post("/v1/domains/web-1/pause", headers={"Authorization": "Bearer xenia_bad"})
    host.local.post("/v1/domains/web-1/shutdown", json={})  # the local socket: not here
    lines = host.audit_lines()
    for line in lines:
        assert line.pop("time")
    assert lines == [
        {"token": "ops", "client": "testclient", "method": "POST",
         "route": "/v1/domains/{ref}/shutdown", "path": "/v1/domains/2/shutdown",
         "domain": "web-2", "status": 200},
        {"token": "ops", "client": "testclient", "method": "DELETE",
         "route": "/v1/domains/{ref}", "path": "/v1/domains/web-1", "domain": "web-1",
         "status": 403},
        {"token": None, "client": "testclient", "method": "POST",
         "route": "/v1/domains/web-1/pause", "path": "/v1/domains/web-1/pause",
         "domain": None, "status": 401},
    ]
    assert host.audit.stat().st_mode & 0o777 == 0o600


def test_audit_records_the_domain_of_a_create(host: Host) -> None:
    h = host.token("create", name="maker")
    host.tcp.post("/v1/domains", headers=h, json={"config": {"name": "web-4"}})
    (line,) = host.audit_lines()
    assert line["domain"] == "web-4" and line["status"] == 201 and line["token"] == "maker"


def test_format_tokens() -> None:
    lines = format_tokens([{"name": "p", "created": 0, "scopes": ["read", "power"],
                            "domains": ["web-*"], "parent": None},
                           {"name": "q", "created": 0, "scopes": ["migrate"], "domains": [],
                            "parent": "p"}])
    assert lines[0].split() == ["NAME", "SCOPES", "DOMAINS", "CREATED", "MADE", "BY"]
    assert lines[1].split()[:3] == ["p", "read,power", "web-*"]
    assert lines[2].split()[:3] == ["q", "migrate", "*"] and lines[2].split()[-1] == "p"


# -- at rest -------------------------------------------------------------------------------
def mode(p: Path) -> int:
    return p.stat().st_mode & 0o777


def test_database_files_are_root_only(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        db = tmp_path / "x.db"
        st = SqliteStore(db)
        st.obj_put("k", "n", {"a": 1})
        assert mode(db) == 0o600
        assert mode(tmp_path / "x.db-wal") == 0o600 and mode(tmp_path / "x.db-shm") == 0o600
        st.close()
        # A database an older Xenia left world-readable is fixed at the next open.
        os.chmod(db, 0o644)
        SqliteStore(db).close()
        assert mode(db) == 0o600
    finally:
        os.umask(old)


def test_state_dirs_and_logs_fixed_at_start(tmp_path: Path) -> None:
    paths = Paths(state=tmp_path / "s", run=tmp_path / "r")
    paths.ensure()
    for p in (paths.state, paths.run):
        os.chmod(p, 0o755)
    paths.daemon_log.write_text("")
    os.chmod(paths.daemon_log, 0o644)
    paths.ensure()
    assert mode(paths.state) == mode(paths.run) == 0o700 and mode(paths.daemon_log) == 0o600


def test_peer_tokens_move_out_of_the_database(tmp_path: Path) -> None:
    from xenia.peers.listener import protect_peer_tokens
    from xenia.peers.service import PeerService

    paths = Paths(state=tmp_path / "s", run=tmp_path / "r")
    paths.ensure()
    store = SqliteStore(paths.db)
    secret = "xenia_" + "S3cr3t" * 7
    # As an older Xenia stored a peer: the token inside the record.
    store.obj_put("peer", "b", {"name": "b", "address": "10.0.0.2:8443", "token": secret,
                                "fingerprint": ":".join(["AB"] * 32), "tls": True})
    svc = PeerService(paths, store)
    protect_peer_tokens(svc, store)
    rec = store.obj_get("peer", "b")
    assert rec is not None and "token" not in rec and rec["address"] == "10.0.0.2:8443"
    f = paths.peer_tokens / "b"
    assert f.read_text() == secret and mode(f) == 0o600 and mode(paths.peer_tokens) == 0o700
    assert svc.peers.client("b").token == secret
    # Nothing of it is left in the database's files (free pages, WAL).
    for p in paths.state.glob("xenia.db*"):
        assert secret.encode() not in p.read_bytes(), p
    protect_peer_tokens(svc, store)  # idempotent
    assert f.read_text() == secret
    store.close()


def test_access_checks_without_grant_are_unlimited(tmp_path: Path) -> None:
    from xenia.api.access import Access

    a = Access()
    a.require_domain("anything", "x")
    a.check_path("relative", "kernel")
    assert a.visible([{"name": "z"}]) == [{"name": "z"}]
    b = Access(Grant("t", frozenset({"read"}), ("a*",)))
    with pytest.raises(PermissionDenied):
        b.require_domain("b", "x")


def test_deleted_rows_do_not_linger_in_the_file(tmp_path: Path) -> None:
    """secure_delete: a revoked token's hash is gone from the file, not in a free cell."""
    st = SqliteStore(tmp_path / "x.db")
    reg = TokenRegistry(st)
    _, token = reg.create("gone")
    reg.create("stays")
    reg.revoke("gone")
    st._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = (tmp_path / "x.db").read_bytes()
    assert hash_token(token).encode() not in data
    assert b"stays" in data
    st.close()
