"""Partition tables for raw disk images: MBR (`mbr()`) and GPT (`gpt()`), written in Python.

Both return the bytes to put at the start of the disk (and, for GPT, the backup table for
its end) for one partition; nothing here touches a real block device. Sizes are in 512-byte
sectors (LBA). The partition starts at 1 MiB (`PART_START`), as fdisk and parted align.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass

SECTOR = 512
PART_START = 2048  # LBA: 1 MiB
MBR_CODE_SIZE = 440  # boot code; then the disk signature, 2 bytes, 4 entries, 55 AA

ESP_TYPE = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")  # EFI System Partition
MBR_TYPE_FAT16_LBA = 0x0E
MBR_TYPE_GPT_PROTECTIVE = 0xEE
GPT_ENTRIES = 128
GPT_ENTRY_SIZE = 128
GPT_ENTRIES_SECTORS = GPT_ENTRIES * GPT_ENTRY_SIZE // SECTOR  # 32


def _chs(lba: int) -> bytes:
    """The CHS address of `lba` with 255 heads and 63 sectors a track (FE FF FF beyond)."""
    cyl, rem = divmod(lba, 255 * 63)
    if cyl > 1023:
        return b"\xfe\xff\xff"
    head, sec = divmod(rem, 63)
    return bytes([head, ((sec + 1) & 0x3F) | ((cyl >> 2) & 0xC0), cyl & 0xFF])


def _mbr_entry(bootable: bool, ptype: int, start: int, count: int) -> bytes:
    return (
        bytes([0x80 if bootable else 0])
        + _chs(start)
        + bytes([ptype])
        + _chs(start + count - 1)
        + struct.pack("<II", start, count)
    )


def mbr(
    disk_sectors: int,
    *,
    boot_code: bytes = b"",
    ptype: int = MBR_TYPE_FAT16_LBA,
    start: int = PART_START,
    disk_signature: int = 0,
) -> bytes:
    """Sector 0 of a disk with one bootable primary partition from `start` to the end."""
    if len(boot_code) > MBR_CODE_SIZE:
        raise ValueError(f"MBR boot code is {len(boot_code)} bytes, at most {MBR_CODE_SIZE}")
    count = disk_sectors - start
    if count <= 0 or disk_sectors > 0xFFFFFFFF:
        raise ValueError(f"a disk of {disk_sectors} sectors cannot hold an MBR partition")
    out = bytearray(SECTOR)
    out[: len(boot_code)] = boot_code
    struct.pack_into("<I", out, MBR_CODE_SIZE, disk_signature)
    out[446:462] = _mbr_entry(True, ptype, start, count)
    out[510:512] = b"\x55\xaa"
    return bytes(out)


@dataclass(frozen=True)
class Gpt:
    """A GPT for one partition: `head` goes at LBA 0 (protective MBR, header, entries),
    `tail` at `tail_lba` (backup entries, backup header)."""

    head: bytes
    tail: bytes
    tail_lba: int
    first_lba: int
    last_lba: int  # inclusive


def gpt(
    disk_sectors: int,
    *,
    disk_guid: uuid.UUID,
    part_guid: uuid.UUID,
    part_type: uuid.UUID = ESP_TYPE,
    name: str = "EFI System Partition",
    start: int = PART_START,
) -> Gpt:
    """A GPT with one partition from `start` to the last usable sector."""
    last = disk_sectors - 1
    last_usable = last - 1 - GPT_ENTRIES_SECTORS
    if last_usable < start:
        raise ValueError(f"a disk of {disk_sectors} sectors is too small for a GPT partition")
    entry = struct.pack(
        "<16s16sQQQ72s",
        part_type.bytes_le,
        part_guid.bytes_le,
        start,
        last_usable,
        0,
        name.encode("utf-16-le")[:72],
    )
    entries = entry.ljust(GPT_ENTRIES * GPT_ENTRY_SIZE, b"\0")
    entries_crc = zlib.crc32(entries)

    def header(current: int, backup: int, entries_lba: int) -> bytes:
        fields = [
            b"EFI PART", 0x00010000, 92, 0, 0, current, backup,
            2 + GPT_ENTRIES_SECTORS, last_usable, disk_guid.bytes_le,
            entries_lba, GPT_ENTRIES, GPT_ENTRY_SIZE, entries_crc,
        ]  # fmt: skip
        fmt = "<8sIIIIQQQQ16sQIII"
        crc = zlib.crc32(struct.pack(fmt, *fields))
        fields[3] = crc
        return struct.pack(fmt, *fields).ljust(SECTOR, b"\0")

    protective = bytearray(SECTOR)
    protective[446:462] = (
        b"\x00\x00\x02\x00"
        + bytes([MBR_TYPE_GPT_PROTECTIVE])
        + b"\xff\xff\xff"
        + struct.pack("<II", 1, min(last, 0xFFFFFFFF))
    )
    protective[510:512] = b"\x55\xaa"
    head = bytes(protective) + header(1, last, 2) + entries
    tail_lba = last - GPT_ENTRIES_SECTORS
    tail = entries + header(last, 1, tail_lba)
    return Gpt(head=head, tail=tail, tail_lba=tail_lba, first_lba=start, last_lba=last_usable)
