"""Issue 4 item 1: save and restore real guests; the guest continues where it stopped."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.integration.harness import COUNTER, Host, counter, qemu_pids_with, wait_until

pytestmark = pytest.mark.integration


def test_save_restore_continues_the_guest(host: Host) -> None:
    dom = host.create("g1")
    host.run("g1", "echo marker-$((7*6)) > /tmp/state; " + COUNTER)
    before = wait_until(lambda: counter(host, "g1") >= 10 and counter(host, "g1"),
                        what="the guest's counter to run")
    save = host.root / "g1.save"
    host.xenia("save", "g1", str(save))
    assert not host.has_domain("g1")  # xl save destroys the domain
    time.sleep(2)  # a gap of wall time that the restored counter must not show
    # A daemon restart in between: the file carries everything.
    host.kill_daemon()
    host.start_daemon()
    host.xenia("restore", str(save))
    after = counter(host, "g1")
    # No reboot (the tmpfs file survived) and no gap: it resumed right where it stopped.
    assert before <= after <= before + 5, (before, after)
    assert host.run("g1", "cat /tmp/state").strip() == "marker-42"
    wait_until(lambda: counter(host, "g1") > after, what="the counter to run on")
    d = host.domain("g1")
    assert d["uuid"] == dom["uuid"] and d["domid"] != dom["domid"]
    assert host.run("g1", "cat /proc/sys/kernel/tainted").strip() == "0"


def assert_roots(path: Path) -> None:
    st = path.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0o600), (path, st)


def test_save_c_and_p(host: Host) -> None:
    host.create("g1")
    host.run("g1", COUNTER)
    host.xenia("save", "-c", "g1", str(host.root / "a.save"))
    assert host.domain("g1")["state"] == "running"
    # QEMU (running on: a guest may own it) never had the file: it is root's, 0600, and
    # the QEMU holds no descriptor of it (it wrote into a pipe).
    assert_roots(host.root / "a.save")
    pids = qemu_pids_with(host.domain("g1")["uuid"])
    assert pids
    for pid in pids:
        fds = Path(f"/proc/{pid}/fd")
        held = {os.readlink(fds / n) for n in os.listdir(fds)}
        assert not any("a.save" in h for h in held), held
    # It runs on after save -c: its counter moves past what it was at the save.
    c0 = counter(host, "g1")
    c = wait_until(lambda: (n := counter(host, "g1")) > c0 and n, what="the counter to move")
    host.xenia("save", "-p", "g1", str(host.root / "b.save"))
    assert host.domain("g1")["state"] == "paused"
    # Restoring while the original still exists: its name and UUID are taken.
    res = host.xenia("restore", str(host.root / "a.save"), check=False)
    assert res.returncode != 0 and "exists already" in res.stderr
    host.xenia("destroy", "g1")
    host.xenia("restore", "-p", str(host.root / "b.save"))
    assert host.domain("g1")["state"] == "paused"
    assert_roots(host.root / "b.save")  # restore gave QEMU a pipe, not the file either
    host.xenia("unpause", "g1")
    assert counter(host, "g1") >= c


def test_broken_save_files_are_refused(host: Host) -> None:
    host.create("g1")
    save = host.root / "g.save"
    host.xenia("save", "g1", str(save))
    data = save.read_bytes()
    cut = host.root / "cut.save"
    cut.write_bytes(data[: len(data) // 2])
    res = host.xenia("restore", str(cut), check=False)
    assert res.returncode != 0 and "truncated" in res.stderr
    bad = host.root / "bad.save"
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x55
    bad.write_bytes(bytes(flipped))
    res = host.xenia("restore", str(bad), check=False)
    assert res.returncode != 0 and "checksum mismatch" in res.stderr
    assert host.domains() == []
    assert list((host.root / "run" / "domains").iterdir()) == []
    host.xenia("restore", str(save))  # the intact one still works
    assert host.run("g1", "echo ok").strip() == "ok"
