"""HVM images: build them (once a session) and boot each through firmware with bare QEMU.

SeaBIOS boots the BIOS disk (SYSLINUX) and the ISO (ISOLINUX); OVMF boots the UEFI disk and
the ISO (both a unified kernel image). Each boot must reach the tiny image's ready line on
the serial console, and a command sent over the console must answer. QEMU runs under TCG.

The images and the .debs are cached in /var/tmp/xenia-test-cache (XENIA_TEST_CACHE
overrides it), next to the tiny image conftest.py builds. Boot times are printed (run with
-s to see them); XENIA_TEST_HVM_BOOTS=3 boots each case three times and prints the median.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.bare_qemu import QEMU, BareGuest, bare_guests
from xenia.errors import NotFound
from xenia.images.debs import sha256_file
from xenia.images.hvm import (
    FILES,
    MANIFEST,
    build_hvm_images,
    hvm_images,
    ovmf_paths,
    ovmf_qemu_args,
)
from xenia.images.tiny import build_tiny, list_images

pytestmark = pytest.mark.integration

CACHE = Path(os.environ.get("XENIA_TEST_CACHE", "/var/tmp/xenia-test-cache"))
READY_TIMEOUT = 120.0  # seconds; OVMF alone takes ~5 s under TCG, more on a loaded host
BOOTS = max(1, int(os.environ.get("XENIA_TEST_HVM_BOOTS", "1")))


@pytest.fixture(scope="session", autouse=True)
def _need_qemu() -> None:
    if shutil.which(QEMU) is None:
        pytest.skip(f"{QEMU} is not installed")


@pytest.fixture(scope="session")
def hvm() -> dict[str, Path]:
    lines: list[str] = []
    paths = build_hvm_images(CACHE / "images", cache_dir=CACHE / "debs", progress=lines.append)
    print("\n".join(lines))
    return paths


@pytest.fixture
def boot() -> Iterator[Any]:
    """boot(args, copies={}) -> a running Guest; every QEMU is killed at the end, pass or
    fail. `copies` (name -> file) are copied into the guest's directory first, and
    @WORKDIR@ in `args` names that directory."""
    with bare_guests("xenia-hvm-", READY_TIMEOUT) as start:

        def boot_one(args: list[str], copies: dict[str, Path] | None = None) -> BareGuest:
            def args_for(d: Path) -> list[str]:
                for fname, src in (copies or {}).items():
                    shutil.copyfile(src, d / fname)
                return ["-smp", "1", *(a.replace("@WORKDIR@", str(d)) for a in args)]

            return start(args_for)

        yield boot_one


# -- build -----------------------------------------------------------------------------------
def test_build_manifest_cache_and_layout(hvm: dict[str, Path], tmp_path: Path) -> None:
    images = CACHE / "images"
    assert hvm == {k: images / "hvm" / f for k, f in FILES.items()}
    assert hvm_images(images) == hvm
    manifest = json.loads((images / "hvm" / MANIFEST).read_text())
    for fname in FILES.values():
        assert manifest["files"][fname]["sha256"] == sha256_file(images / "hvm" / fname)
    tiny = build_tiny(images, cache_dir=CACHE / "debs", progress=lambda _: None)
    assert manifest["tiny"]["vmlinuz"] == sha256_file(tiny.kernel)
    assert manifest["cmdline"] == tiny.cmdline and "console=ttyS0" in tiny.cmdline
    assert set(manifest["packages"]) == {
        "syslinux", "syslinux-common", "isolinux", "systemd-boot-efi",
    }  # fmt: skip
    # tiny's list_images() skips the HVM manifest.
    assert "hvm" not in [i.name for i in list_images(images)]

    # Cached: nothing printed, nothing rewritten.
    mtime = hvm["iso"].stat().st_mtime_ns
    lines: list[str] = []
    assert build_hvm_images(images, cache_dir=CACHE / "debs", progress=lines.append) == hvm
    assert lines == [] and hvm["iso"].stat().st_mtime_ns == mtime

    # BIOS disk: MBR with SYSLINUX's boot code, one active partition at 1 MiB, a FAT whose
    # boot sector SYSLINUX wrote (BPB kept), fsck-clean, holding the kernel and SYSLINUX.
    disk = hvm["bios-disk"].read_bytes()
    assert disk[510:512] == b"\x55\xaa" and disk[446] == 0x80
    assert struct.unpack_from("<II", disk, 454) == (2048, len(disk) // 512 - 2048)
    part = disk[2048 * 512 :]
    assert part[3:11] == b"SYSLINUX" and part[54:62] == b"FAT16   "
    assert struct.unpack_from("<I", part, 28) == (2048,)  # hidden sectors
    assert _fat_files(hvm["bios-disk"], 2048) >= {
        "syslinux.cfg", "vmlinuz", "initrd.img", "ldlinux.sys", "ldlinux.c32",
    }  # fmt: skip
    # UEFI disk: protective MBR + GPT; the ESP holds BOOTX64.EFI, a PE with a .linux section.
    udisk = hvm["uefi-disk"].read_bytes()
    assert udisk[450] == 0xEE and udisk[512:520] == b"EFI PART"
    assert udisk[-512:-504] == b"EFI PART"
    assert b".linux\0\0" in udisk and b".initrd\0" in udisk and b".cmdline" in udisk
    (esp_end,) = struct.unpack_from("<Q", udisk, 1024 + 40)  # the ESP's last sector
    assert _fat_files(hvm["uefi-disk"], 2048) == {"EFI/BOOT/BOOTX64.EFI"}
    for name, data in (("bios", part), ("esp", udisk[2048 * 512 : (esp_end + 1) * 512])):
        (tmp_path / name).write_bytes(data)
        proc = subprocess.run([_tool("fsck.fat"), "-n", str(tmp_path / name)],
                              capture_output=True, text=True, check=False)  # fmt: skip
        assert proc.returncode == 0, f"{name}: {proc.stdout}{proc.stderr}"
    # ISO: El Torito with a BIOS entry and an EFI section; ISO 9660 names for ISOLINUX.
    info = subprocess.run([_tool("isoinfo"), "-d", "-i", str(hvm["iso"])], capture_output=True,
                          text=True, check=True).stdout  # fmt: skip
    assert "El Torito VD version 1 found" in info and "Arch 0 (x86)" in info
    files = subprocess.run([_tool("isoinfo"), "-f", "-i", str(hvm["iso"])],
                           capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert {"/VMLINUZ.;1", "/INITRD.IMG;1", "/ISOLINUX/ISOLINUX.BIN;1",
            "/ISOLINUX/LDLINUX.C32;1", "/ISOLINUX/ISOLINUX.CFG;1",
            "/EFI/EFIBOOT.IMG;1"} <= set(files)  # fmt: skip

    # A copy whose ISO no longer matches its manifest is rebuilt, from the cached .debs,
    # to the same bytes.
    other = tmp_path / "images"
    other.mkdir()
    shutil.copytree(images / "tiny", other / "tiny")
    shutil.copytree(images / "hvm", other / "hvm")
    with open(other / "hvm" / "boot.iso", "r+b") as f:
        f.write(b"garbage")
    lines = []
    rebuilt = build_hvm_images(other, cache_dir=CACHE / "debs", progress=lines.append)
    assert any(line.startswith("Writing boot.iso") for line in lines), lines
    assert not any(line.startswith("Downloading") for line in lines), lines
    for key, path in rebuilt.items():
        assert sha256_file(path) == sha256_file(hvm[key]), f"{key} is not reproducible"
    assert sorted(p.name for p in other.iterdir()) == [".hvm.lock", "hvm", "tiny"]


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(f"/usr/sbin/{name}")
    assert found is not None, f"{name} is not installed (scripts/install-deps.sh --test)"
    return found


def _fat_files(image: Path, start: int) -> set[str]:
    """The files (not directories, hidden ones too) in the FAT at sector `start` of `image`,
    as mtools lists them."""
    out = subprocess.run(
        [_tool("mdir"), "-i", f"{image}@@{start * 512}", "-a", "-b", "-/", "::/"],
        env={"PATH": "/usr/bin:/bin", "MTOOLS_SKIP_CHECK": "1", "HOME": str(image.parent)},
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return {p.removeprefix("::/") for p in out if not p.endswith("/")}


# -- boot ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    image: str  # build_hvm_images() key
    machine: str
    uefi: bool
    cdrom: bool
    banner: str  # what the boot loader prints on the serial console


CASES = {
    "seabios-disk-q35": Case("bios-disk", "q35", False, False, "SYSLINUX 6.04"),
    "seabios-disk-pc": Case("bios-disk", "pc", False, False, "SYSLINUX 6.04"),
    "seabios-cdrom-q35": Case("iso", "q35", False, True, "ISOLINUX 6.04"),
    "ovmf-disk-q35": Case("uefi-disk", "q35", True, False, "EFI stub: Loaded initrd"),
    "ovmf-cdrom-q35": Case("iso", "q35", True, True, "EFI stub: Loaded initrd"),
}


def _args(case: Case, image: Path, blank: Path) -> list[str]:
    args = ["-machine", case.machine]
    if case.uefi:
        args += ovmf_qemu_args(Path("@WORKDIR@/vars.fd"), ovmf_paths()[0])
    if not case.cdrom:
        # snapshot=on: the guest's writes go to a temporary file, the image stays as built.
        return args + [
            "-drive", f"if=none,id=d0,format=raw,snapshot=on,file={image}",
            "-device", "ide-hd,bus=ide.0,drive=d0",
        ]  # fmt: skip
    # The CD-ROM next to a blank (unbootable) disk, so the boot order has to pick it:
    # SeaBIOS as `xl` boot="d" would (-boot d), OVMF through bootindex (it ignores -boot).
    args += [
        "-drive", f"if=none,id=d0,format=raw,snapshot=on,file={blank}",
        "-drive", f"if=none,id=cd0,format=raw,readonly=on,media=cdrom,file={image}",
    ]  # fmt: skip
    if case.uefi:
        return args + [
            "-device", "ide-hd,bus=ide.0,drive=d0,bootindex=1",
            "-device", "ide-cd,bus=ide.1,drive=cd0,bootindex=0",
        ]  # fmt: skip
    return args + [
        "-device", "ide-hd,bus=ide.0,drive=d0",
        "-device", "ide-cd,bus=ide.1,drive=cd0",
        "-boot", "d",
    ]  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_boot_through_firmware(name: str, hvm: dict[str, Path], boot: Any, tmp_path: Path) -> None:
    case = CASES[name]
    copies = {}
    if case.uefi:
        try:
            # Each boot gets a fresh copy of the vars template, as a new domain would.
            copies["vars.fd"] = ovmf_paths()[1]
        except NotFound as e:
            pytest.skip(str(e))
    blank = tmp_path / "blank.img"
    with open(blank, "wb") as f:
        f.truncate(16 * 1024 * 1024)

    times = []
    guest = None
    for _ in range(BOOTS):
        if guest is not None:
            guest.kill()
        guest = boot(_args(case, hvm[case.image], blank), copies)
        times.append(guest.wait_ready())
    assert guest is not None
    median = statistics.median(times)
    print(f"{name}: boot to ready line {median:.2f} s (median of {len(times)}: "
          f"{', '.join(f'{t:.2f}' for t in times)})")  # fmt: skip

    assert case.banner in guest.console_text()
    tiny = build_tiny(CACHE / "images", cache_dir=CACHE / "debs", progress=lambda _: None)
    assert guest.run("uname -r").strip() == tiny.kernel_version
    cmdline = guest.run("cat /proc/cmdline").split()
    assert "console=ttyS0" in cmdline
    firmware = guest.run("test -d /sys/firmware/efi && echo uefi || echo bios").strip()
    assert firmware == ("uefi" if case.uefi else "bios")
    assert guest.run("echo $((6 * 7))").strip() == "42"
