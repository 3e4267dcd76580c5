"""images/fstools.py: the MBR, GPT, FAT and ISO 9660 images that sfdisk, mkfs.fat, mtools and
xorriso write for the HVM images, read back by other means.

The tables are checked byte by byte against the specs (what firmware reads); the FAT with
fsck.fat (dosfstools' checker) and mtools' readers; the ISO with isoinfo (genisoimage, an
independent ISO 9660 reader) and by its El Torito catalog and boot info table. The tools
are what scripts/install-deps.sh installs.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import uuid
import zlib
from pathlib import Path

import pytest

import xenia.tools
from xenia.errors import BackendError, NotSupported
from xenia.images.fstools import (
    ESP_TYPE,
    PART_START,
    Partition,
    check_tools,
    fat_put,
    gpt_disk,
    make_fat,
    make_iso,
    mbr_disk,
    tool_env,
)

MIB = 1 << 20
SECTORS = 131072  # a 64 MiB disk
BLOCK = 2048  # ISO 9660


def _which(name: str) -> str:
    found = shutil.which(name) or shutil.which(f"/usr/sbin/{name}")
    assert found is not None, f"{name} is not installed (scripts/install-deps.sh --test)"
    return found


# -- partition tables ------------------------------------------------------------------------
def test_mbr_disk(tmp_path: Path) -> None:
    code = bytes(range(200)) * 2 + bytes(40)
    disk = tmp_path / "disk.img"
    part = mbr_disk(disk, SECTORS * 512, disk_signature=0xDEADBEEF, boot_code=code,
                    scratch=tmp_path)  # fmt: skip
    assert part == Partition(PART_START, SECTORS - PART_START)
    assert disk.stat().st_size == SECTORS * 512 and disk.stat().st_blocks <= 8  # sparse
    sector = disk.read_bytes()[:512]
    assert sector[:440] == code and sector[510:] == b"\x55\xaa"
    assert struct.unpack_from("<I", sector, 440) == (0xDEADBEEF,)
    entry = sector[446:462]
    assert entry[0] == 0x80 and entry[4] == 0x0E  # active, FAT16 (LBA)
    assert struct.unpack_from("<II", entry, 8) == (PART_START, SECTORS - PART_START)
    assert entry[1:4] == bytes([32, 33, 0])  # CHS of LBA 2048: head 32, sector 33, cyl 0
    assert sector[462:510] == bytes(48)  # the other three entries are empty
    with pytest.raises(ValueError, match="at most 440"):
        mbr_disk(tmp_path / "x.img", SECTORS * 512, disk_signature=0, boot_code=bytes(446),
                 scratch=tmp_path)  # fmt: skip


def test_gpt_disk(tmp_path: Path) -> None:
    dguid, pguid = uuid.uuid4(), uuid.uuid4()
    disk = tmp_path / "disk.img"
    part = gpt_disk(disk, SECTORS * 512, disk_guid=dguid, part_guid=pguid, scratch=tmp_path)
    data = disk.read_bytes()
    last = SECTORS - 1
    # Ends on a 1 MiB boundary, inside the last usable sector (last - 33).
    assert part.start == PART_START and (part.start + part.size) % 2048 == 0
    assert part.start + part.size - 1 <= last - 33
    pmbr = data[:512]
    assert pmbr[450] == 0xEE and pmbr[510:] == b"\x55\xaa"
    assert struct.unpack_from("<II", pmbr, 454) == (1, last)

    def check(hdr: bytes, entries_at: int, current: int, backup: int) -> None:
        (sig, rev, size, crc, _, cur, bak, first, last_usable, disk_guid, elba, n, esize,
         ecrc) = struct.unpack_from("<8sIIIIQQQQ16sQIII", hdr)  # fmt: skip
        assert (sig, rev, size) == (b"EFI PART", 0x10000, 92)
        assert crc == zlib.crc32(hdr[:16] + bytes(4) + hdr[20:92])
        assert (cur, bak, elba) == (current, backup, entries_at)
        assert first <= PART_START and last_usable == last - 33
        assert uuid.UUID(bytes_le=disk_guid) == dguid
        entries = data[elba * 512 : elba * 512 + n * esize]
        assert esize == 128 and ecrc == zlib.crc32(entries)
        tguid, pg, lo, hi, attrs = struct.unpack_from("<16s16sQQQ", entries)
        assert uuid.UUID(bytes_le=tguid) == ESP_TYPE and uuid.UUID(bytes_le=pg) == pguid
        assert (lo, hi) == (part.start, part.start + part.size - 1)
        assert entries[56:128].decode("utf-16-le").rstrip("\0") == "EFI System Partition"
        assert entries[128:] == bytes(len(entries) - 128)

    check(data[512:1024], 2, 1, last)
    backup = data[-512:]
    check(backup, struct.unpack_from("<Q", backup, 72)[0], last, 1)

    # Same inputs, same bytes.
    again = tmp_path / "again.img"
    gpt_disk(again, SECTORS * 512, disk_guid=dguid, part_guid=pguid, scratch=tmp_path)
    assert again.read_bytes() == data


# -- FAT -------------------------------------------------------------------------------------
def _fat_disk(tmp_path: Path, name: str) -> tuple[Path, Partition, bytes]:
    big = bytes(range(256)) * 4099  # not a whole number of clusters
    host = tmp_path / "big.bin"
    host.write_bytes(big)
    cfg = tmp_path / "syslinux.cfg"
    cfg.write_text("DEFAULT x\n")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    disk = tmp_path / name
    part = gpt_disk(disk, SECTORS * 512, disk_guid=uuid.UUID(int=1),
                    part_guid=uuid.UUID(int=2), scratch=tmp_path)  # fmt: skip
    make_fat(disk, part, label="TEST", volume_id=0x12345678, fat_bits=16, scratch=tmp_path)
    fat_put(disk, {"syslinux.cfg": cfg, "EFI/BOOT/BOOTX64.EFI": host, "a/b/c/empty": empty},
            offset=part.offset, scratch=tmp_path)  # fmt: skip
    return disk, part, big


def test_fat_in_a_partition(tmp_path: Path) -> None:
    disk, part, big = _fat_disk(tmp_path, "disk.img")
    assert disk.stat().st_blocks * 512 < 4 * MIB  # free space never written
    vol = disk.read_bytes()[part.offset : part.offset + part.size * 512]
    assert vol[510:512] == b"\x55\xaa"
    assert vol[54:62] == b"FAT16   " and vol[43:54] == b"TEST       "
    assert struct.unpack_from("<I", vol, 39) == (0x12345678,)  # volume id
    assert struct.unpack_from("<HH", vol, 24) == (63, 255)  # the MBR's CHS geometry
    assert struct.unpack_from("<I", vol, 28) == (part.start,)  # hidden sectors
    # Total sectors, in the 32-bit field: mkfs.fat keeps to whole tracks of 63 sectors.
    assert struct.unpack_from("<H", vol, 19) == (0,)
    assert struct.unpack_from("<I", vol, 32) == (part.size // 63 * 63,)

    part_file = tmp_path / "part.img"
    part_file.write_bytes(vol)
    proc = subprocess.run([_which("fsck.fat"), "-n", "-v", str(part_file)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # 3 files, 5 directories (EFI, EFI/BOOT, a, a/b, a/b/c) and the volume label.
    assert " 9 files, " in proc.stdout, proc.stdout

    env = tool_env(tmp_path)
    drive = f"{disk}@@{part.offset}"

    def mtools(*argv: str) -> bytes:
        return subprocess.run([_which(argv[0]), "-i", drive, *argv[1:]], env=env,
                              capture_output=True, check=True).stdout  # fmt: skip

    assert mtools("mtype", "::/EFI/BOOT/BOOTX64.EFI") == big
    assert mtools("mtype", "::/efi/boot/bootx64.efi") == big  # FAT names ignore case
    assert mtools("mtype", "::/syslinux.cfg") == b"DEFAULT x\n"
    listing = mtools("mdir", "-b", "-/", "::/").decode().split()
    assert {"::/syslinux.cfg", "::/EFI/BOOT/BOOTX64.EFI", "::/a/b/c/empty"} <= set(listing)

    # Same inputs, same bytes (timestamps are fixed, ids given).
    again, _, _ = _fat_disk(tmp_path, "again.img")
    assert again.read_bytes() == disk.read_bytes()


def test_fat_in_a_file_picks_its_size(tmp_path: Path) -> None:
    img = tmp_path / "efi.img"
    with open(img, "wb") as f:
        f.truncate(2 * MIB)
    make_fat(img, Partition(0, 4096), label="XENIA_EFI", volume_id=1, scratch=tmp_path)
    vol = img.read_bytes()
    assert vol[54:62] == b"FAT12   "  # too small for FAT16: mkfs.fat chose
    assert struct.unpack_from("<I", vol, 28) == (0,)
    proc = subprocess.run([_which("fsck.fat"), "-n", str(img)], capture_output=True,
                          text=True, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_fat_errors(tmp_path: Path) -> None:
    img = tmp_path / "small.img"
    with open(img, "wb") as f:
        f.truncate(2 * MIB)
    make_fat(img, Partition(0, 4096), label="X", volume_id=1, scratch=tmp_path)
    huge = tmp_path / "huge"
    with open(huge, "wb") as f:
        f.truncate(3 * MIB)
    with pytest.raises(BackendError,
                       match=r"^Failed copying files into the FAT filesystem of small\.img: "
                       r"mcopy: .*Disk full"):  # fmt: skip
        fat_put(img, {"huge": huge}, scratch=tmp_path)
    with pytest.raises(BackendError, match=r"^Failed making the FAT filesystem of small\.img: "
                       r"mkfs\.fat: .*"):  # fmt: skip
        make_fat(img, Partition(0, 4096), label="X", volume_id=1, fat_bits=16,
                 scratch=tmp_path)  # fmt: skip  # 2 MiB is too few clusters for FAT16
    with pytest.raises(ValueError, match="whole number of KiB"):
        make_fat(img, Partition(0, 4095), label="X", volume_id=1, scratch=tmp_path)
    odd = tmp_path / "a@@b"
    odd.mkdir()
    with pytest.raises(ValueError, match="contains '@@'"):
        fat_put(odd / "x.img", {}, scratch=tmp_path)


def test_missing_tool_names_its_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(xenia.tools, "_EXTRA_PATH", ())
    with pytest.raises(NotSupported, match=r"^Failed building HVM images: 'sfdisk' is not "
                       r"installed; install the 'fdisk' package \(scripts/install-deps.sh"):
        check_tools("building HVM images")
    with pytest.raises(NotSupported, match=r"^Failed writing the ISO 9660 image x\.iso: "
                       r"'xorriso' is not installed; install the 'xorriso' package"):
        make_iso(tmp_path / "x.iso", {}, volume_id="X", scratch=tmp_path)


# -- ISO 9660 + El Torito --------------------------------------------------------------------
def _iso_sample(tmp_path: Path, name: str) -> tuple[Path, bytes, Path]:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    boot_bin = bytes(range(256)) * 16 + b"tail"  # 4100 bytes: not a multiple of 4 words
    (src / "isolinux.bin").write_bytes(boot_bin)
    (src / "isolinux.cfg").write_text("DEFAULT x\n")
    (src / "kernel").write_bytes(b"kernel" * 1000)
    efi = src / "efi.img"
    with open(efi, "wb") as f:
        f.truncate(3 * MIB)
    make_fat(efi, Partition(0, 6144), label="EFI", volume_id=2, scratch=tmp_path)
    out = tmp_path / name
    make_iso(
        out,
        {
            "isolinux/isolinux.bin": src / "isolinux.bin",
            "isolinux/isolinux.cfg": src / "isolinux.cfg",
            "vmlinuz": src / "kernel",
            "efi/efiboot.img": efi,
        },
        volume_id="XENIA_TEST",
        isolinux_dir="isolinux",
        efi_image="efi/efiboot.img",
        scratch=tmp_path,
    )
    return out, boot_bin, efi


def _isoinfo(*args: str) -> str:
    return subprocess.run([_which("isoinfo"), *args], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip


def test_iso_el_torito_bios_and_uefi(tmp_path: Path) -> None:
    out, boot_bin, efi = _iso_sample(tmp_path, "t.iso")
    data = out.read_bytes()
    assert len(data) % BLOCK == 0
    info = _isoinfo("-d", "-i", str(out))
    assert "Volume id: XENIA_TEST" in info
    assert "El Torito VD version 1 found" in info and "Nsect 4" in info
    listing = _isoinfo("-R", "-f", "-i", str(out)).split()
    assert {"/vmlinuz", "/isolinux/isolinux.bin", "/isolinux/isolinux.cfg",
            "/isolinux/boot.cat", "/efi/efiboot.img"} <= set(listing)  # fmt: skip
    assert _isoinfo("-R", "-i", str(out), "-x", "/vmlinuz") == "kernel" * 1000
    # ISOLINUX and firmware read the ISO 9660 names, not Rock Ridge's.
    assert "/ISOLINUX/ISOLINUX.BIN;1" in _isoinfo("-f", "-i", str(out)).split()

    # The boot catalog: validation entry, the BIOS default entry (no emulation, 4 sectors),
    # a final section header for UEFI (platform 0xEF) with the FAT image's entry.
    br = data[17 * BLOCK : 18 * BLOCK]
    assert br[:7] == b"\x00CD001\x01" and br[7:30] == b"EL TORITO SPECIFICATION"
    (cat_lba,) = struct.unpack_from("<I", br, 71)
    cat = data[cat_lba * BLOCK : (cat_lba + 1) * BLOCK]
    assert cat[0] == 1 and cat[1] == 0 and cat[30:32] == b"\x55\xaa"
    assert sum(struct.unpack_from("<16H", cat)) & 0xFFFF == 0
    boot, media, _, _, _, nsect, bin_lba = struct.unpack_from("<BBHBBHI", cat, 32)
    assert (boot, media, nsect) == (0x88, 0, 4)
    assert data[bin_lba * BLOCK : bin_lba * BLOCK + 8] == boot_bin[:8]
    assert struct.unpack_from("<BBH", cat, 64) == (0x91, 0xEF, 1)
    boot, media, _, _, _, nsect, efi_lba = struct.unpack_from("<BBHBBHI", cat, 96)
    assert (boot, media, nsect) == (0x88, 0, efi.stat().st_size // 512)
    assert data[efi_lba * BLOCK : efi_lba * BLOCK + efi.stat().st_size] == efi.read_bytes()

    # The boot info table ISOLINUX needs (as genisoimage -boot-info-table writes it): the
    # primary volume descriptor's block, the file's block and length, and the sum of its
    # 32-bit words from offset 64 on.
    patched = data[bin_lba * BLOCK : bin_lba * BLOCK + len(boot_bin)]
    padded = boot_bin + bytes(-len(boot_bin) % 4)
    csum = sum(struct.unpack_from(f"<{(len(padded) - 64) // 4}I", padded, 64)) & 0xFFFFFFFF
    assert struct.unpack_from("<IIII", patched, 8) == (16, bin_lba, len(boot_bin), csum)
    assert patched[64:] == boot_bin[64:]

    # Same inputs, same bytes; and never written over an existing image.
    again, _, _ = _iso_sample(tmp_path, "again.iso")
    assert again.read_bytes() == data
    with pytest.raises(ValueError, match="exists already"):
        make_iso(out, {}, volume_id="X", scratch=tmp_path)


def test_iso_tool_failure(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match=r"^Failed writing the ISO 9660 image x\.iso: "
                       r"xorriso: .*"):  # fmt: skip
        make_iso(tmp_path / "x.iso", {"a": tmp_path / "missing"}, volume_id="X",
                 scratch=tmp_path)  # fmt: skip
