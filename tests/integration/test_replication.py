"""Issue 13 section 2: replicated volumes, tested from inside a guest.

Three hosts in namespaces (tests/integration/multihost.py): the guest runs on h0 on a
volume replicated to h1. Writes the guest synced are in h1's copy at once (the mirror is
synchronous); once h1 goes silent (link cut) the guest keeps writing and the volume is
degraded;
`volume resync --replica h2` makes a new copy on h2 while the guest runs, equal to h0's.
"""

from __future__ import annotations

import hashlib
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import Image, wait_until
from tests.integration.multihost import Cluster, NetHost, ip, tag

pytestmark = pytest.mark.integration

TAG = tag()
SIZE = "16M"
# What the guest writes: 2 MiB of random data at the start of its disk, synced.
WRITE = ("dd if=/dev/urandom of=/dev/vda bs=64k count=32 conv=fsync 2>/dev/null && "
         "dd if=/dev/vda bs=64k count=32 2>/dev/null | md5sum | cut -d' ' -f1")


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest, tiny_image: Image) -> Iterator[Cluster]:
    c = Cluster(tiny_image, 3, TAG)
    failed_before = request.session.testsfailed
    try:
        c.start()
        c.peer(0, 1, "h1")
        c.peer(0, 2, "h2")
        yield c
    finally:
        c.stop(dump=request.session.testsfailed > failed_before)


def replica(h: NetHost, vol: str) -> dict[str, Any]:
    info = json.loads(h.xenia("volume", "info", vol).stdout)
    assert info["replica"] is not None, info
    return dict(info["replica"])


def wait_state(h: NetHost, vol: str, state: str, timeout: float = 60) -> dict[str, Any]:
    return dict(wait_until(lambda: (r := replica(h, vol))["state"] == state and r,
                           timeout=timeout, interval=0.2, what=f"{vol} {state}"))


def md5_of(path: Path, length: int | None = None) -> str:
    with open(path, "rb") as f:
        return hashlib.md5(f.read(length if length is not None else -1)).hexdigest()


def kill_host(h: NetHost) -> None:
    """The replica host dies: every process in its namespace, xeniad and its QSDs."""
    import os

    for pid in ip("netns", "pids", h.ns).stdout.split():
        os.kill(int(pid), signal.SIGKILL)
    h.kill_daemon()


def qsd_uid(h: NetHost) -> int:
    """The uid the host's one storage daemon runs as (it serves one copy)."""
    pidfile = next((h.root / "run" / "replicas").glob("*/pid/qsd.pid"))
    status = Path(f"/proc/{int(pidfile.read_text())}/status").read_text()
    return int(next(ln for ln in status.splitlines() if ln.startswith("Uid:")).split()[1])


def test_replicated_volume(cluster: Cluster) -> None:
    a, b, c = cluster.hosts
    a.xenia("volume", "create", "-f", "raw", "--replica", "h1", "rv", SIZE)
    local = Path(a.xenia("volume", "path", "rv").stdout.strip())
    copy = Path(b.xenia("volume", "path", "rv").stdout.strip())
    assert replica(a, "rv")["host"] == "h1"
    assert replica(b, "rv")["role"] == "replica"
    listed = a.xenia("volume", "list").stdout
    assert "h1 in-sync" in listed, listed
    # The storage daemon serving the copy is confined: a QEMU-range uid owning the copy.
    uid = qsd_uid(b)
    assert uid >= 1 << 30 and copy.stat().st_uid == uid

    a.create("g", memory=128, disk=[f"format=raw,vdev=xvda,target={local}"])
    wait_state(a, "rv", "in-sync")
    # Synchronous: once the guest's fsync returned, h1's copy holds the data.
    written = a.run("g", WRITE).strip()
    assert len(written) == 32
    assert md5_of(copy, 2 * 1024 * 1024) == written
    assert md5_of(local, 2 * 1024 * 1024) == written

    # The replica host dies without a word (its link cut: no TCP reset, as at a power
    # loss): the guest's synced write waits while h0 waits for the host, then goes on to
    # its local copy once h0 gave up on it (replication.SILENT_AFTER, 6 s), not after
    # TCP's ~15 minutes of retransmissions.
    cluster.set_link(1, False)
    t0 = time.monotonic()
    more = a.run("g", "dd if=/dev/urandom of=/dev/vda bs=64k count=16 seek=32 conv=fsync "
                      "2>/dev/null && echo wrote", timeout=40).strip()
    print(f"a synced write with the replica host silent took {time.monotonic() - t0:.1f} s")
    assert more.endswith("wrote")
    r = wait_state(a, "rv", "degraded", timeout=30)
    assert r["error"], r
    kill_host(b)  # and its processes go, as at a real death
    assert "degraded" in a.xenia("volume", "list").stdout

    # Resync to a new host while the guest runs: h2's copy becomes h0's.
    a.xenia("volume", "resync", "--replica", "h2", "rv")
    wait_state(a, "rv", "in-sync", timeout=60)
    assert replica(a, "rv")["host"] == "h2"
    fresh = Path(c.xenia("volume", "path", "rv").stdout.strip())
    a.xenia("pause", "g")
    try:
        assert md5_of(fresh) == md5_of(local)
    finally:
        a.xenia("unpause", "g")
    # And stays synchronous: a new write is on h2 when the guest's fsync returns.
    again = a.run("g", WRITE).strip()
    assert md5_of(fresh, 2 * 1024 * 1024) == again

    # A resync to the same host while in sync: a new key and export, the mirror made anew.
    a.xenia("volume", "resync", "rv")
    assert replica(a, "rv")["host"] == "h2"
    wait_state(a, "rv", "in-sync", timeout=60)
    last = a.run("g", WRITE).strip()
    assert md5_of(fresh, 2 * 1024 * 1024) == last
    assert qsd_uid(c) >= 1 << 30 and fresh.stat().st_uid == qsd_uid(c)

    # Deleting the primary's volume ends the export: the copy is root's again.
    a.xenia("destroy", "g")
    a.xenia("volume", "delete", "rv")
    wait_until(lambda: fresh.stat().st_uid == 0, timeout=15, interval=0.1,
               what="h2's copy given back")
