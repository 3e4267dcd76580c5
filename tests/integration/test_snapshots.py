"""Issue 13: domain snapshots (live, with and without memory) seen from inside the guest.

One guest serves the module: it writes, is snapshotted, overwrites, is reverted and must
read its old data again, on its disk and in its RAM (a tmpfs file).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import failed
from tests.integration.harness import (
    COUNTER,
    READY,
    Host,
    Image,
    counter,
    qemu_pids_with,
    volume,
    wait_until,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def host(request: pytest.FixtureRequest, tiny_image: Image) -> Iterator[Host]:
    h = Host(tiny_image)
    try:
        h.start_daemon()
        disk = volume(h, "g1-disk", "16M")
        h.create("g1", disk=[f"format=qcow2,vdev=xvda,access=rw,target={disk}"])
        h.run("g1", COUNTER)
        yield h
    finally:
        if failed(request):
            h.dump_logs()
        h.cleanup()


def disk_text(host: Host, name: str) -> str:
    # iflag=direct: from the disk itself, not the guest's page cache.
    return host.run(name, "dd if=/dev/vda bs=512 count=1 iflag=direct 2>/dev/null | "
                          "head -c 12").strip()


def write_disk(host: Host, name: str, text: str) -> None:
    host.run(name, f"echo {text} | dd of=/dev/vda bs=512 conv=sync oflag=direct 2>/dev/null; "
                   f"echo {text} > /tmp/mem")


def test_memory_snapshot_is_live_and_reverts_disk_and_ram(host: Host) -> None:
    write_disk(host, "g1", "old-data-111")
    c0 = counter(host, "g1")
    print(host.xenia("snapshot-create", "--memory", "g1", "s1").stdout.strip())
    # Live: the same guest runs on after the snapshot (its counter moves, no reboot).
    assert host.domain("g1")["state"] == "running"
    wait_until(lambda: counter(host, "g1") > c0, what="the counter to run on")
    write_disk(host, "g1", "new-data-222")
    assert disk_text(host, "g1") == "new-data-222"
    snaps = json.loads(host.xenia("snapshot-list", "--json", "g1").stdout)
    assert [(s["name"], s["memory"], sorted(s["disks"])) for s in snaps] == \
        [("s1", True, ["xvda"])]

    host.xenia("snapshot-revert", "g1", "s1")
    assert disk_text(host, "g1") == "old-data-111"
    assert host.run("g1", "cat /tmp/mem").strip() == "old-data-111"
    # The counter goes on from the snapshot's moment, not from a new boot.
    assert counter(host, "g1") >= c0


def test_disk_snapshot_and_its_rules(host: Host) -> None:
    write_disk(host, "g1", "disk-only-33")
    print(host.xenia("snapshot-create", "g1", "s2").stdout.strip())
    write_disk(host, "g1", "later-data-4")
    # Reverting a running guest to a disk-only snapshot would pull its disk away.
    res = host.xenia("snapshot-revert", "g1", "s2", check=False)
    assert res.returncode != 0 and "shut it down first" in res.stderr
    assert disk_text(host, "g1") == "later-data-4"
    res = host.xenia("snapshot-create", "g1", "s2", check=False)
    assert res.returncode != 0 and "already" in res.stderr
    res = host.xenia("snapshot-revert", "g1", "nope", check=False)
    assert res.returncode != 0 and "no snapshot 'nope'" in res.stderr
    host.xenia("snapshot-delete", "g1", "s2")
    names = [s["name"] for s in json.loads(host.xenia("snapshot-list", "--json", "g1").stdout)]
    assert names == ["s1"]


def pooled(host: Host, listed: set[str] | None = None) -> dict[int, str]:
    """{pid: UUID} of this host's QEMUs that are no listed domain: those started ahead
    for clones (migration/clonepool.py). `listed`: the domains' UUIDs, when xeniad is
    not there to ask."""
    if listed is None:
        listed = {d["uuid"] for d in host.domains()}
    out = {}
    for pid in qemu_pids_with(str(host.root)):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        uuid = argv[argv.index(b"-uuid") + 1].decode()
        if uuid not in listed:
            out[pid] = uuid
    return out


def one_pooled(host: Host, but: str = "") -> tuple[int, str]:
    """The one QEMU the clone pool keeps ready (waiting for it), other than `but`'s."""
    ready = wait_until(lambda: [(p, u) for p, u in pooled(host).items() if u != but],
                       what="the clone pool to start a QEMU")
    assert len(ready) == 1, ready
    return ready[0]


