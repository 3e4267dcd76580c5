"""A FAT16 filesystem image, written in Python (no mkfs.vfat, mtools or loop mount).

The main class is `FatImage`: add directories and files by their path inside the
filesystem, then `write()` it into a file at a byte offset (a partition of a disk image, or
a file of its own). It is what the HVM images (see `hvm`) need and no more:

- FAT16 only, 512-byte sectors, two FATs, a 512-entry root directory; the cluster size is
  the smallest that keeps the cluster count within FAT16's range, so the volume must be at
  least ~2.1 MiB (`MIN_SIZE`).
- 8.3 names only (no long file name entries). A name given in lower case (`vmlinuz`,
  `initrd.img`) is stored upper case with the Windows NT "lower case" flags set, so Linux
  and mtools show it as given; firmware and bootloaders match names case-insensitively.
- Every file and directory is allocated contiguously, in the order added; timestamps are
  fixed (1980-01-01), so the same inputs give the same bytes.

`hidden_sectors` is the LBA of the partition on its disk (the BPB field a boot sector
uses to find itself, e.g. SYSLINUX's); it is 0 for an image that is not in a partition.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

SECTOR = 512
RESERVED_SECTORS = 4
NUM_FATS = 2
ROOT_ENTRIES = 512
MIN_CLUSTERS = 4085 + 16  # FAT16 starts at 4085 clusters; keep clear of the boundary
MAX_CLUSTERS = 65524 - 16
MIN_SIZE = (RESERVED_SECTORS + 2 * 17 + ROOT_ENTRIES * 32 // SECTOR + MIN_CLUSTERS) * SECTOR

ATTR_READ_ONLY = 0x01
ATTR_HIDDEN = 0x02
ATTR_SYSTEM = 0x04
ATTR_VOLUME_ID = 0x08
ATTR_DIRECTORY = 0x10
ATTR_ARCHIVE = 0x20

_NT_LOWER_BASE = 0x08
_NT_LOWER_EXT = 0x10
_DOS_DATE_1980_01_01 = (0 << 9) | (1 << 5) | 1
_VALID = re.compile(r"[A-Za-z0-9!#$%&'()\-@^_`{}~]+")
# Boot code for a volume nobody installed a boot loader on: INT 18h (try the next boot
# device), then halt. The BPB's jump (EB 3C 90) lands here, at offset 0x3E.
_NO_BOOT_CODE = bytes([0xCD, 0x18, 0xF4, 0xEB, 0xFD])


class FatError(ValueError):
    """The filesystem cannot hold what was asked (bad name, too small, ...)."""


def short_name(name: str) -> tuple[bytes, int]:
    """`name` as an 11-byte 8.3 directory name plus its NT case flags; FatError if it has none.

    >>> short_name("initrd.img")
    (b'INITRD  IMG', 24)
    """
    base, dot, ext = name.partition(".")
    if not base or len(base) > 8 or len(ext) > 3 or (dot and not ext) or "." in ext:
        raise FatError(f"{name!r} is not an 8.3 name")
    flags = 0
    for part, flag in ((base, _NT_LOWER_BASE), (ext, _NT_LOWER_EXT)):
        if part and not _VALID.fullmatch(part):
            raise FatError(f"{name!r} has characters an 8.3 name cannot hold")
        if part != part.upper():
            if part != part.lower():
                raise FatError(f"{name!r} mixes upper and lower case (needs a long name)")
            flags |= flag
    return (base.upper().ljust(8) + ext.upper().ljust(3)).encode("ascii"), flags


@dataclass
class _Node:
    name: str
    attrs: int
    data: bytes | Path | None = None  # None for a directory
    children: dict[str, _Node] = field(default_factory=dict)  # by upper-case name
    cluster: int = 0
    clusters: int = 0

    @property
    def is_dir(self) -> bool:
        return self.data is None

    @property
    def size(self) -> int:
        if self.data is None:
            return 0
        return len(self.data) if isinstance(self.data, bytes) else self.data.stat().st_size


@dataclass(frozen=True)
class Geometry:
    total_sectors: int
    sectors_per_cluster: int
    fat_sectors: int
    clusters: int

    @property
    def root_start(self) -> int:  # sector of the root directory
        return RESERVED_SECTORS + NUM_FATS * self.fat_sectors

    @property
    def data_start(self) -> int:  # sector of cluster 2
        return self.root_start + ROOT_ENTRIES * 32 // SECTOR

    @property
    def cluster_bytes(self) -> int:
        return self.sectors_per_cluster * SECTOR

    def cluster_offset(self, cluster: int) -> int:
        """Byte offset of `cluster` from the start of the volume."""
        return (self.data_start + (cluster - 2) * self.sectors_per_cluster) * SECTOR


def geometry(size: int) -> Geometry:
    """The FAT16 layout of a volume of `size` bytes."""
    total = size // SECTOR
    root = ROOT_ENTRIES * 32 // SECTOR
    for spc in (1, 2, 4, 8, 16, 32, 64):
        # The FAT must describe every cluster; solve for its size by iterating (converges
        # in two or three steps since the FAT is a tiny part of the volume).
        fat = 1
        while True:
            clusters = (total - RESERVED_SECTORS - NUM_FATS * fat - root) // spc
            need = -(-(clusters + 2) * 2 // SECTOR)
            if need <= fat:
                break
            fat = need
        if clusters < MIN_CLUSTERS:
            break
        if clusters <= MAX_CLUSTERS:
            return Geometry(total, spc, fat, clusters)
    raise FatError(
        f"a FAT16 volume of {size} bytes is outside the supported range "
        f"({MIN_SIZE} bytes to about 2 GiB)"
    )


class FatImage:
    def __init__(
        self,
        size: int,
        *,
        label: str = "NO NAME",
        volume_id: int = 0x58454E49,  # "XENI"
        hidden_sectors: int = 0,
        oem: str = "XENIA",
    ) -> None:
        self.geometry = geometry(size)
        self.size = self.geometry.total_sectors * SECTOR
        if not label or len(label) > 11 or not label.isascii():
            raise FatError(f"bad volume label {label!r}")
        self.label = label.upper()
        self.volume_id = volume_id
        self.hidden_sectors = hidden_sectors
        self.oem = oem
        self._root = _Node("", ATTR_DIRECTORY)

    # -- building ---------------------------------------------------------------------------
    def _lookup(self, parts: tuple[str, ...], create: bool) -> _Node:
        node = self._root
        for part in parts:
            short_name(part)
            child = node.children.get(part.upper())
            if child is None:
                if not create:
                    raise FatError(f"no directory {part!r}")
                child = _Node(part, ATTR_DIRECTORY)
                node.children[part.upper()] = child
            elif not child.is_dir:
                raise FatError(f"{part!r} is a file, not a directory")
            node = child
        return node

    def _split(self, path: str) -> tuple[tuple[str, ...], str]:
        p = PurePosixPath("/", path)
        if ".." in p.parts or len(p.parts) < 2:
            raise FatError(f"bad path {path!r}")
        return p.parts[1:-1], p.parts[-1]

    def add_dir(self, path: str) -> None:
        parents, name = self._split(path)
        self._lookup((*parents, name), create=True)

    def add_file(self, path: str, data: bytes | Path, *, attrs: int = ATTR_ARCHIVE) -> None:
        """Add a file (its bytes, or a host file read at write time); parents are created."""
        parents, name = self._split(path)
        short_name(name)
        parent = self._lookup(parents, create=True)
        old = parent.children.get(name.upper())
        if old is not None and old.is_dir:
            raise FatError(f"{path!r} is a directory")
        parent.children[name.upper()] = _Node(name, attrs, data)

    # -- writing ----------------------------------------------------------------------------
    def _allocate(self) -> list[_Node]:
        """Give every directory and file its clusters; returns them in allocation order."""
        g = self.geometry
        order: list[_Node] = []
        nxt = 2

        def walk(d: _Node, is_root: bool) -> None:
            nonlocal nxt
            if not is_root:
                entries = 2 + len(d.children)  # "." and ".."
                d.clusters = max(1, -(-entries * 32 // g.cluster_bytes))
                d.cluster, nxt = nxt, nxt + d.clusters
                order.append(d)
            for child in d.children.values():
                if child.is_dir:
                    walk(child, False)
                else:
                    child.clusters = -(-child.size // g.cluster_bytes)
                    child.cluster = nxt if child.clusters else 0
                    nxt += child.clusters
                    order.append(child)

        if len(self._root.children) + 1 > ROOT_ENTRIES:
            raise FatError(f"more than {ROOT_ENTRIES - 1} entries in the root directory")
        walk(self._root, True)
        if nxt - 2 > g.clusters:
            need = (nxt - 2) * g.cluster_bytes
            raise FatError(
                f"the files need {need} bytes; the {self.size}-byte volume holds "
                f"{g.clusters * g.cluster_bytes}"
            )
        return order

    def boot_sector(self) -> bytes:
        g = self.geometry
        total16 = g.total_sectors if g.total_sectors < 0x10000 else 0
        bs = bytearray(SECTOR)
        struct.pack_into(
            "<3s8sHBHBHHBHHHII",
            bs,
            0,
            b"\xeb\x3c\x90",
            self.oem.encode("ascii")[:8].ljust(8),
            SECTOR,
            g.sectors_per_cluster,
            RESERVED_SECTORS,
            NUM_FATS,
            ROOT_ENTRIES,
            total16,
            0xF8,  # fixed disk
            g.fat_sectors,
            63,  # sectors per track, heads: the usual LBA-assist geometry
            255,
            self.hidden_sectors,
            g.total_sectors if total16 == 0 else 0,
        )
        struct.pack_into(
            "<BBBI11s8s",
            bs,
            36,
            0x80,  # drive number
            0,
            0x29,  # extended boot signature: the next three fields are valid
            self.volume_id,
            self.label.encode("ascii").ljust(11),
            b"FAT16   ",
        )
        bs[62 : 62 + len(_NO_BOOT_CODE)] = _NO_BOOT_CODE
        bs[510:512] = b"\x55\xaa"
        return bytes(bs)

    @staticmethod
    def _entry(name11: bytes, attrs: int, nt: int, cluster: int, size: int) -> bytes:
        d = _DOS_DATE_1980_01_01
        return struct.pack("<11sBBBHHHHHHHI", name11, attrs, nt, 0, 0, d, d, 0, 0, d, cluster, size)

    def _dir_bytes(self, d: _Node, parent_cluster: int, is_root: bool) -> bytes:
        out = bytearray()
        if is_root:
            out += self._entry(self.label.encode("ascii").ljust(11), ATTR_VOLUME_ID, 0, 0, 0)
        else:
            out += self._entry(b".          ", ATTR_DIRECTORY, 0, d.cluster, 0)
            out += self._entry(b"..         ", ATTR_DIRECTORY, 0, parent_cluster, 0)
        for child in d.children.values():
            name11, nt = short_name(child.name)
            attrs = ATTR_DIRECTORY if child.is_dir else child.attrs
            out += self._entry(name11, attrs, nt, child.cluster, child.size)
        return bytes(out)

    def write(self, f: BinaryIO, offset: int = 0) -> None:
        """Write the volume into the open file `f` at byte `offset` (the file is extended
        sparsely to the volume's end; free space is left as it is, i.e. zero in a new file)."""
        g = self.geometry
        order = self._allocate()

        fat = bytearray(g.fat_sectors * SECTOR)
        struct.pack_into("<HH", fat, 0, 0xFFF8, 0xFFFF)
        for node in order:
            for i in range(node.clusters):
                c = node.cluster + i
                struct.pack_into("<H", fat, 2 * c, 0xFFFF if i == node.clusters - 1 else c + 1)

        def put(pos: int, data: bytes) -> None:
            f.seek(offset + pos)
            f.write(data)

        put(0, self.boot_sector())
        for i in range(RESERVED_SECTORS - 1):
            put((1 + i) * SECTOR, bytes(SECTOR))
        for n in range(NUM_FATS):
            put((RESERVED_SECTORS + n * g.fat_sectors) * SECTOR, bytes(fat))
        root = self._dir_bytes(self._root, 0, True)
        put(g.root_start * SECTOR, root.ljust(ROOT_ENTRIES * 32, b"\0"))

        def walk(d: _Node, parent_cluster: int) -> None:
            for child in d.children.values():
                if child.is_dir:
                    data = self._dir_bytes(child, parent_cluster, False)
                    put(g.cluster_offset(child.cluster),
                        data.ljust(child.clusters * g.cluster_bytes, b"\0"))  # fmt: skip
                    walk(child, child.cluster)
                elif child.clusters:
                    put(g.cluster_offset(child.cluster), _read(child.data))

        walk(self._root, 0)
        # A file's last cluster needs no padding: the volume's end is set explicitly.
        end = offset + self.size
        f.seek(0, os.SEEK_END)
        if f.tell() < end:
            f.truncate(end)

    def write_file(self, path: Path) -> None:
        """Write the volume as a file of its own."""
        with open(path, "wb") as f:
            self.write(f)


def _read(data: bytes | Path | None) -> bytes:
    if isinstance(data, Path):
        return data.read_bytes()
    return data or b""
