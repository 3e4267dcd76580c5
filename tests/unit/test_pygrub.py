"""pygrub on a real partitioned disk image (sfdisk, mkfs.fat, mtools; no QEMU): the
default entry, --entry=, and paths a hostile grub.cfg could use against the host."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from xenia.errors import InvalidConfig, NotFound
from xenia.images import fstools, pygrub

GRUB_CFG = """\
set default="1"
set timeout=5
menuentry 'Old kernel' --class debian {
\tlinux\t/boot/vmlinuz-old root=/dev/xvda1 ro
\tinitrd\t/boot/initrd-old
}
menuentry "New kernel" {
\tlinux /boot/vmlinuz-new root=/dev/xvda1 console=hvc0 quiet
\tinitrd /boot/initrd-new
}
"""


def disk_with(tmp_path: Path, cfg: str, files: dict[str, bytes]) -> Path:
    disk = tmp_path / "disk.img"
    part = fstools.mbr_disk(disk, 16 << 20, disk_signature=1, boot_code=b"", scratch=tmp_path)
    fstools.make_fat(disk, part, label="BOOT", volume_id=1, scratch=tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    put = {}
    for name, data in {**files, "boot/grub/grub.cfg": cfg.encode()}.items():
        host = src / name.replace("/", "_")
        host.write_bytes(data)
        put[name] = host
    fstools.fat_put(disk, put, scratch=tmp_path, offset=part.offset)
    return disk


FILES = {"boot/vmlinuz-old": b"OLDK" * 100, "boot/initrd-old": b"OLDI" * 100,
         "boot/vmlinuz-new": b"NEWK" * 100, "boot/initrd-new": b"NEWI" * 100}


def test_default_entry_is_copied_out(tmp_path: Path) -> None:
    boot = pygrub.extract_boot(disk_with(tmp_path, GRUB_CFG, FILES), tmp_path / "out")
    assert boot.title == "New kernel"
    assert boot.kernel.read_bytes() == FILES["boot/vmlinuz-new"]
    assert boot.ramdisk is not None and boot.ramdisk.read_bytes() == FILES["boot/initrd-new"]
    assert boot.cmdline == "root=/dev/xvda1 console=hvc0 quiet"
    assert boot.entries == ["Old kernel", "New kernel"]


def test_bootloader_args_pick_an_entry(tmp_path: Path) -> None:
    boot = pygrub.extract_boot(disk_with(tmp_path, GRUB_CFG, FILES), tmp_path / "out",
                               ["--entry=0", "--args=single"])
    assert boot.kernel.read_bytes() == FILES["boot/vmlinuz-old"] and boot.cmdline == "single"


def test_menu_lst_of_grub_legacy() -> None:
    entries, default = pygrub.parse_grub(
        "default 0\ntimeout 5\ntitle Debian\n  root (hd0,0)\n  kernel /vmlinuz ro\n"
        "  initrd /initrd.img\n")
    assert default == "0"
    assert (entries[0].title, entries[0].kernel, entries[0].initrd, entries[0].args) == \
        ("Debian", "/vmlinuz", "/initrd.img", "ro")


@pytest.mark.parametrize("path", ["/boot/../../etc/shadow", "'/a b'", "/x;rm", "vmlinuz",
                                  "/a$(id)", '/"q"'])
def test_hostile_paths_are_refused(tmp_path: Path, path: str) -> None:
    cfg = f"menuentry 'x' {{\n linux {path}\n}}\n"
    with pytest.raises(InvalidConfig, match="unusable path"):
        pygrub.extract_boot(disk_with(tmp_path, cfg, {}), tmp_path / "out")


def test_disk_without_grub_config(tmp_path: Path) -> None:
    disk = tmp_path / "blank.img"
    disk.write_bytes(b"\0" * (1 << 20))
    with pytest.raises(NotFound, match="no filesystem on it holds a GRUB configuration"):
        pygrub.extract_boot(disk, tmp_path / "out")


def test_missing_kernel_is_not_found(tmp_path: Path) -> None:
    cfg = "menuentry 'x' {\n linux /boot/gone\n}\n"
    with pytest.raises(NotFound, match="'/boot/gone' is not on the guest's disk"):
        pygrub.extract_boot(disk_with(tmp_path, cfg, {}), tmp_path / "out")


def test_ext_filesystem_without_partition_table(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "grub").mkdir(parents=True)  # a separate /boot: paths from its own root
    (root / "grub" / "grub.cfg").write_text(
        "menuentry 'Only' {\n linux /vmlinuz-1 root=/dev/xvda2\n initrd /initrd-1\n}\n")
    (root / "vmlinuz-1").write_bytes(b"K" * 5000)
    (root / "initrd-1").write_bytes(b"I" * 3000)
    disk = tmp_path / "boot.img"
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext2", "-d", str(root), str(disk), "4M"],
                   check=True, capture_output=True)
    boot = pygrub.extract_boot(disk, tmp_path / "out")
    assert boot.kernel.read_bytes() == b"K" * 5000
    assert boot.ramdisk is not None and boot.ramdisk.read_bytes() == b"I" * 3000
    assert boot.cmdline == "root=/dev/xvda2"


def test_an_image_named_like_an_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # debugfs gets `--` before the image: "-w.img" (relative, so nothing but `--` keeps
    # it from being read as -w, read-write) is an image like any other.
    root = tmp_path / "root"
    (root / "grub").mkdir(parents=True)
    (root / "grub" / "grub.cfg").write_text("menuentry 'Only' {\n linux /vmlinuz-1 x=1\n}\n")
    (root / "vmlinuz-1").write_bytes(b"K" * 5000)
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext2", "-d", str(root),
                    str(tmp_path / "-w.img"), "4M"], check=True, capture_output=True)
    monkeypatch.chdir(tmp_path)
    boot = pygrub.extract_boot(Path("-w.img"), tmp_path / "out")
    assert boot.kernel.read_bytes() == b"K" * 5000 and boot.cmdline == "x=1"
