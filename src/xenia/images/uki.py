"""A unified kernel image (UKI): systemd's EFI stub with kernel, initrd and command line.

`make_uki()` appends the sections `.osrel`, `.cmdline`, `.linux` and `.initrd` to
`linuxx64.efi.stub` (Debian package systemd-boot-efi), which is what `objcopy
--add-section ... --change-section-vma ...` does in the recipe of systemd-stub(7) for
systemd 252 (Debian 12), written in Python so binutils is not needed. The stub finds the
sections by name in the loaded image, so each one gets its own virtual address range after
the stub's own sections (`.linux` 2 MiB-aligned, as the kernel prefers); the PE header
has room for a few more section headers (its size is not changed here).

Firmware loads the result as `/EFI/BOOT/BOOTX64.EFI`; the stub starts the kernel through
its EFI handover entry and hands it the initrd (LINUX_EFI_INITRD_MEDIA), so the kernel
needs no file system access, and the command line is the embedded one (firmware boot
entries carry no options for a removable-media boot path).
"""

from __future__ import annotations

import array
import struct
import sys
from dataclasses import dataclass

SCN_INITIALIZED_DATA_READ = 0x40000040  # IMAGE_SCN_CNT_INITIALIZED_DATA | MEM_READ
_SECTION_HEADER = struct.Struct("<8sIIIIIIHHI")  # 40 bytes


class PeError(ValueError):
    """The stub is not a PE32+ image this module can extend."""


@dataclass(frozen=True)
class _Pe:
    coff: int  # offset of the COFF file header
    opt: int  # offset of the optional header
    sections: int  # offset of the section table
    nsections: int
    section_alignment: int
    file_alignment: int
    size_of_image: int
    size_of_headers: int
    first_raw: int  # lowest PointerToRawData of a section
    raw_end: int  # end of the last section's raw data
    symtab: int  # offset of the COFF symbol table (0: none)


def _align(n: int, a: int) -> int:
    return -(-n // a) * a


def _parse(img: bytes) -> _Pe:
    if img[:2] != b"MZ":
        raise PeError("no MZ header")
    (lfanew,) = struct.unpack_from("<I", img, 0x3C)
    if img[lfanew : lfanew + 4] != b"PE\0\0":
        raise PeError("no PE signature")
    coff = lfanew + 4
    machine, nsections, _, symtab, _, opt_size, _ = struct.unpack_from("<HHIIIHH", img, coff)
    if machine != 0x8664:
        raise PeError(f"machine {machine:#x} is not x86-64")
    opt = coff + 20
    (magic,) = struct.unpack_from("<H", img, opt)
    if magic != 0x20B:
        raise PeError("not a PE32+ image")
    sect_align, file_align = struct.unpack_from("<II", img, opt + 32)
    size_of_image, size_of_headers = struct.unpack_from("<II", img, opt + 56)
    sections = opt + opt_size
    raws = [_SECTION_HEADER.unpack_from(img, sections + 40 * i)[3:5] for i in range(nsections)]
    first_raw = min([ptr for _, ptr in raws if ptr] or [size_of_headers])
    raw_end = max([ptr + size for size, ptr in raws if ptr] or [size_of_headers])
    return _Pe(coff, opt, sections, nsections, sect_align, file_align, size_of_image,
               size_of_headers, first_raw, raw_end, symtab)  # fmt: skip


def add_sections(stub: bytes, sections: list[tuple[str, bytes, int]]) -> bytes:
    """`stub` with each (name, data, alignment of its virtual address) appended."""
    pe = _parse(stub)
    table_end = pe.sections + 40 * (pe.nsections + len(sections))
    if table_end > min(pe.size_of_headers, pe.first_raw):
        raise PeError(
            f"no room in the PE header for {len(sections)} more section headers "
            f"({table_end} > {pe.size_of_headers})"
        )
    out = bytearray(stub)
    if pe.symtab:
        # A COFF symbol table (systemd 252's stub keeps one) sits after the sections' data;
        # it only serves debuggers, and new sections go where it was (objcopy would move it).
        if pe.symtab < pe.raw_end:
            raise PeError("the COFF symbol table is not at the end of the image")
        del out[pe.symtab :]
        struct.pack_into("<II", out, pe.coff + 8, 0, 0)  # PointerToSymbolTable, count
    out += bytes(_align(len(out), pe.file_alignment) - len(out))
    vaddr = pe.size_of_image
    headers = bytearray()
    init_data = 0
    for name, data, align in sections:
        if len(name.encode()) > 8:
            raise PeError(f"section name {name!r} is longer than 8 bytes")
        vaddr = _align(vaddr, max(align, pe.section_alignment))
        raw_size = _align(len(data), pe.file_alignment)
        headers += _SECTION_HEADER.pack(
            name.encode(), len(data), vaddr, raw_size, len(out), 0, 0, 0, 0,
            SCN_INITIALIZED_DATA_READ,
        )  # fmt: skip
        out += data + bytes(raw_size - len(data))
        vaddr += len(data)
        init_data += raw_size
    size_of_image = _align(vaddr, pe.section_alignment)

    out[pe.sections + 40 * pe.nsections : table_end] = headers
    struct.pack_into("<H", out, pe.coff + 2, pe.nsections + len(sections))
    (old_init,) = struct.unpack_from("<I", out, pe.opt + 8)
    struct.pack_into("<I", out, pe.opt + 8, old_init + init_data)  # SizeOfInitializedData
    struct.pack_into("<I", out, pe.opt + 56, size_of_image)
    struct.pack_into("<I", out, pe.opt + 64, 0)
    struct.pack_into("<I", out, pe.opt + 64, pe_checksum(bytes(out)))
    return bytes(out)


def pe_checksum(img: bytes) -> int:
    """The PE image checksum (as in imagehlp's CheckSumMappedFile) of an image whose
    checksum field is zero; firmware ignores it, tools such as sbsign expect it right."""
    words = array.array("H", img + bytes(len(img) % 2))
    if sys.byteorder == "big":
        words.byteswap()
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (total + len(img)) & 0xFFFFFFFF


def make_uki(stub: bytes, kernel: bytes, initrd: bytes, cmdline: str, osrel: str) -> bytes:
    """A UKI booting `kernel` with `initrd` and `cmdline` (NUL-terminated, as ukify does)."""
    return add_sections(
        stub,
        [
            (".osrel", osrel.encode(), 0x1000),
            (".cmdline", cmdline.encode() + b"\0", 0x1000),
            (".linux", kernel, 0x200000),
            (".initrd", initrd, 0x1000),
        ],
    )
