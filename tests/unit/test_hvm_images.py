"""The pieces of the HVM images, without QEMU or apt: FAT16, MBR/GPT, ISO 9660 + El Torito,
the unified kernel image's PE surgery, and finding OVMF.

Each writer is read back by a small independent reader here; where the host has the real
checkers (fsck.fat from dosfstools, isoinfo from genisoimage) they check the output too.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import uuid
import zlib
from pathlib import Path

import pytest

from xenia.errors import NotFound
from xenia.images.disklabel import ESP_TYPE, PART_START, gpt, mbr
from xenia.images.fat import MIN_SIZE, FatError, FatImage, geometry, short_name
from xenia.images.hvm import hvm_images, ovmf_paths, ovmf_qemu_args
from xenia.images.iso9660 import BLOCK, IsoError, IsoImage, iso_name
from xenia.images.uki import PeError, add_sections, make_uki, pe_checksum


# -- FAT16 -----------------------------------------------------------------------------------
class FatReader:
    """Just enough of FAT16 to list directories and read files (follows the FAT chains)."""

    def __init__(self, vol: bytes) -> None:
        self.vol = vol
        (self.bps, self.spc, self.reserved, self.nfats, self.root_entries, tot16, self.media,
         self.fat_sectors, _, _, self.hidden, tot32) = struct.unpack_from(
            "<HBHBHHBHHHII", vol, 11)  # fmt: skip
        self.total = tot16 or tot32
        self.root_start = (self.reserved + self.nfats * self.fat_sectors) * self.bps
        self.data_start = self.root_start + self.root_entries * 32
        self.fat = vol[self.reserved * self.bps : (self.reserved + self.fat_sectors) * self.bps]

    def chain(self, cluster: int) -> list[int]:
        out = []
        while 2 <= cluster < 0xFFF8:
            out.append(cluster)
            (cluster,) = struct.unpack_from("<H", self.fat, 2 * cluster)
        return out

    def _cluster_data(self, clusters: list[int]) -> bytes:
        size = self.spc * self.bps
        return b"".join(
            self.vol[self.data_start + (c - 2) * size : self.data_start + (c - 1) * size]
            for c in clusters
        )

    def entries(self, cluster: int | None) -> list[tuple[str, int, int, int, int]]:
        """(name as Linux shows it, attrs, NT flags, first cluster, size) of a directory."""
        if cluster is None:
            raw = self.vol[self.root_start : self.data_start]
        else:
            raw = self._cluster_data(self.chain(cluster))
        out = []
        for i in range(0, len(raw), 32):
            e = raw[i : i + 32]
            if e[0] == 0:
                break
            name, attrs, nt = e[:8].decode().rstrip(), e[11], e[12]
            clus, size = struct.unpack_from("<HI", e, 26)
            ext = e[8:11].decode().rstrip()
            if nt & 0x08:
                name = name.lower()
            if nt & 0x10:
                ext = ext.lower()
            out.append((f"{name}.{ext}" if ext else name, attrs, nt, clus, size))
        return out

    def lookup(self, path: str) -> tuple[str, int, int, int, int]:
        cluster = None
        entry = None
        for part in path.strip("/").split("/"):
            matches = [e for e in self.entries(cluster) if e[0].upper() == part.upper()]
            assert matches, f"{part} not found in {path}"
            entry = matches[0]
            cluster = entry[3]
        assert entry is not None
        return entry

    def read(self, path: str) -> bytes:
        _, _, _, cluster, size = self.lookup(path)
        return self._cluster_data(self.chain(cluster))[:size]


def test_short_names() -> None:
    assert short_name("VMLINUZ") == (b"VMLINUZ    ", 0)
    assert short_name("vmlinuz") == (b"VMLINUZ    ", 0x08)
    assert short_name("initrd.img") == (b"INITRD  IMG", 0x18)
    assert short_name("BOOTX64.EFI") == (b"BOOTX64 EFI", 0)
    assert short_name("syslinux.CFG") == (b"SYSLINUXCFG", 0x08)
    for bad in ("toolongname.txt", "a.b.c", "Mixed.txt", "sp ace", "x.long", "", "a.", "é"):
        with pytest.raises(FatError):
            short_name(bad)


def test_geometry_stays_fat16() -> None:
    for size in (MIN_SIZE, 4 << 20, 33 << 20, 63 << 20, 512 << 20, 2000 << 20):
        g = geometry(size)
        assert 4085 < g.clusters < 65525, (size, g)
        used = 4 + 2 * g.fat_sectors + 32 + g.clusters * g.sectors_per_cluster
        assert used <= g.total_sectors
        assert g.fat_sectors * 512 >= (g.clusters + 2) * 2
    assert geometry(63 << 20).sectors_per_cluster == 2
    for size in (MIN_SIZE - 512 * 64, 1 << 20, 8 << 30):
        with pytest.raises(FatError, match="outside the supported range"):
            geometry(size)


def _fat_sample(tmp_path: Path) -> tuple[FatImage, bytes, Path]:
    big = bytes(range(256)) * 4099  # not a whole number of clusters
    host_file = tmp_path / "host.bin"
    host_file.write_bytes(b"from the host\n")
    fat = FatImage(8 << 20, label="Test", volume_id=0x12345678, hidden_sectors=2048)
    fat.add_file("syslinux.cfg", b"DEFAULT x\n")
    fat.add_file("EFI/BOOT/BOOTX64.EFI", big)
    fat.add_file("EFI/BOOT/host.bin", host_file)
    fat.add_file("empty", b"")
    fat.add_dir("a/b/c")
    return fat, big, host_file


def test_fat_image_reads_back(tmp_path: Path) -> None:
    fat, big, host_file = _fat_sample(tmp_path)
    img = tmp_path / "fat.img"
    fat.write_file(img)
    vol = img.read_bytes()
    assert len(vol) == 8 << 20
    assert vol[510:512] == b"\x55\xaa"
    assert vol[54:62] == b"FAT16   " and vol[43:54] == b"TEST       "
    r = FatReader(vol)
    assert (r.bps, r.nfats, r.media, r.hidden, r.total) == (512, 2, 0xF8, 2048, 16384)
    # Both FATs are the same.
    second = vol[(r.reserved + r.fat_sectors) * 512 : (r.reserved + 2 * r.fat_sectors) * 512]
    assert second == r.fat

    root = {e[0]: e for e in r.entries(None)}
    assert set(root) == {"TEST", "syslinux.cfg", "EFI", "empty", "a"}
    assert root["TEST"][1] == 0x08  # volume label
    assert root["syslinux.cfg"][2] == 0x18 and root["EFI"][1] == 0x10
    assert root["empty"][3:] == (0, 0)
    assert r.read("syslinux.cfg") == b"DEFAULT x\n"
    assert r.read("EFI/BOOT/BOOTX64.EFI") == big
    assert r.read("efi/boot/host.bin") == host_file.read_bytes()
    # Contiguous allocation, and "." / ".." in subdirectories.
    chain = r.chain(r.lookup("EFI/BOOT/BOOTX64.EFI")[3])
    assert chain == list(range(chain[0], chain[0] + len(chain)))
    boot = r.entries(r.lookup("EFI/BOOT")[3])
    assert boot[0][0] == "." and boot[0][3] == r.lookup("EFI/BOOT")[3]
    assert boot[1][0] == ".." and boot[1][3] == r.lookup("EFI")[3]
    assert r.entries(r.lookup("EFI")[3])[1][3] == 0  # ".." of a top directory is the root
    assert [e[0] for e in r.entries(r.lookup("a/b")[3])] == [".", "..", "c"]

    # Same inputs, same bytes.
    again = tmp_path / "again.img"
    fat.write_file(again)
    assert again.read_bytes() == vol


def test_fat_image_at_offset_is_sparse_and_fsck_clean(tmp_path: Path) -> None:
    fat, big, _ = _fat_sample(tmp_path)
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.write(b"\xaa" * 512)
        fat.write(f, 1 << 20)
    assert disk.stat().st_size == (1 << 20) + (8 << 20)
    assert disk.stat().st_blocks * 512 < 2 << 20  # free space never written
    part = tmp_path / "part.img"
    part.write_bytes(disk.read_bytes()[1 << 20 :])
    assert FatReader(part.read_bytes()).read("EFI/BOOT/BOOTX64.EFI") == big
    fsck = shutil.which("fsck.fat") or shutil.which("/usr/sbin/fsck.fat")
    if fsck is None:
        pytest.skip("fsck.fat (dosfstools) is not installed")
    proc = subprocess.run([fsck, "-n", "-v", str(part)], capture_output=True, text=True,
                          check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # 4 files, 5 directories and the label; the clusters: 2050 + 1 + 1 for the files, 5 dirs.
    assert "10 files, 2057/16220 clusters" in proc.stdout, proc.stdout


def test_fat_image_errors() -> None:
    fat = FatImage(MIN_SIZE)
    with pytest.raises(FatError, match="not an 8.3 name"):
        fat.add_file("vmlinuz-6.1.0", b"")
    fat.add_file("a/file", b"x")
    with pytest.raises(FatError, match="is a file"):
        fat.add_file("a/file/b", b"x")
    with pytest.raises(FatError, match="is a directory"):
        fat.add_file("a", b"x")
    with pytest.raises(FatError, match="bad path"):
        fat.add_file("../x", b"x")
    fat.add_file("huge", bytes(MIN_SIZE))
    with pytest.raises(FatError, match="the files need"):
        fat.write_file(Path("/dev/null"))
    with pytest.raises(FatError, match="bad volume label"):
        FatImage(MIN_SIZE, label="a label too long")


# -- MBR and GPT -----------------------------------------------------------------------------
def test_mbr() -> None:
    code = bytes(range(200)) * 2 + bytes(40)
    sector = mbr(131072, boot_code=code, disk_signature=0xDEADBEEF)
    assert len(sector) == 512 and sector[510:] == b"\x55\xaa"
    assert sector[:440] == code
    assert struct.unpack_from("<I", sector, 440) == (0xDEADBEEF,)
    entry = sector[446:462]
    assert entry[0] == 0x80 and entry[4] == 0x0E
    assert struct.unpack_from("<II", entry, 8) == (PART_START, 131072 - PART_START)
    assert entry[1:4] == bytes([32, 33, 0])  # CHS of LBA 2048: head 32, sector 33, cyl 0
    assert sector[462:510] == bytes(48)  # the other three entries are empty
    with pytest.raises(ValueError, match="at most 440"):
        mbr(131072, boot_code=bytes(446))
    with pytest.raises(ValueError, match="cannot hold"):
        mbr(PART_START)


def test_gpt_headers_and_crcs() -> None:
    sectors = 131072
    disk, part = uuid.uuid4(), uuid.uuid4()
    t = gpt(sectors, disk_guid=disk, part_guid=part)
    assert len(t.head) == 34 * 512 and len(t.tail) == 33 * 512
    assert t.tail_lba == sectors - 33 and (t.first_lba, t.last_lba) == (2048, sectors - 34)
    pmbr = t.head[:512]
    assert pmbr[450] == 0xEE and pmbr[510:] == b"\x55\xaa"
    assert struct.unpack_from("<II", pmbr, 454) == (1, sectors - 1)

    def check(hdr: bytes, entries: bytes, current: int, backup: int, entries_lba: int) -> None:
        (sig, rev, size, crc, _, cur, bak, first, last, dguid, elba, n, esize,
         ecrc) = struct.unpack_from("<8sIIIIQQQQ16sQIII", hdr)  # fmt: skip
        assert (sig, rev, size) == (b"EFI PART", 0x10000, 92)
        zeroed = hdr[:16] + b"\0\0\0\0" + hdr[20:92]
        assert crc == zlib.crc32(zeroed)
        assert (cur, bak, elba) == (current, backup, entries_lba)
        assert (first, last) == (34, sectors - 34)
        assert uuid.UUID(bytes_le=dguid) == disk
        assert (n, esize) == (128, 128) and ecrc == zlib.crc32(entries)
        tguid, pguid, plo, phi, attrs = struct.unpack_from("<16s16sQQQ", entries)
        assert uuid.UUID(bytes_le=tguid) == ESP_TYPE and uuid.UUID(bytes_le=pguid) == part
        assert (plo, phi, attrs) == (2048, sectors - 34, 0)
        assert entries[56:128].decode("utf-16-le").rstrip("\0") == "EFI System Partition"
        assert entries[128:] == bytes(127 * 128)

    check(t.head[512:1024], t.head[1024:], 1, sectors - 1, 2)
    check(t.tail[-512:], t.tail[:-512], sectors - 1, 1, sectors - 33)
    with pytest.raises(ValueError, match="too small"):
        gpt(2048 + 30, disk_guid=disk, part_guid=part)


# -- ISO 9660 + El Torito --------------------------------------------------------------------
def _dir_records(iso: bytes, lba: int, size: int) -> dict[str, tuple[int, int, int]]:
    """name -> (extent, size, flags) of a directory's records."""
    out = {}
    data = iso[lba * BLOCK : lba * BLOCK + size]
    i = 0
    while i < len(data):
        n = data[i]
        if n == 0:  # padding up to the next block
            i = (i // BLOCK + 1) * BLOCK
            continue
        (ext,) = struct.unpack_from("<I", data, i + 2)
        (length,) = struct.unpack_from("<I", data, i + 10)
        assert struct.unpack_from(">I", data, i + 6)[0] == ext
        name = data[i + 33 : i + 33 + data[i + 32]].decode("latin-1")
        out[name] = (ext, length, data[i + 25])
        i += n
    return out


def _iso_lookup(iso: bytes, path: str) -> tuple[int, int, int]:
    root = iso[16 * BLOCK + 156 : 16 * BLOCK + 190]
    ext, size = struct.unpack_from("<I", root, 2)[0], struct.unpack_from("<I", root, 10)[0]
    rec = (ext, size, 2)
    for part in path.strip("/").split("/"):
        recs = _dir_records(iso, rec[0], rec[1])
        rec = recs[part]
    return rec


def test_iso_names() -> None:
    assert iso_name("vmlinuz", False) == (b"VMLINUZ.;1", ("VMLINUZ", ""))
    assert iso_name("initrd.img", False)[0] == b"INITRD.IMG;1"
    assert iso_name("isolinux", True)[0] == b"ISOLINUX"
    for bad, is_dir in (("a-b", False), ("x.y", True), ("ninechars", True), ("a.b.c", False)):
        with pytest.raises(IsoError):
            iso_name(bad, is_dir)


def test_iso_el_torito_bios_and_uefi(tmp_path: Path) -> None:
    boot_bin = bytes(range(256)) * 16 + b"tail"  # 4100 bytes: not a multiple of 4 words
    efi_img = tmp_path / "efi.img"
    efi_img.write_bytes(b"\xeb\x3c\x90" + bytes(3 * 1024 * 1024 - 3))
    iso = IsoImage("XENIA_TEST")
    iso.add_file("isolinux/isolinux.bin", boot_bin)
    iso.add_file("isolinux/isolinux.cfg", b"DEFAULT x\n")
    iso.add_file("vmlinuz", b"kernel" * 1000)
    iso.add_file("a1.b", b"1")
    iso.add_file("a.b1", b"2")
    iso.add_file("a.b", b"3")
    iso.add_file("efi/efiboot.img", efi_img)
    iso.add_dir("empty")
    iso.set_bios_boot("isolinux/isolinux.bin", catalog="isolinux/boot.cat")
    iso.set_efi_boot("efi/efiboot.img", catalog="isolinux/boot.cat")
    out = tmp_path / "t.iso"
    iso.write(out)
    data = out.read_bytes()
    assert len(data) % BLOCK == 0

    pvd = data[16 * BLOCK : 17 * BLOCK]
    assert pvd[:7] == b"\x01CD001\x01" and pvd[40:72].rstrip() == b"XENIA_TEST"
    assert struct.unpack_from("<I", pvd, 80)[0] * BLOCK == len(data)
    br = data[17 * BLOCK : 18 * BLOCK]
    assert br[:7] == b"\x00CD001\x01" and br[7:30] == b"EL TORITO SPECIFICATION"
    assert data[18 * BLOCK : 18 * BLOCK + 7] == b"\xffCD001\x01"

    # Directory records: sorted by name then extension (A.B < A.B1 < A1.B), "." and "..".
    (root_lba,), (root_size,) = (
        struct.unpack_from("<I", pvd, 158),
        struct.unpack_from("<I", pvd, 166),
    )
    root = _dir_records(data, root_lba, root_size)
    assert list(root) == ["\0", "\1", "A.B;1", "A.B1;1", "A1.B;1", "EFI", "EMPTY", "ISOLINUX",
                          "VMLINUZ.;1"]  # fmt: skip
    ext, size, _ = _iso_lookup(data, "VMLINUZ.;1")
    assert data[ext * BLOCK : ext * BLOCK + size] == b"kernel" * 1000

    # Boot catalog: validation entry, BIOS default entry, EFI section.
    (cat_lba,) = struct.unpack_from("<I", br, 71)
    assert _iso_lookup(data, "ISOLINUX/BOOT.CAT;1")[0] == cat_lba
    cat = data[cat_lba * BLOCK : (cat_lba + 1) * BLOCK]
    assert cat[0] == 1 and cat[1] == 0 and cat[30:32] == b"\x55\xaa"
    assert sum(struct.unpack_from("<16H", cat)) & 0xFFFF == 0
    bin_lba = _iso_lookup(data, "ISOLINUX/ISOLINUX.BIN;1")[0]
    assert struct.unpack_from("<BBHBBHI", cat, 32) == (0x88, 0, 0, 0, 0, 4, bin_lba)
    assert struct.unpack_from("<BBH", cat, 64) == (0x91, 0xEF, 1)
    efi_lba, efi_size, _ = _iso_lookup(data, "EFI/EFIBOOT.IMG;1")
    assert struct.unpack_from("<BBHBBHI", cat, 96) == (0x88, 0, 0, 0, 0, efi_size // 512, efi_lba)

    # Boot info table, as genisoimage -boot-info-table writes it.
    patched = data[bin_lba * BLOCK : bin_lba * BLOCK + len(boot_bin)]
    padded = boot_bin + bytes(-len(boot_bin) % 4)
    csum = sum(struct.unpack_from(f"<{(len(padded) - 64) // 4}I", padded, 64)) & 0xFFFFFFFF
    assert struct.unpack_from("<IIII", patched, 8) == (16, bin_lba, len(boot_bin), csum)
    assert patched[:8] == boot_bin[:8] and patched[24:64] == bytes(40)
    assert patched[64:] == boot_bin[64:]

    isoinfo = shutil.which("isoinfo")
    if isoinfo is None:
        pytest.skip("isoinfo (genisoimage) is not installed")
    info = subprocess.run([isoinfo, "-d", "-i", str(out)], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip
    assert "El Torito VD version 1 found" in info and "Nsect 4" in info
    listing = subprocess.run([isoinfo, "-f", "-i", str(out)], capture_output=True, text=True,
                             check=True).stdout.split()  # fmt: skip
    assert "/ISOLINUX/ISOLINUX.BIN;1" in listing and "/EFI/EFIBOOT.IMG;1" in listing
    extracted = subprocess.run([isoinfo, "-i", str(out), "-x", "/VMLINUZ.;1"],
                               capture_output=True, check=True).stdout  # fmt: skip
    assert extracted == b"kernel" * 1000


def test_iso_errors(tmp_path: Path) -> None:
    iso = IsoImage()
    with pytest.raises(IsoError, match="no file"):
        iso.set_bios_boot("isolinux.bin", catalog="boot.cat")
    with pytest.raises(IsoError, match="bad volume id"):
        IsoImage("lower")


# -- unified kernel image --------------------------------------------------------------------
def _pe_stub(header_room: int = 0x400, symtab: bool = True) -> bytes:
    """A minimal PE32+ EFI application: one .text section, optionally a COFF symbol table."""
    lfanew = 0x80
    opt_size = 240
    img = bytearray(header_room)
    img[:2] = b"MZ"
    struct.pack_into("<I", img, 0x3C, lfanew)
    img[lfanew : lfanew + 4] = b"PE\0\0"
    text = b"\xc3" + bytes(0x1FF)
    symtab_at = header_room + len(text)
    struct.pack_into("<HHIIIHH", img, lfanew + 4, 0x8664, 1, 0, symtab_at if symtab else 0,
                     3 if symtab else 0, opt_size, 0x206)  # fmt: skip
    opt = lfanew + 24
    struct.pack_into("<HBBIIIII", img, opt, 0x20B, 2, 40, 0x200, 0x200, 0, 0x1000, 0x1000)
    struct.pack_into("<II", img, opt + 32, 0x1000, 0x200)  # section, file alignment
    struct.pack_into("<II", img, opt + 56, 0x2000, header_room)  # SizeOfImage, headers
    struct.pack_into("<H", img, opt + 68, 10)  # EFI application
    struct.pack_into("<I", img, opt + 108, 16)
    sec = opt + opt_size
    struct.pack_into("<8sIIIIIIHHI", img, sec, b".text", 1, 0x1000, 0x200, header_room, 0, 0,
                     0, 0, 0x60000020)  # fmt: skip
    out = bytes(img) + text
    if symtab:
        out += bytes(18 * 3) + struct.pack("<I", 4)  # symbols, empty string table
    return out


def _sections(img: bytes) -> dict[str, tuple[int, int, int, int]]:
    (lfanew,) = struct.unpack_from("<I", img, 0x3C)
    _, n, _, symtab, nsym, opt_size, _ = struct.unpack_from("<HHIIIHH", img, lfanew + 4)
    assert (symtab, nsym) == (0, 0)
    base = lfanew + 24 + opt_size
    out = {}
    for i in range(n):
        name, vsize, vaddr, rsize, rptr = struct.unpack_from("<8sIIII", img, base + 40 * i)
        out[name.rstrip(b"\0").decode()] = (vsize, vaddr, rsize, rptr)
    return out


def _slow_checksum(img: bytes) -> int:
    total = 0
    for (w,) in struct.iter_unpack("<H", img + bytes(len(img) % 2)):
        total += w
        total = (total & 0xFFFF) + (total >> 16)
    return (total + len(img)) & 0xFFFFFFFF


def test_uki_sections() -> None:
    kernel = b"K" * 300_001
    initrd = b"I" * 70_000
    uki = make_uki(_pe_stub(), kernel, initrd, "console=ttyS0", "ID=x\n")
    secs = _sections(uki)
    assert list(secs) == [".text", ".osrel", ".cmdline", ".linux", ".initrd"]
    for name, data in ((".osrel", b"ID=x\n"), (".cmdline", b"console=ttyS0\0"),
                       (".linux", kernel), (".initrd", initrd)):  # fmt: skip
        vsize, vaddr, rsize, rptr = secs[name]
        assert vsize == len(data) and rsize % 0x200 == 0 and rptr % 0x200 == 0
        assert uki[rptr : rptr + vsize] == data
        assert vaddr % 0x1000 == 0
    assert secs[".linux"][1] % 0x200000 == 0
    spans = sorted((v[1], v[1] + v[0]) for v in secs.values())
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))  # no overlap
    (lfanew,) = struct.unpack_from("<I", uki, 0x3C)
    opt = lfanew + 24
    (size_of_image,) = struct.unpack_from("<I", uki, opt + 56)
    assert size_of_image >= spans[-1][1] and size_of_image % 0x1000 == 0
    (csum,) = struct.unpack_from("<I", uki, opt + 64)
    zeroed = uki[: opt + 64] + bytes(4) + uki[opt + 68 :]
    assert csum == _slow_checksum(zeroed) == pe_checksum(zeroed)


def test_uki_errors() -> None:
    with pytest.raises(PeError, match="no room in the PE header"):
        add_sections(_pe_stub(header_room=0x80 + 24 + 240 + 40 + 40), [(".a", b"x", 1)] * 2)
    with pytest.raises(PeError, match="no MZ"):
        add_sections(b"ELF", [])
    with pytest.raises(PeError, match="longer than 8"):
        add_sections(_pe_stub(symtab=False), [(".toolongname", b"", 1)])


# -- OVMF ------------------------------------------------------------------------------------
def _descriptor(path: Path, code: Path, nvram: Path, features: list[str]) -> None:
    path.write_text(json.dumps({
        "interface-types": ["uefi"],
        "mapping": {"device": "flash", "executable": {"filename": str(code), "format": "raw"},
                    "nvram-template": {"filename": str(nvram), "format": "raw"}},
        "targets": [{"architecture": "x86_64", "machines": ["pc-i440fx-*", "pc-q35-*"]}],
        "features": features,
    }))  # fmt: skip


def test_ovmf_from_descriptors_skips_secure_boot(tmp_path: Path) -> None:
    fw = tmp_path / "fw"
    fw.mkdir()
    for name in ("SEC_CODE.fd", "SEC_VARS.fd", "CODE.fd", "VARS.fd"):
        (fw / name).write_bytes(b"x")
    desc = tmp_path / "desc"
    desc.mkdir()
    _descriptor(desc / "40-secure.json", fw / "SEC_CODE.fd", fw / "SEC_VARS.fd",
                ["secure-boot", "requires-smm"])  # fmt: skip
    _descriptor(desc / "50-missing.json", fw / "GONE.fd", fw / "VARS.fd", [])
    _descriptor(desc / "60-plain.json", fw / "CODE.fd", fw / "VARS.fd", ["acpi-s3"])
    (desc / "10-broken.json").write_text("{")
    got = ovmf_paths(descriptor_dirs=[desc], search_dirs=[])
    assert got == (fw / "CODE.fd", fw / "VARS.fd")


def test_ovmf_fallback_names_and_not_found(tmp_path: Path) -> None:
    d = tmp_path / "OVMF"
    d.mkdir()
    (d / "OVMF_CODE.fd").write_bytes(b"x")
    (d / "OVMF_VARS.fd").write_bytes(b"x")
    (d / "OVMF_CODE_4M.fd").write_bytes(b"x")  # no 4M vars: that pair does not count
    assert ovmf_paths(descriptor_dirs=[], search_dirs=[d]) == (d / "OVMF_CODE.fd",
                                                               d / "OVMF_VARS.fd")  # fmt: skip
    (d / "OVMF_VARS_4M.fd").write_bytes(b"x")
    assert ovmf_paths(descriptor_dirs=[], search_dirs=[d])[0] == d / "OVMF_CODE_4M.fd"
    with pytest.raises(NotFound, match=r"^Failed finding UEFI firmware \(OVMF\): .*"
                       r"apt-get install ovmf$"):  # fmt: skip
        ovmf_paths(descriptor_dirs=[tmp_path], search_dirs=[tmp_path / "nothing"])


def test_ovmf_qemu_args() -> None:
    args = ovmf_qemu_args(Path("/run/x/vars.fd"), code=Path("/usr/share/OVMF/C.fd"))
    assert args[0::2][:2] == ["-blockdev", "-blockdev"] and args[4] == "-machine"
    code, nvram = json.loads(args[1]), json.loads(args[3])
    assert code["read-only"] and code["file"] == {"driver": "file", "read-only": True,
                                                  "filename": "/usr/share/OVMF/C.fd"}  # fmt: skip
    assert not nvram["read-only"] and nvram["file"]["filename"] == "/run/x/vars.fd"
    assert args[5] == f"pflash0={code['node-name']},pflash1={nvram['node-name']}"


def test_hvm_images_not_built(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="run `xenia image build hvm-disk`"):
        hvm_images(tmp_path)
