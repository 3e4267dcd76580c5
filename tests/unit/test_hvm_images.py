"""The pieces of the HVM images, without QEMU or apt: the unified kernel image's PE surgery
and finding OVMF. (Partition tables, FAT and ISO 9660: tests/unit/test_fstools.py.)
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from xenia.errors import NotFound
from xenia.images.hvm import hvm_images, ovmf_paths, ovmf_qemu_args
from xenia.images.uki import PeError, add_sections, make_uki, pe_checksum


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
