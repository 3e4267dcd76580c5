"""An ISO 9660 image with El Torito boot entries, written in Python (no genisoimage/xorriso).

The main class is `IsoImage`: add directories and files by path, name a BIOS boot file
(no-emulation, e.g. ISOLINUX's `isolinux.bin`, whose boot info table is filled in as
`genisoimage -boot-info-table` does) and/or a UEFI boot image (a FAT image holding
`/EFI/BOOT/BOOTX64.EFI`, El Torito platform 0xEF), then `write()` it.

Scope: ISO 9660 level 1 names (8.3 files, 8-character directories; given in any case,
stored upper case, as `NAME.EXT;1`), no Rock Ridge or Joliet: firmware and ISOLINUX need
neither, and Linux shows the names in lower case. Files are stored contiguously in the order
added; timestamps are fixed, so the same inputs give the same bytes.

Layout: system area (LBA 0-15, zero), primary volume descriptor (16), El Torito boot record
(17, if booting), terminator, the two path tables, the boot catalog, the directories, then
the file data.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

BLOCK = 2048
FIRST_DESCRIPTOR = 16
_DCHARS = re.compile(r"[A-Z0-9_]+")
_DATE7 = bytes([80, 1, 1, 0, 0, 0, 0])  # 1980-01-01 00:00:00 UTC (directory records)
_DATE17 = b"1980010100000000\0"  # volume descriptor dates
_NO_DATE17 = b"0000000000000000\0"
PLATFORM_X86 = 0
PLATFORM_EFI = 0xEF


class IsoError(ValueError):
    """The image cannot hold what was asked (bad name, missing boot file, ...)."""


def _both16(v: int) -> bytes:
    return struct.pack("<H", v) + struct.pack(">H", v)


def _both32(v: int) -> bytes:
    return struct.pack("<I", v) + struct.pack(">I", v)


def _blocks(n: int) -> int:
    return -(-n // BLOCK)


def iso_name(name: str, is_dir: bool) -> tuple[bytes, tuple[str, str]]:
    """The level-1 identifier of `name` and its sort key; IsoError if it has none."""
    up = name.upper()
    base, dot, ext = up.partition(".")
    if is_dir:
        if dot or not base or len(base) > 8 or not _DCHARS.fullmatch(base):
            raise IsoError(f"{name!r} is not an ISO 9660 level 1 directory name")
        return base.encode(), (base, "")
    if not base or len(base) > 8 or len(ext) > 3 or "." in ext:
        raise IsoError(f"{name!r} is not an 8.3 name")
    if not _DCHARS.fullmatch(base) or (ext and not _DCHARS.fullmatch(ext)):
        raise IsoError(f"{name!r} has characters ISO 9660 names cannot hold (A-Z 0-9 _)")
    return f"{base}.{ext};1".encode(), (base, ext)


@dataclass
class _Node:
    name: str
    data: bytes | Path | None = None  # None: directory
    children: dict[str, _Node] = field(default_factory=dict)  # by upper-case name
    lba: int = 0
    size: int = 0  # bytes (a directory's: whole blocks)
    number: int = 0  # path table number (directories)
    parent: _Node | None = None

    @property
    def is_dir(self) -> bool:
        return self.data is None

    def sorted_children(self) -> list[_Node]:
        return sorted(self.children.values(), key=lambda c: iso_name(c.name, c.is_dir)[1])


def _dir_record(ident: bytes, lba: int, size: int, is_dir: bool) -> bytes:
    length = 33 + len(ident) + (1 - len(ident) % 2)
    rec = (
        bytes([length, 0])
        + _both32(lba)
        + _both32(size)
        + _DATE7
        + bytes([0x02 if is_dir else 0, 0, 0])
        + _both16(1)
        + bytes([len(ident)])
        + ident
    )
    return rec.ljust(length, b"\0")


class IsoImage:
    def __init__(self, volume_id: str = "CDROM") -> None:
        if not volume_id or len(volume_id) > 32 or not _DCHARS.fullmatch(volume_id):
            raise IsoError(f"bad volume id {volume_id!r} (up to 32 of A-Z 0-9 _)")
        self.volume_id = volume_id
        self._root = _Node("")
        self._bios_boot: str | None = None
        self._bios_load_sectors = 4
        self._efi_boot: str | None = None
        self._catalog: str | None = None

    # -- building ---------------------------------------------------------------------------
    def _split(self, path: str) -> tuple[tuple[str, ...], str]:
        p = PurePosixPath("/", path)
        if ".." in p.parts or len(p.parts) < 2:
            raise IsoError(f"bad path {path!r}")
        return p.parts[1:-1], p.parts[-1]

    def _dir(self, parts: tuple[str, ...]) -> _Node:
        node = self._root
        for part in parts:
            iso_name(part, True)
            child = node.children.get(part.upper())
            if child is None:
                child = _Node(part, parent=node)
                node.children[part.upper()] = child
            elif not child.is_dir:
                raise IsoError(f"{part!r} is a file, not a directory")
            node = child
        return node

    def _node(self, path: str) -> _Node:
        parents, name = self._split(path)
        node = self._dir(parents).children.get(name.upper())
        if node is None or node.is_dir:
            raise IsoError(f"no file {path!r} in the image")
        return node

    def add_dir(self, path: str) -> None:
        parents, name = self._split(path)
        self._dir((*parents, name))

    def add_file(self, path: str, data: bytes | Path) -> None:
        """Add a file (its bytes, or a host file read at write time); parents are created."""
        parents, name = self._split(path)
        iso_name(name, False)
        parent = self._dir(parents)
        old = parent.children.get(name.upper())
        if old is not None and old.is_dir:
            raise IsoError(f"{path!r} is a directory")
        parent.children[name.upper()] = _Node(name, data, parent=parent)

    def set_bios_boot(self, path: str, *, catalog: str, load_sectors: int = 4) -> None:
        """Boot `path` (added already) on BIOS: no emulation, `load_sectors` 512-byte
        sectors loaded, boot info table patched in. The boot catalog appears as `catalog`."""
        self._node(path)
        self._bios_boot, self._bios_load_sectors, self._catalog = path, load_sectors, catalog

    def set_efi_boot(self, path: str, *, catalog: str) -> None:
        """Boot the FAT image `path` (added already) on UEFI."""
        self._node(path)
        self._efi_boot, self._catalog = path, catalog

    # -- writing ----------------------------------------------------------------------------
    def _directories(self) -> list[_Node]:
        """Every directory in path table order: by depth, then parent number, then name."""
        order = [self._root]
        i = 0
        while i < len(order):
            order[i].number = i + 1
            order += [c for c in order[i].sorted_children() if c.is_dir]
            i += 1
        return order

    def _dir_bytes(self, d: _Node) -> bytes:
        parent = d.parent or d
        records = [
            _dir_record(b"\0", d.lba, d.size, True),
            _dir_record(b"\1", parent.lba, parent.size, True),
        ]
        for c in d.sorted_children():
            records.append(_dir_record(iso_name(c.name, c.is_dir)[0], c.lba, c.size, c.is_dir))
        out = bytearray()
        for rec in records:
            # A record never crosses a block boundary.
            if len(out) // BLOCK != (len(out) + len(rec) - 1) // BLOCK:
                out += bytes(-len(out) % BLOCK)
            out += rec
        return bytes(out)

    def _path_table(self, dirs: list[_Node], big_endian: bool) -> bytes:
        out = bytearray()
        e = ">" if big_endian else "<"
        for d in dirs:
            ident = b"\0" if d is self._root else iso_name(d.name, True)[0]
            parent = d.parent.number if d.parent else 1
            out += bytes([len(ident), 0]) + struct.pack(f"{e}IH", d.lba, parent) + ident
            out += bytes(len(ident) % 2)
        return bytes(out)

    def write(self, path: Path) -> None:
        booting = self._bios_boot is not None or self._efi_boot is not None
        if booting and self._catalog is not None:
            self.add_file(self._catalog, b"")  # placeholder, sized below
        catalog = self._node(self._catalog) if booting and self._catalog else None
        dirs = self._directories()

        # Sizes first: a directory's size depends only on its entries' names.
        for d in dirs:
            d.size = _blocks(len(self._dir_bytes(d))) * BLOCK
        files: list[_Node] = []

        def collect(d: _Node) -> None:
            for c in d.children.values():
                if c.is_dir:
                    collect(c)
                else:
                    files.append(c)

        collect(self._root)
        for f in files:
            f.size = BLOCK if f is catalog else _size(f.data)

        path_table_size = len(self._path_table(dirs, False))
        lba = FIRST_DESCRIPTOR + 1 + (1 if booting else 0) + 1
        l_table, lba = lba, lba + _blocks(path_table_size)
        m_table, lba = lba, lba + _blocks(path_table_size)
        for d in dirs:
            d.lba, lba = lba, lba + d.size // BLOCK
        # The catalog first, then the boot file, so a BIOS that loads more sectors than it
        # was told to still reads the right thing; then everything else in the order added.
        boot_first = [n for n in (catalog, self._boot_node(self._bios_boot)) if n is not None]
        for f in boot_first + [f for f in files if f not in boot_first]:
            f.lba, lba = lba, lba + _blocks(f.size)
        total = lba

        with open(path, "wb") as out:

            def put(block: int, data: bytes) -> None:
                out.seek(block * BLOCK)
                out.write(data)

            put(FIRST_DESCRIPTOR, self._pvd(total, path_table_size, l_table, m_table))
            n = FIRST_DESCRIPTOR + 1
            if booting:
                assert catalog is not None
                put(n, _boot_record(catalog.lba))
                n += 1
            put(n, b"\xffCD001\x01".ljust(BLOCK, b"\0"))
            put(l_table, self._path_table(dirs, False))
            put(m_table, self._path_table(dirs, True))
            for d in dirs:
                put(d.lba, self._dir_bytes(d))
            for f in files:
                if f is catalog:
                    put(f.lba, self._catalog_bytes())
                elif f is self._boot_node(self._bios_boot):
                    put(f.lba, _boot_info_table(_read(f.data), f.lba))
                elif f.size:
                    put(f.lba, _read(f.data))
            out.truncate(total * BLOCK)

    def _boot_node(self, path: str | None) -> _Node | None:
        return self._node(path) if path is not None else None

    def _catalog_bytes(self) -> bytes:
        bios = self._boot_node(self._bios_boot)
        efi = self._boot_node(self._efi_boot)
        # Validation entry: the platform of the default entry; the 16-bit words sum to 0.
        validation = bytearray(32)
        validation[0] = 1
        validation[1] = PLATFORM_X86 if bios is not None else PLATFORM_EFI
        validation[4:9] = b"XENIA"
        validation[30:32] = b"\x55\xaa"
        csum = -sum(struct.unpack("<16H", bytes(validation))) & 0xFFFF
        struct.pack_into("<H", validation, 28, csum)
        out = bytearray(validation)
        if bios is not None:
            out += _boot_entry(bios.lba, self._bios_load_sectors)
        if efi is not None:
            if bios is not None:
                # A final section header for the second platform, with one entry.
                out += struct.pack("<BBH28s", 0x91, PLATFORM_EFI, 1, b"")
            # Its size in 512-byte sectors; 0 (too big to say) makes firmware use the rest
            # of the volume, and the FAT's own size then rules.
            sectors = -(-efi.size // 512)
            out += _boot_entry(efi.lba, sectors if sectors <= 0xFFFF else 0)
        return bytes(out).ljust(BLOCK, b"\0")

    def _pvd(self, total: int, pt_size: int, l_table: int, m_table: int) -> bytes:
        root = self._root
        pvd = (
            b"\x01CD001\x01\0"
            + b"LINUX".ljust(32)
            + self.volume_id.encode().ljust(32)
            + bytes(8)
            + _both32(total)
            + bytes(32)
            + _both16(1)
            + _both16(1)
            + _both16(BLOCK)
            + _both32(pt_size)
            + struct.pack("<II", l_table, 0)
            + struct.pack(">II", m_table, 0)
            + _dir_record(b"\0", root.lba, root.size, True)
            + b" " * 128  # volume set
            + b" " * 128  # publisher
            + b" " * 128  # data preparer
            + b"XENIA".ljust(128)  # application
            + b" " * (37 * 3)  # copyright, abstract, bibliographic files
            + _DATE17
            + _DATE17
            + _NO_DATE17
            + _DATE17
            + b"\x01\0"
        )
        assert len(pvd) == 883, len(pvd)
        return pvd.ljust(BLOCK, b"\0")


def _boot_record(catalog_lba: int) -> bytes:
    return (
        b"\0CD001\x01"
        + b"EL TORITO SPECIFICATION".ljust(32, b"\0")
        + bytes(32)
        + struct.pack("<I", catalog_lba)
    ).ljust(BLOCK, b"\0")


def _boot_entry(lba: int, sectors: int) -> bytes:
    # Bootable, no emulation, default load segment (0x7C0), sector count, start block.
    return struct.pack("<BBHBBHI20s", 0x88, 0, 0, 0, 0, sectors, lba, b"")


def _boot_info_table(data: bytes, lba: int) -> bytes:
    """`data` (isolinux.bin) with its boot info table at offset 8: the primary volume
    descriptor's block, the file's block and length, and the 32-bit sum of its words from
    offset 64 on (what `genisoimage -boot-info-table` writes)."""
    if len(data) < 64:
        raise IsoError("the BIOS boot file is too small for a boot info table")
    padded = data + bytes(-len(data) % 4)
    csum = sum(struct.unpack_from(f"<{(len(padded) - 64) // 4}I", padded, 64)) & 0xFFFFFFFF
    table = struct.pack("<IIII", FIRST_DESCRIPTOR, lba, len(data), csum) + bytes(40)
    return data[:8] + table + data[64:]


def _size(data: bytes | Path | None) -> int:
    if data is None:
        return 0
    return len(data) if isinstance(data, bytes) else data.stat().st_size


def _read(data: bytes | Path | None) -> bytes:
    if isinstance(data, Path):
        return data.read_bytes()
    return data or b""