def test_clones_start_from_the_memory_snapshot_each_with_its_own_identity(host: Host) -> None:
    uuids = set()
    for i in (1, 2, 3):
        ahead = pooled(host)
        t0 = time.monotonic()
        host.xenia("create", "--from", "g1@s1", f"name=c{i}")
        # create --from does not wait for the identity line's answer: the first command
        # typed after it returns must still see the clone's own name.
        assert host.run(f"c{i}", "hostname").strip() == f"c{i}"
        took = time.monotonic() - t0
        # Started from s1's moment: its RAM (tmpfs) and its disk, not a boot.
        assert host.run(f"c{i}", "cat /tmp/mem").strip() == "old-data-111"
        d = host.domain(f"c{i}")
        assert host.run(f"c{i}", "cat /run/xenia/uuid").strip() == d["uuid"]
        uuids.add(d["uuid"])
        if i > 1:
            # c1 made the snapshot's clone pool: c2 and c3 are QEMUs it started ahead,
            # each with the UUID it was started with (in QEMU's argv).
            assert d["uuid"] in ahead.values(), (d["uuid"], ahead)
        # The pool refills, with a QEMU of its own (not listed as a domain).
        one_pooled(host, but=d["uuid"])
        assert not any(x["name"].startswith("pool-") for x in host.domains())
        print(f"clone c{i}: create --from to a console answer in {took:.2f} s (CLI included)")
    assert len(uuids | {host.domain("g1")["uuid"]}) == 4
    assert READY not in host.console_log("c1")  # never booted
    # Copy-on-write disks of their own.
    write_disk(host, "c1", "clone1-data9")
    assert disk_text(host, "c2") == "old-data-111" and disk_text(host, "c1") == "clone1-data9"
    res = host.xenia("snapshot-delete", "g1", "s1", check=False)
    assert res.returncode != 0 and "c1, c2, c3 run from it" in res.stderr
    res = host.xenia("create", "--from", "g1@s1", "name=c1", check=False)
    assert res.returncode != 0 and "exists already" in res.stderr


def test_clone_pool_replaces_a_dead_qemu_and_ends_with_xeniad_and_snapshot(host: Host) -> None:
    pid, dead = one_pooled(host)
    os.kill(pid, signal.SIGKILL)
    # Not handed out: c4 runs, under a UUID of its own, answering as c4.
    host.xenia("create", "--from", "g1@s1", "name=c4")
    assert host.run("c4", "hostname").strip() == "c4"
    assert host.domain("c4")["uuid"] != dead
    one_pooled(host, but=dead)  # replaced
    # A killed xeniad: its restart reaps the waiting QEMU as a half-built domain.
    host.kill_daemon()
    host.start_daemon()
    assert not pooled(host)
    host.xenia("create", "--from", "g1@s1", "name=c5")  # the pool comes back
    one_pooled(host)
    # A stopped xeniad leaves its domains running, but no QEMU started ahead.
    listed = {d["uuid"] for d in host.domains()}
    host.kill_daemon(signal.SIGTERM)
    assert not pooled(host, listed)
    assert len(qemu_pids_with(str(host.root))) == len(listed) == 6  # g1, c1-c5 run on
    host.start_daemon()
    host.xenia("create", "--from", "g1@s1", "name=c6")  # a pool for the delete to end
    one_pooled(host)
    for i in range(1, 7):
        host.xenia("destroy", f"c{i}")
    host.xenia("snapshot-delete", "g1", "s1")
    assert not pooled(host)
    assert not list((host.root / "state" / "clones").iterdir())


def test_disk_only_revert_with_the_domain_shut_down(host: Host) -> None:
    write_disk(host, "g1", "disk-only-55")
    host.xenia("snapshot-create", "g1", "s3")
    write_disk(host, "g1", "after-snap-6")
    host.xenia("destroy", "g1")
    assert "Reverted g1 to 's3'" in host.xenia("snapshot-revert", "g1", "s3").stdout
    assert not host.has_domain("g1")  # a disk-only revert starts nothing
    disk = host.xenia("volume", "path", "g1-disk").stdout.strip()
    host.create("g1", disk=[f"format=qcow2,vdev=xvda,access=rw,target={disk}"])
    assert disk_text(host, "g1") == "disk-only-55"
