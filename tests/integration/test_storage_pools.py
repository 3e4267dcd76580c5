"""Block and LVM pools on real loop devices, and a `phy:` disk seen from inside a guest.

LVM: the real tools write a PV and VG on a loop device; where the kernel has device-mapper
the whole volume cycle runs, elsewhere (as on the CI machine) `pool create --type lvm`
must refuse at once and say why.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Host
from xenia.storage.lvm import DM_CONTROL, dm_available

pytestmark = pytest.mark.integration

MiB = 2**20
# LVM's warnings about descriptors pytest leaves open are noise.
LVM_ENV = dict(os.environ, LVM_SUPPRESS_FD_WARNINGS="1")


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(loop device, its backing file) of 64 MiB; detached at the end."""
    backing = tmp_path / "disk.img"
    with open(backing, "wb") as f:
        f.truncate(64 * MiB)
    dev = Path(subprocess.run(["losetup", "--show", "-f", "-P", str(backing)], check=True,
                              capture_output=True, text=True).stdout.strip())
    try:
        yield dev, backing
    finally:
        subprocess.run(["losetup", "-d", str(dev)], check=False)


def test_phy_disk_on_a_loop_device_from_a_block_pool(host: Host,
                                                     loop: tuple[Path, Path]) -> None:
    dev, _ = loop
    host.xenia("pool", "create", "blk", "--type", "block", "--device", str(dev))
    pools = {p["name"]: p for p in json.loads(host.xenia("pool", "list", "--json").stdout)}
    assert pools["blk"]["type"] == "block" and pools["blk"]["capacity"] == 64 * MiB
    vols = json.loads(host.xenia("volume", "list", "--pool", "blk", "--json").stdout)
    assert [(v["name"], v["path"], v["format"]) for v in vols] == [(dev.name, str(dev), "raw")]
    res = host.xenia("volume", "create", "--pool", "blk", "v1", "8M", check=False)
    assert res.returncode != 0 and "sfdisk" in res.stderr
    # A second pool on the same device would hand one disk to two owners.
    res = host.xenia("pool", "create", "blk2", "--type", "block", "--device", str(dev),
                     check=False)
    assert res.returncode != 0 and "uses" in res.stderr

    path = host.xenia("volume", "path", "--pool", "blk", dev.name).stdout.strip()
    host.create("g1", disk=[f"phy:{path},xvda,w"])
    out = host.run("g1", "echo phy-marker-$((6*7)) | dd of=/dev/vda bs=512 conv=sync "
                         "oflag=direct 2>/dev/null; head -c 15 /dev/vda")
    assert "phy-marker-42" in out
    # On the host's device (QEMU writes through the device's page cache; the backing file
    # sees it once the loop device flushes).
    with open(dev, "rb") as f:
        assert f.read(13) == b"phy-marker-42"
    # Partitions become the pool's volumes.
    host.xenia("destroy", "g1")
    subprocess.run(["sfdisk", "-q", str(dev)], input="label: dos\n,16M\n,16M\n", text=True,
                   check=True, capture_output=True)
    subprocess.run(["partx", "-u", str(dev)], check=False, capture_output=True)
    vols = json.loads(host.xenia("volume", "list", "--pool", "blk", "--json").stdout)
    assert [v["name"] for v in vols] == [f"{dev.name}p1", f"{dev.name}p2"]
    assert all(v["virtual_size"] == 16 * MiB for v in vols)
    host.xenia("pool", "delete", "blk")
    assert dev.is_block_device()  # the device is the user's: left alone


def test_lvm_pool_with_the_real_tools(host: Host, loop: tuple[Path, Path]) -> None:
    dev, _ = loop
    vg = f"xt{os.getpid()}"
    # Without device-mapper libdevmapper still mknods its control node: not ours to keep.
    made_node = not DM_CONTROL.exists()
    subprocess.run(["pvcreate", "-q", str(dev)], check=True, env=LVM_ENV, capture_output=True)
    try:
        subprocess.run(["vgcreate", "-q", vg, str(dev)], check=True, env=LVM_ENV,
                       capture_output=True)
        if not dm_available():
            res = host.xenia("pool", "create", "lv", "--type", "lvm", "--vg", vg, check=False)
            assert res.returncode != 0
            assert "no device-mapper" in res.stderr and "dir or block pool" in res.stderr
            assert "lv" not in host.xenia("pool", "list").stdout.split()
            return
        host.xenia("pool", "create", "lv", "--type", "lvm", "--vg", vg)
        host.xenia("volume", "create", "--pool", "lv", "v1", "8M")
        p = Path(host.xenia("volume", "path", "--pool", "lv", "v1").stdout.strip())
        assert p == Path("/dev") / vg / "v1" and p.exists()
        host.xenia("volume", "snapshot", "--pool", "lv", "v1", "s1")
        host.xenia("volume", "clone", "--pool", "lv", "v1", "v2")
        names = [v["name"] for v in
                 json.loads(host.xenia("volume", "list", "--pool", "lv", "--json").stdout)]
        assert names == ["v1", "v2"]
        host.xenia("volume", "delete", "--pool", "lv", "v1")
        host.xenia("volume", "delete", "--pool", "lv", "v2")
        host.xenia("pool", "delete", "lv")
    finally:
        subprocess.run(["vgremove", "-f", vg], check=False, env=LVM_ENV, capture_output=True)
        subprocess.run(["pvremove", "-q", str(dev)], check=False, env=LVM_ENV,
                       capture_output=True)
        if made_node and not dm_available():
            DM_CONTROL.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                DM_CONTROL.parent.rmdir()
