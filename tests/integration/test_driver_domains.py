"""Issue 13 section 5: driver domains serve disks (NBD) and NICs (a switch) to front ends,
checked from inside both guests. One driver domain and one front end for the module."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import CACHE
from tests.integration.harness import (
    GUEST_ARGS,
    READY,
    Host,
    Image,
    pid_alive,
    qemu_pids_with,
    volume,
    wait_until,
)

pytestmark = pytest.mark.integration

BLOCKS = 64  # 4 KiB blocks the front end writes through the driver domain
SERVING = "xenia-driver: serving /dev/vda"


@pytest.fixture(scope="module")
def pair(tiny_image: Image) -> Iterator[tuple[Host, Path, dict[str, object]]]:
    """A driver domain `dd` (driver image, disk xvda) and a front end `fe` whose xvda is
    dd's /dev/vda and whose NIC is on dd's switch."""
    from xenia.images.driver import build_driver

    img = build_driver(CACHE / "images", cache_dir=CACHE / "debs", progress=lambda s: None)
    h = Host(tiny_image)
    try:
        h.start_daemon()
        disk = volume(h, "dd-disk", "16M", fmt="raw")
        dd_cfg: dict[str, object] = {"kernel": str(img.kernel), "ramdisk": str(img.initrd),
                                     "driver_domain": True,
                                     "disk": [f"format=raw,vdev=xvda,target={disk}"]}
        h.create("dd", **dd_cfg)
        h.wait_console("dd", SERVING)
        h.create("fe", extra=f"{GUEST_ARGS} xenia.ip=192.168.77.2/24",
                 disk=["format=raw,vdev=xvda,backend=dd,target=/dev/vda"],
                 vif=["backend=dd"])
        yield h, disk, dd_cfg
    except BaseException:
        h.dump_logs()
        raise
    finally:
        h.cleanup()


def test_front_end_refused_without_its_backend(pair: tuple[Host, Path, dict[str, object]]
                                               ) -> None:
    h, _, _ = pair
    res = h.xenia("create", str(h.write_cfg("fe2", disk=[
        "format=raw,vdev=xvda,backend=nodd,target=/dev/vda"])), check=False)
    assert res.returncode != 0
    assert "backend domain 'nodd' does not exist" in res.stdout + res.stderr
    assert not h.has_domain("fe2")


def test_file_written_by_front_end_is_on_driver_domain_disk(
        pair: tuple[Host, Path, dict[str, object]]) -> None:
    h, disk, _ = pair
    out = h.run("fe", f"dd if=/dev/urandom of=/tmp/f bs=4k count={BLOCKS} 2>/dev/null; "
                      f"dd if=/tmp/f of=/dev/vda bs=4k count={BLOCKS} conv=fsync 2>/dev/null "
                      "&& md5sum /tmp/f")
    digest = out.split()[0]
    back = h.run("dd", f"dd if=/dev/vda bs=4k count={BLOCKS} 2>/dev/null | md5sum")
    assert back.split()[0] == digest
    # ... and it reached the driver domain's own disk image on the host.
    data = disk.read_bytes()[: BLOCKS * 4096]
    assert hashlib.md5(data).hexdigest() == digest


def test_driver_domain_cannot_reach_the_host(pair: tuple[Host, Path, dict[str, object]]
                                             ) -> None:
    h, _, _ = pair
    addr = re.search(r"inet (169\.254\.\d+)\.2/30", h.run("dd", "ip -4 addr show eth0"))
    assert addr is not None
    out = h.run("dd", f"ping -c 1 -W 1 {addr.group(1)}.1 >/dev/null 2>&1; echo rc=$?")
    assert "rc=1" in out


def test_front_end_nic_traffic_passes_through_driver_domain(
        pair: tuple[Host, Path, dict[str, object]]) -> None:
    h, _, _ = pair
    h.run("dd", "ip addr add 192.168.77.1/24 dev eth1; ip link set eth1 up")
    stat = "cat /sys/class/net/eth1/statistics/rx_bytes"
    before = int(h.run("dd", stat).split()[0])
    count, size = 20, 1000
    out = h.run("fe", f"ping -c {count} -i 0.2 -s {size} 192.168.77.1 | tail -2")
    assert f"{count} packets received" in out
    after = int(h.run("dd", stat).split()[0])
    # Each echo request is size + 8 (ICMP) + 20 (IP) + 14 (Ethernet) bytes.
    assert after - before >= count * (size + 42)


def test_killed_backend_gives_io_errors_and_restart_resumes(
        pair: tuple[Host, Path, dict[str, object]]) -> None:
    h, _, dd_cfg = pair
    fe_pids = qemu_pids_with(h.domain("fe")["uuid"])
    assert len(fe_pids) == 1
    read = "dd if=/dev/vda of=/dev/null bs=4k count=1 skip=200 iflag=direct 2>&1; echo rc=$?"
    assert "rc=0" in h.run("fe", read)
    h.xenia("destroy", "dd")
    # reconnect-delay (5 s) passes, then the read fails inside the front end.
    out = h.run("fe", read, timeout=60)
    assert "rc=0" not in out
    assert "I/O error" in h.run("fe", "dmesg | tail -20")
    # xeniad and the front end's QEMU are still up.
    assert h.domain("fe")["state"] == "running"
    assert pid_alive(fe_pids[0])
    h.create("dd", **dd_cfg)
    h.wait_console("dd", SERVING)
    wait_until(lambda: "rc=0" in h.run("fe", read), timeout=60,
               what="the front end to read its disk again")
    assert READY in h.console_log("fe")
