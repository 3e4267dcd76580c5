"""Partition tables, FAT filesystems and ISO 9660 images, made with the tools that exist for
them: sfdisk (package fdisk) for MBR and GPT, mkfs.fat (dosfstools) and mtools for FAT,
xorriso for ISO 9660 with El Torito. scripts/install-deps.sh installs all four.

The main functions: `mbr_disk()` / `gpt_disk()` (a sparse disk image with one partition),
`make_fat()` (a FAT filesystem in a file, or in a partition of a disk image), `fat_put()`
(copy host files into it) and `make_iso()`. Everything runs on unmounted image files: no
loop devices, no root. The same inputs give the same bytes: every timestamp is `EPOCH`,
volume ids and GUIDs are the caller's, owners are root.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from xenia.errors import BackendError
from xenia.tools import find_tool, run_tool

SECTOR = 512
PART_START = 2048  # LBA: 1 MiB, as fdisk and parted align
MBR_CODE_SIZE = 440  # boot code; then the disk signature and the partition entries
ESP_TYPE = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")  # EFI System Partition
MBR_TYPE_FAT16_LBA = 0x0E
EPOCH = 315532800  # 1980-01-01 00:00 UTC, FAT's first date: every file's timestamp
TIMEOUT = 120.0  # seconds for one tool run (mcopy of a 30 MB kernel takes well under 1 s)

# program -> the Debian package that has it
PACKAGES = {
    "sfdisk": "fdisk",
    "mkfs.fat": "dosfstools",
    "mmd": "mtools",
    "mcopy": "mtools",
    "xorriso": "xorriso",
}


def tool(name: str, doing: str) -> str:
    """The path of `name`; NotSupported naming its package when it is not installed."""
    return find_tool(name, PACKAGES[name], doing)


def check_tools(doing: str) -> None:
    """NotSupported for the first missing tool, before a build downloads anything."""
    for name in PACKAGES:
        tool(name, doing)


def tool_env(scratch: Path) -> dict[str, str]:
    """The whole environment the tools run with: C locale, fixed timestamps
    (SOURCE_DATE_EPOCH: mtools, mkfs.fat and xorriso honour it) and a HOME without the
    user's ~/.mtoolsrc. MTOOLS_SKIP_CHECK: mtools otherwise refuses a FAT whose size is not
    a whole number of its (made-up) tracks."""
    path = os.pathsep.join(
        dict.fromkeys([os.path.dirname(tool("mcopy", "running mtools")), "/usr/bin", "/bin"])
    )
    return {
        "PATH": path,
        "LC_ALL": "C",
        "HOME": str(scratch),
        "SOURCE_DATE_EPOCH": str(EPOCH),
        "MTOOLS_SKIP_CHECK": "1",
    }


def _xorriso_errors(output: str) -> str:
    """xorriso's FAILURE/SORRY/FATAL lines, without its banner and notes."""
    severe = (" : SORRY : ", " : FAILURE : ", " : FATAL : ")
    return "\n".join(ln for ln in output.splitlines() if any(s in ln for s in severe))


def _run(
    argv: Sequence[str],
    doing: str,
    scratch: Path,
    input: str | None = None,
    errors: Callable[[str], str] | None = None,
) -> str:
    return run_tool(list(argv), doing, input=input, timeout=TIMEOUT, env=tool_env(scratch),
                    errors=errors).stdout


def _absolute(path: Path) -> Path:
    """Paths handed to the tools are absolute, so none can be read as an option."""
    return Path(os.path.abspath(path))


# -- partition tables ------------------------------------------------------------------------
@dataclass(frozen=True)
class Partition:
    start: int  # first sector
    size: int  # sectors

    @property
    def offset(self) -> int:
        return self.start * SECTOR


def _partition(disk: Path, size: int, script: str, scratch: Path) -> Partition:
    """Create `disk` as a sparse file of `size` bytes and write the one-partition table
    `script` (sfdisk's input format) on it; return the partition sfdisk made."""
    disk = _absolute(disk)
    doing = f"writing the partition table of {disk.name}"
    with open(disk, "wb") as f:
        f.truncate(size)
    sfdisk = tool("sfdisk", doing)
    # --no-reread/--no-tell-kernel: an image file, not a block device the kernel knows.
    _run([sfdisk, "--quiet", "--no-reread", "--no-tell-kernel", "--", str(disk)], doing,
         scratch, input=script)  # fmt: skip
    table = json.loads(_run([sfdisk, "--json", "--", str(disk)], doing, scratch))
    parts = table["partitiontable"]["partitions"]
    if len(parts) != 1:
        raise BackendError(f"Failed {doing}: sfdisk made {len(parts)} partitions, not 1")
    return Partition(int(parts[0]["start"]), int(parts[0]["size"]))


def mbr_disk(
    disk: Path, size: int, *, disk_signature: int, boot_code: bytes, scratch: Path
) -> Partition:
    """A disk with an MBR, `boot_code` in its first 440 bytes and one active FAT16 (LBA)
    partition from 1 MiB to the end."""
    if len(boot_code) > MBR_CODE_SIZE:
        raise ValueError(f"MBR boot code is {len(boot_code)} bytes, at most {MBR_CODE_SIZE}")
    part = _partition(
        disk, size,
        f"label: dos\nlabel-id: 0x{disk_signature:08x}\nunit: sectors\n\n"
        f"start={PART_START}, type={MBR_TYPE_FAT16_LBA:x}, bootable\n",
        scratch,
    )  # fmt: skip
    # After sfdisk, which writes a fresh sector 0; the code area ends before the signature.
    with open(disk, "r+b") as f:
        f.write(boot_code)
    return part


