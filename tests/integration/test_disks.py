"""Issue 3: disks in domains, checked from inside real guests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.integration.harness import Host, volume, wait_until

pytestmark = pytest.mark.integration


def partitions(host: Host, name: str) -> set[str]:
    out = host.run(name, "cat /proc/partitions")
    return {line.split()[-1] for line in out.splitlines()[1:] if line.split()}


def test_disk_keeps_its_data_across_destroy_and_create(host: Host) -> None:
    path = volume(host, "data", "64M")
    cfg = {"disk": [f"format=qcow2,vdev=xvda,target={path}"]}
    host.create("g1", **cfg)
    host.run("g1", "mkfs.ext2 -q /dev/vda >/dev/null 2>&1 && mkdir -p /mnt && mount /dev/vda /mnt")
    digest = host.run("g1", "dd if=/dev/urandom of=/mnt/blob bs=64k count=32 2>/dev/null; "
                            "md5sum /mnt/blob | cut -d' ' -f1; umount /mnt; sync").strip()
    host.xenia("destroy", "g1")
    host.create("g1", **cfg)
    again = host.run("g1", "mkdir -p /mnt && mount /dev/vda /mnt && md5sum /mnt/blob")
    assert again.split()[0] == digest


def test_hot_attached_disk_can_be_formatted_and_used(host: Host) -> None:
    path = volume(host, "hot", "32M", fmt="raw")
    host.create("g1")
    assert "vdb" not in partitions(host, "g1")
    host.xenia("block-attach", "g1", f"format=raw,vdev=xvdb,access=rw,target={path}")
    wait_until(lambda: "vda" in partitions(host, "g1"), what="the disk in the guest")
    out = host.run("g1", "mkfs.ext2 -q /dev/vda >/dev/null 2>&1 && mkdir -p /m && "
                         "mount /dev/vda /m && echo hello > /m/f && sync && cat /m/f && umount /m")
    assert out.strip() == "hello"
    assert "xvdb" in host.xenia("block-list", "g1").stdout
    host.xenia("block-detach", "g1", "xvdb")
    wait_until(lambda: "vda" not in partitions(host, "g1"), what="the disk to go")
    assert "xvdb" not in host.xenia("block-list", "g1").stdout
    # The image got the guest's filesystem.
    assert b"hello" in path.read_bytes()


def test_access_ro_is_enforced(host: Host) -> None:
    path = volume(host, "ro", "16M", fmt="raw")
    path.write_bytes(b"original" + bytes(16 * 1024 * 1024 - 8))
    host.create("g1", disk=[f"format=raw,vdev=xvda,access=ro,target={path}"])
    assert host.run("g1", "cat /sys/block/vda/ro").strip() == "1"
    res = host.xenia("console", "--run",
                     "dd if=/dev/zero of=/dev/vda bs=512 count=1 oflag=direct", "g1",
                     check=False)
    assert res.returncode != 0
    assert path.read_bytes()[:8] == b"original"


def test_scsi_disk_and_cdrom(host: Host, tmp_path: Path) -> None:
    path = volume(host, "scsi", "16M", fmt="raw")
    path.write_bytes(b"scsi-data" + bytes(16 * 1024 * 1024 - 9))
    src = tmp_path / "iso"
    src.mkdir()
    (src / "hello.txt").write_text("from the iso\n")
    iso = tmp_path / "disc.iso"
    subprocess.run(["genisoimage", "-quiet", "-o", str(iso), "-V", "XENIA", str(src)],
                   check=True)
    host.create("g1", disk=[f"format=raw,vdev=sdb,target={path}", ",,hdc:cdrom,r"])
    # sdb: a SCSI disk (the guest names it sda); the empty cdrom: sr0 without a medium.
    assert host.run("g1", "dd if=/dev/sda bs=9 count=1 2>/dev/null").strip() == "scsi-data"
    assert host.xenia("console", "--run", "dd if=/dev/sr0 of=/dev/null count=1", "g1",
                      check=False).returncode != 0
    host.xenia("cd-insert", "g1", "hdc", str(iso))
    out = wait_until(lambda: host.xenia("console", "--run",
                                        "mount -t iso9660 -o ro /dev/sr0 /mnt 2>/dev/null && "
                                        "cat /mnt/hello.txt; umount /mnt", "g1",
                                        check=False).stdout, what="the medium")
    assert "from the iso" in out
    host.xenia("cd-eject", "g1", "hdc")
    assert host.xenia("console", "--run", "dd if=/dev/sr0 of=/dev/null count=1", "g1",
                      check=False).returncode != 0
    disks = {d["vdev"]: d for d in host.domain("g1")["config"]["disks"]}
    assert disks["hdc"]["target"] is None


def test_cdrom_with_iso_at_boot(host: Host, tmp_path: Path) -> None:
    src = tmp_path / "iso"
    src.mkdir()
    (src / "boot.txt").write_text("iso at boot\n")
    iso = tmp_path / "b.iso"
    subprocess.run(["genisoimage", "-quiet", "-o", str(iso), str(src)], check=True)
    host.create("g1", disk=[f"{iso},raw,xvdd,ro,devtype=cdrom"])
    out = host.run("g1", "mount -t iso9660 -o ro /dev/sr0 /mnt && cat /mnt/boot.txt")
    assert "iso at boot" in out


def test_disk_errors_change_nothing(host: Host) -> None:
    q = volume(host, "q", "16M")
    r = volume(host, "r", "16M", fmt="raw")
    host.create("a", disk=[f"format=qcow2,vdev=xvda,target={q}"])
    before = [d["name"] for d in host.domains()]

    def fails(match: str, **keys: object) -> None:
        res = host.xenia("create", str(host.write_cfg("b", **keys)), check=False)
        assert res.returncode != 0 and match in res.stderr, res.stderr
        assert [d["name"] for d in host.domains()] == before

    fails("is a qcow2 image but the disk spec says format=raw",
          disk=[f"format=raw,vdev=xvda,target={q}"])
    fails("is a raw image but the disk spec says format=qcow2",
          disk=[f"format=qcow2,vdev=xvda,target={r}"])
    fails("in use by domain 'a'", disk=[f"format=qcow2,vdev=xvda,target={q}"])
    fails("does not exist", disk=["format=raw,vdev=xvda,target=/nonexistent.img"])
    # Read-only sharing is fine for both... but not while 'a' writes it.
    fails("in use by domain 'a'", disk=[f"format=qcow2,vdev=xvda,access=ro,target={q}"])
    res = host.xenia("block-attach", "a", f"format=qcow2,vdev=xvdb,target={q}", check=False)
    assert res.returncode != 0 and "xvda" not in res.stdout
    res = host.xenia("block-detach", "a", "xvdq", check=False)
    assert res.returncode != 0 and "no such disk" in res.stderr
    assert [d["vdev"] for d in host.domain("a")["config"]["disks"]] == ["xvda"]
