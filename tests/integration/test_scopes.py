"""Scoped tokens against a real xeniad serving TCP with TLS on 127.0.0.1, with real guests.

A `read` token lists but is refused a shutdown (403 naming `power`); a token limited to
'web-*' sees and pauses only web-* domains; a path outside the pools and --allow-path
directories is refused, one inside boots a guest; mutating calls land in the audit log;
the database and state files are root-only. The client is the daemon's own PeerClient
(TLS pinned to the host's fingerprint), as a peer or a later web UI would call.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import READY, Host, Image
from xenia.errors import PermissionDenied
from xenia.hostos.qemuids import UidRange
from xenia.peers.client import PeerClient

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TcpHost:
    def __init__(self, host: Host, port: int, allowed: Path) -> None:
        self.h, self.port, self.allowed = host, port, allowed
        self.fingerprint = json.loads(host.xenia("host", "info", "--json").stdout)["fingerprint"]

    def token(self, name: str, *args: str) -> str:
        return self.h.xenia("host", "token", "create", "--name", name, *args).stdout.strip()

    def client(self, token: str) -> PeerClient:
        return PeerClient(f"127.0.0.1:{self.port}", token, self.fingerprint, name="h")

    def audit(self) -> list[dict[str, Any]]:
        path = self.h.root / "state" / "audit.log"
        return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def tcp_host(request: pytest.FixtureRequest, tiny_image: Image) -> Iterator[TcpHost]:
    h = Host(tiny_image)
    allowed = tiny_image.kernel.parent  # kernel and initrd: what a TCP create may boot
    port = free_port()
    try:
        h.start_daemon(20.0, "--listen", f"127.0.0.1:{port}", "--allow-path", str(allowed))
        for name in ("web-1", "db-1"):
            h.create(name, wait_ready=False, vif=[])
        yield TcpHost(h, port, allowed)
    finally:
        if request.session.testsfailed:
            h.dump_logs()
        h.cleanup()


def test_read_token_lists_but_cannot_shut_down(tcp_host: TcpHost) -> None:
    ro = tcp_host.client(tcp_host.token("ro", "--scope", "read"))
    names = [d["name"] for d in ro.get("/v1/domains")]
    assert names == ["Domain-0", "web-1", "db-1"]
    with pytest.raises(PermissionDenied) as info:
        ro.post("/v1/domains/web-1/shutdown", {})
    assert "token 'ro' lacks the scope 'power'" in info.value.message
    assert tcp_host.h.domain("web-1")["state"] in ("running", "blocked")
    listed = tcp_host.h.xenia("host", "token", "list").stdout
    assert any(line.split()[:3] == ["ro", "read", "*"] for line in listed.splitlines())


def test_pattern_limited_token_sees_and_acts_on_its_domains_only(tcp_host: TcpHost) -> None:
    web = tcp_host.client(tcp_host.token("web", "--scope", "read,power", "--domains", "web-*"))
    assert [d["name"] for d in web.get("/v1/domains")] == ["Domain-0", "web-1"]
    with pytest.raises(PermissionDenied) as info:
        web.post("/v1/domains/db-1/pause")
    assert "limited to domains matching 'web-*'" in info.value.message
    assert tcp_host.h.domain("db-1")["state"] != "paused"
    web.post("/v1/domains/web-1/pause")
    assert tcp_host.h.domain("web-1")["state"] == "paused"
    web.post("/v1/domains/web-1/unpause")
    assert tcp_host.h.domain("web-1")["state"] != "paused"


def test_paths_outside_the_allowed_dirs_are_refused(tcp_host: TcpHost,
                                                    tiny_image: Image) -> None:
    maker = tcp_host.client(tcp_host.token("maker", "--scope", "create,read"))
    cfg = {"name": "tcp-1", "type": "pv", "kernel": str(tiny_image.kernel),
           "ramdisk": str(tiny_image.initrd), "extra": "console=ttyS0", "memory": 256}
    outside = tcp_host.h.root / "state" / "xenia.db"
    with pytest.raises(PermissionDenied) as info:
        maker.post("/v1/domains", {"config": {**cfg, "disks": [
            {"vdev": "xvdb", "target": str(outside), "spec": "x"}]}})
    assert f"the disk xvdb '{outside}'" in info.value.message
    assert "xeniad --allow-path DIR" in info.value.message
    assert not tcp_host.h.has_domain("tcp-1")
    with pytest.raises(PermissionDenied, match="save file"):
        maker.post("/v1/domains/web-1/save", {"file": "/root/web.save", "keep": True})
    # Inside the allowed directory: a real guest boots from it.
    maker.post("/v1/domains", {"config": cfg})
    tcp_host.h.wait_console("tcp-1", READY)
    maker.delete("/v1/domains/tcp-1")
    assert not tcp_host.h.has_domain("tcp-1")


def test_audit_log_and_modes(tcp_host: TcpHost) -> None:
    ops = tcp_host.client(tcp_host.token("ops", "--scope", "read,power"))
    before = len(tcp_host.audit())
    ops.get("/v1/domains")
    ops.get("/v1/domains/db-1")
    assert len(tcp_host.audit()) == before  # reads are not audited
    ops.post("/v1/domains/db-1/pause")
    domid = tcp_host.h.domain("db-1")["domid"]
    ops.post(f"/v1/domains/{domid}/unpause")  # by domid: the audit names the domain
    with pytest.raises(PermissionDenied):
        ops.delete("/v1/domains/db-1")
    lines = tcp_host.audit()[before:]
    for line in lines:
        assert line.pop("time") and line.pop("client") == "127.0.0.1"
    assert lines == [
        {"token": "ops", "method": "POST", "route": "/v1/domains/{ref}/pause",
         "path": "/v1/domains/db-1/pause", "domain": "db-1", "status": 200},
        {"token": "ops", "method": "POST", "route": "/v1/domains/{ref}/unpause",
         "path": f"/v1/domains/{domid}/unpause", "domain": "db-1", "status": 200},
        {"token": "ops", "method": "DELETE", "route": "/v1/domains/{ref}",
         "path": "/v1/domains/db-1", "domain": "db-1", "status": 403},
    ]
    # The earlier tests' calls are there too: the refused shutdown, the create.
    every = tcp_host.audit()
    assert {"token": "ro", "path": "/v1/domains/web-1/shutdown", "status": 403}.items() <= \
        next(e for e in every if e["token"] == "ro").items()
    assert any(e["token"] == "maker" and e["domain"] == "tcp-1" and e["status"] == 201
               for e in every)
    log = tcp_host.h.daemon_log.read_text()
    assert "audit: token=ops client=127.0.0.1 POST /v1/domains/db-1/pause" in log

    state = tcp_host.h.root / "state"

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(state / "audit.log") == 0o600
    for name in ("xenia.db", "xenia.db-wal", "xenia.db-shm"):
        assert mode(state / name) == 0o600, name
    assert root_only(state) and root_only(tcp_host.h.root / "run")


def root_only(p: Path) -> bool:
    """0700, or 0710 with an ACL whose only grants beyond root are search for confined
    QEMUs' uids (docs/security.md, QEMU confinement): nobody else gets in."""
    m = stat.S_IMODE(p.stat().st_mode)
    if m == 0o700:
        return True
    raw = os.getxattr(p, "system.posix_acl_access")
    entries = {struct.unpack_from("<HHI", raw, o) for o in range(4, len(raw), 8)}
    qemu_uids = UidRange.from_env()
    users = {e for e in entries if e[0] == 0x02}
    others = {e for e in entries if e[0] in (0x04, 0x08, 0x20)}
    return (m == 0o710 and bool(users)
            and all(perm == 1 and qemu_uids.holds(uid) for _, perm, uid in users)
            and others == {(0x04, 0, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF)})