def gpt_disk(
    disk: Path, size: int, *, disk_guid: uuid.UUID, part_guid: uuid.UUID, scratch: Path
) -> Partition:
    """A disk with a GPT (and its protective MBR) holding one EFI System Partition from
    1 MiB on (sfdisk ends it on a 1 MiB boundary)."""
    return _partition(
        disk, size,
        f"label: gpt\nlabel-id: {disk_guid}\nunit: sectors\n\n"
        f"start={PART_START}, type={ESP_TYPE}, uuid={part_guid}, "
        'name="EFI System Partition"\n',
        scratch,
    )  # fmt: skip


# -- FAT -------------------------------------------------------------------------------------
def make_fat(
    image: Path,
    part: Partition,
    *,
    label: str,
    volume_id: int,
    scratch: Path,
    fat_bits: int | None = None,
) -> None:
    """Write an empty FAT filesystem over `part` of `image` (Partition(0, n): a whole file
    of n sectors, which must exist). `fat_bits` None lets mkfs.fat pick 12 or 16 by size."""
    image = _absolute(image)
    doing = f"making the FAT filesystem of {image.name}"
    if part.size % 2:
        raise ValueError(f"a FAT of {part.size} sectors is not a whole number of KiB")
    argv = [tool("mkfs.fat", doing)]
    if fat_bits is not None:
        argv += ["-F", str(fat_bits)]
    argv += [
        # --invariant fixes the volume id and dates; -i after it sets ours.
        "--invariant", "-i", f"{volume_id:08x}", "-n", label,
        # The BPB's geometry and hidden sectors agree with the MBR sfdisk wrote (for boot
        # code that still uses CHS); mkfs.fat then ends the FAT on a whole track.
        "-g", "255/63", "-h", str(part.start), f"--offset={part.start}",
        "--mbr=n", "--", str(image), str(part.size // 2),
    ]  # fmt: skip
    _run(argv, doing, scratch)


def fat_put(image: Path, files: Mapping[str, Path], *, scratch: Path, offset: int = 0) -> None:
    """Copy host files into the FAT at byte `offset` of `image`: {"EFI/BOOT/BOOTX64.EFI":
    host path, ...}; their directories are made first."""
    image = _absolute(image)
    doing = f"copying files into the FAT filesystem of {image.name}"
    if "@@" in str(image):  # mtools reads IMAGE@@OFFSET
        raise ValueError(f"the image path {image} contains '@@', which mtools cannot take")
    drive = f"{image}@@{offset}"
    dirs: dict[str, None] = {}
    for dest in files:
        parents = PurePosixPath(dest).parents
        for d in reversed(list(parents)[:-1]):  # outermost first, without "."
            dirs[f"::/{d}"] = None
    if dirs:
        _run([tool("mmd", doing), "-i", drive, "--", *dirs], doing, scratch)
    mcopy = tool("mcopy", doing)
    for dest, src in files.items():
        _run([mcopy, "-i", drive, "--", str(_absolute(src)), f"::/{dest}"], doing, scratch)


# -- ISO 9660 --------------------------------------------------------------------------------
def make_iso(
    path: Path,
    files: Mapping[str, Path],
    *,
    volume_id: str,
    scratch: Path,
    isolinux_dir: str | None = None,
    efi_image: str | None = None,
) -> None:
    """Write the ISO 9660 image `path` (Rock Ridge names, no Joliet) holding `files`
    ({"isolinux/isolinux.bin": host path, ...}), bootable by El Torito: on BIOS through
    ISOLINUX in `isolinux_dir` (its isolinux.bin, no emulation, 4 sectors, boot info table;
    the catalog as boot.cat next to it), on UEFI through the FAT image `efi_image`."""
    path = _absolute(path)
    doing = f"writing the ISO 9660 image {path.name}"
    if path.exists():  # xorriso would add a session to an existing image
        raise ValueError(f"{path} exists already")
    argv = [
        tool("xorriso", doing), "-no_rc", "-abort_on", "FAILURE", "-report_about", "SORRY",
        # Host and ISO paths are literal, never patterns.
        "-disk_pattern", "off", "-iso_rr_pattern", "off",
        "-outdev", f"stdio:{path}", "-volid", volume_id, "-joliet", "off", "-rockridge", "on",
        # A plain image from block 0: no room kept for xorriso's multi-session emulation.
        "-compliance", "no_emul_toc",
    ]  # fmt: skip
    for dest, src in files.items():
        argv += ["-map", str(_absolute(src)), f"/{dest}"]
    argv += [
        # Owners, modes and dates that do not depend on who builds it, or when.
        "-chown_r", "0", "/", "--", "-chgrp_r", "0", "/", "--",
        "-find", "/", "-type", "f", "-exec", "chmod", "0644", "--",
        "-find", "/", "-type", "d", "-exec", "chmod", "0755", "--",
        "-volume_date", "all_file_dates", f"={EPOCH}",
    ]  # fmt: skip
    if isolinux_dir is not None:
        argv += ["-boot_image", "isolinux", f"dir=/{isolinux_dir}"]
    if efi_image is not None:
        if isolinux_dir is not None:
            argv += ["-boot_image", "any", "next"]  # a second El Torito entry
        argv += ["-boot_image", "any", f"efi_path=/{efi_image}"]
    _run(argv, doing, scratch, errors=_xorriso_errors)
