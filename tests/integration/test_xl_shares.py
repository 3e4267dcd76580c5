"""Issue 14's p9 share and USB storage device, seen from inside one real guest.

The default tiny image's cloud kernel has neither 9p nor USB, so this module boots a
variant of it built from Debian's generic kernel (`linux-image-amd64`) with the 9p and
USB storage modules added (cached in /var/tmp/xenia-test-cache like the others; the
default image is unchanged). The guest mounts the 9p tag, reads a file the host wrote
and writes one the host reads; the USB stick shows up as /dev/sdX with the image's bytes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import CACHE
from tests.integration.harness import Host, Image

pytestmark = pytest.mark.integration

MODULES = ("9p", "9pnet", "9pnet_virtio", "netfs", "xhci_pci", "xhci_hcd", "usb_storage",
           "usbcore", "sd_mod", "scsi_mod")
STICK_SIZE = 1 << 20
STICK_BYTES = 4096  # the first bytes of the stick, compared by md5
HOST_TEXT = "written by the host\n"


@pytest.fixture(scope="module")
def share_image() -> Image:
    from xenia.images.tiny import Variant, build_tiny

    variant = Variant(name="tiny-9p-usb", kernel_package="linux-image-amd64",
                      extra_modules=MODULES)
    img = build_tiny(CACHE / "images", cache_dir=CACHE / "debs", progress=lambda s: None,
                     variant=variant)
    assert not set(MODULES) & set(img.missing_modules), img.missing_modules
    return Image(kernel=Path(img.kernel), initrd=Path(img.initrd))


@pytest.fixture(scope="module")
def xs(request: pytest.FixtureRequest, share_image: Image) -> Iterator[tuple[Host, Path, str]]:
    h = Host(share_image)
    failed_before = request.session.testsfailed
    ok = False
    try:
        share = h.root / "share"
        share.mkdir(mode=0o755)
        (share / "from-host.txt").write_text(HOST_TEXT)
        stick = h.root / "stick.img"
        data = os.urandom(STICK_SIZE)
        stick.write_bytes(data)
        h.start_daemon()
        cfg = h.write_cfg(
            "xs", type="hvm", memory=256, vcpus=1,
            p9=[f"tag=hostshare,security_model=none,path={share}"],
            usbctrl=["version=3,ports=4"], usbdev=[f"type=storage,path={stick}"])
        h.xenia("create", str(cfg))
        h.wait_console("xs", "xenia-tiny: ready")
        yield h, share, hashlib.md5(data[:STICK_BYTES]).hexdigest()
        ok = request.session.testsfailed == failed_before
    finally:
        if not ok:
            h.dump_logs()
        h.cleanup()


def test_p9_share_mounted_read_and_written(xs: tuple[Host, Path, str]) -> None:
    h, share, _ = xs
    out = h.run("xs", "modprobe 9p && mkdir -p /mnt/s && mount -t 9p -o trans=virtio,"
                      "version=9p2000.L hostshare /mnt/s && cat /mnt/s/from-host.txt && "
                      "echo guest-wrote-this > /mnt/s/from-guest.txt && sync && "
                      "grep -c ' /mnt/s 9p ' /proc/mounts")
    assert HOST_TEXT.strip() in out and out.strip().endswith("1"), out
    assert (share / "from-guest.txt").read_text() == "guest-wrote-this\n"


def test_usb_storage_appears_as_sd_disk(xs: tuple[Host, Path, str]) -> None:
    h, _, md5 = xs
    # usb-storage is loaded by the hotplug handler once xhci enumerates the stick: wait
    # for the disk in the guest (a loop on the guest's side, bounded).
    out = h.run("xs", "i=0; while [ $i -lt 300 ] && ! grep -qs . /sys/block/sd*/device/"
                      "vendor; do sleep 0.1; i=$((i+1)); done; for d in /sys/block/sd*; do "
                      "echo $(basename $d) $(cat $d/device/vendor) $(cat $d/size); done",
                timeout=60)
    disks = [line.split() for line in out.splitlines() if line.startswith("sd")]
    usb = [d for d in disks if d[1] == "QEMU" and int(d[-1]) * 512 == STICK_SIZE]
    assert usb, out
    got = h.run("xs", f"dd if=/dev/{usb[0][0]} bs={STICK_BYTES} count=1 2>/dev/null | md5sum")
    assert got.split()[0] == md5, got
    usb_list = h.xenia("usb-list", "xs").stdout
    assert "Port 1: storage" in usb_list, usb_list


def test_usb_storage_hotplug_and_unplug(xs: tuple[Host, Path, str]) -> None:
    """usbdev-attach type=storage on the running guest: the stick's image goes to QEMU
    (blockdev-add, then usb-storage on the xHCI controller), the guest reads it as a new
    sdX disk; usbdev-detach removes the disk from the guest and the image comes back."""
    h, _, _ = xs
    stick = h.root / "hot.img"
    data = os.urandom(2 * STICK_SIZE)  # its size tells it from the cold-plugged stick
    stick.write_bytes(data)
    res = h.xenia("usbdev-attach", "xs", "type=storage", f"path={stick}")
    assert res.stdout.strip() == "controller 0 port 2", res.stdout
    assert stick.stat().st_uid != 0  # owned by the domain's QEMU uid while plugged
    sizes = ("for d in /sys/block/sd*; do echo $(basename $d) $(cat $d/size); done")
    want = str(2 * STICK_SIZE // 512)
    out = h.run("xs", f"i=0; while [ $i -lt 300 ] && ! ({sizes}) | grep -q ' {want}$'; do "
                      f"sleep 0.1; i=$((i+1)); done; {sizes}", timeout=60)
    disk = next((ln.split()[0] for ln in out.splitlines() if ln.endswith(" " + want)), None)
    assert disk, out
    got = h.run("xs", f"dd if=/dev/{disk} bs={STICK_BYTES} count=1 2>/dev/null | md5sum")
    assert got.split()[0] == hashlib.md5(data[:STICK_BYTES]).hexdigest(), got
    h.xenia("usbdev-detach", "xs", "0", "2")
    out = h.run("xs", f"i=0; while [ $i -lt 300 ] && [ -e /sys/block/{disk} ]; do sleep 0.1; "
                      f"i=$((i+1)); done; ls /sys/block", timeout=60)
    assert disk not in out.split(), out
    assert stick.stat().st_uid == 0  # given back
    assert "Port 2" not in h.xenia("usb-list", "xs").stdout
