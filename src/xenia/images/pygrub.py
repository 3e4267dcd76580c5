"""pygrub: the kernel a PV guest's own disk names in its GRUB configuration; the main
function is extract_boot.

As Xen's pygrub: read the disk's filesystem (without mounting it), find grub.cfg (GRUB 2)
or menu.lst (GRUB legacy), pick the default entry (or `bootloader_args`' `--entry=N`),
and copy its kernel and initrd out, to boot them directly. Filesystems are read with the
tools that exist for them, on the image file: mtools for FAT, debugfs (e2fsprogs) for
ext2/3/4. Partitions are found with sfdisk; a disk without a table is one filesystem.
Only raw images are read (a qcow2 disk would need a block driver; the error says so).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from xenia.errors import BackendError, InvalidConfig, NotFound
from xenia.tools import find_tool, run_tool

SECTOR = 512
CONFIGS = ("/boot/grub/grub.cfg", "/grub/grub.cfg", "/boot/grub2/grub.cfg", "/grub2/grub.cfg",
           "/boot/grub/menu.lst", "/grub/menu.lst")
MAX_FILE = 512 << 20  # a kernel or initrd larger than this is not one


@dataclass
class Entry:
    title: str
    kernel: str = ""
    initrd: str | None = None
    args: str = ""


@dataclass
class BootFiles:
    kernel: Path
    ramdisk: Path | None
    cmdline: str
    title: str
    entries: list[str] = field(default_factory=list)


class _Fs:
    """One filesystem at a byte offset of the image: FAT (mtools) or ext (debugfs)."""

    def __init__(self, image: Path, offset: int, kind: str) -> None:
        self.image, self.offset, self.kind = image, offset, kind

    def read(self, path: str, doing: str) -> str | None:
        if self.kind == "fat":
            argv = [find_tool("mtype", "mtools", doing), "-i", f"{self.image}@@{self.offset}",
                    "--", f"::{path}"]
        else:
            # `--` before the image (debugfs reads options with GNU getopt): a name
            # such as "-w.img" would otherwise be options (-w opens it read-write).
            argv = [find_tool("debugfs", "e2fsprogs", doing), "-R", f"cat {path}", "--",
                    f"{self.image}?offset={self.offset}"]
        try:
            out = run_tool(argv, doing, timeout=60.0).stdout
        except BackendError:
            return None
        # debugfs prints nothing (and exits 0) for a missing file; its errors go to stderr.
        return out or None

    def copy(self, path: str, dest: Path, doing: str) -> None:
        if self.kind == "fat":
            argv = [find_tool("mcopy", "mtools", doing), "-n", "-i",
                    f"{self.image}@@{self.offset}", "--", f"::{path}", str(dest)]
        else:
            argv = [find_tool("debugfs", "e2fsprogs", doing), "-R",
                    f"dump {path} {dest}", "--", f"{self.image}?offset={self.offset}"]
        try:
            run_tool(argv, doing, timeout=120.0)
        except BackendError:
            pass  # mcopy fails on a missing file; debugfs writes nothing: both said below
        if not dest.is_file() or dest.stat().st_size == 0:
            raise NotFound(f"Failed {doing}: '{path}' is not on the guest's disk")
        if dest.stat().st_size > MAX_FILE:
            raise InvalidConfig(f"Failed {doing}: '{path}' is larger than {MAX_FILE >> 20} MiB")


def _filesystems(image: Path, doing: str) -> list[_Fs]:
    """Every partition's filesystem, or the whole disk's."""
    offsets = [0]
    try:
        table = json.loads(run_tool([find_tool("sfdisk", "fdisk", doing), "--json", "--",
                                     str(image)], doing).stdout)
        offsets = [int(p["start"]) * SECTOR for p in table["partitiontable"]["partitions"]]
    except (BackendError, ValueError, KeyError):
        pass  # no partition table: one filesystem
    head = image.open("rb")
    out = []
    with head:
        for off in offsets:
            head.seek(off)
            boot = head.read(2048)
            if len(boot) < 2048:
                continue
            if boot[1080:1082] == b"\x53\xef":  # ext2/3/4 superblock magic at 1024+56
                out.append(_Fs(image, off, "ext"))
            elif boot[510:512] == b"\x55\xaa" and (b"FAT" in boot[54:62] or b"FAT" in boot[82:90]):
                out.append(_Fs(image, off, "fat"))
    return out


def parse_grub(text: str) -> tuple[list[Entry], str]:
    """(entries, default) from a grub.cfg or a menu.lst."""
    entries: list[Entry] = []
    default = "0"
    current: Entry | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"set\s+default=[\"']?([^\"'\s]*)", line) or re.match(r"default\s+(\S+)",
                                                                          line)
        if m and current is None:
            default = m.group(1)
            continue
        if line.startswith("menuentry"):
            m = re.match(r"menuentry\s+(?:'([^']*)'|\"([^\"]*)\"|(\S+))", line)
            current = Entry((m.group(1) or m.group(2) or m.group(3)) if m else "")
            entries.append(current)
            continue
        if line.startswith("title"):
            current = Entry(line[5:].strip())
            entries.append(current)
            continue
        if current is None:
            continue
        words = line.split(None, 2)
        if words[0] in ("linux", "linux16", "linuxefi", "kernel") and len(words) > 1:
            current.kernel = words[1]
            current.args = words[2] if len(words) > 2 else ""
        elif words[0] in ("initrd", "initrd16", "initrdefi") and len(words) > 1:
            current.initrd = words[1]
        elif line == "}":
            current = None
    return [e for e in entries if e.kernel], default


def _pick(entries: list[Entry], default: str, args: list[str]) -> Entry:
    wanted = default
    for arg in args:
        if arg.startswith("--entry="):
            wanted = arg.split("=", 1)[1]
    if wanted.isdigit() and int(wanted) < len(entries):
        return entries[int(wanted)]
    for e in entries:
        if e.title == wanted:
            return e
    return entries[0]


def extract_boot(image: Path, dest: Path, bootloader_args: list[str] | None = None) -> BootFiles:
    """The kernel, initrd and command line of the disk's default GRUB entry, copied to
    `dest` (a directory of the domain's own)."""
    doing = f"to read the boot menu of {image.name} (pygrub)"
    args = list(bootloader_args or [])
    for fs in _filesystems(image, doing):
        for conf in CONFIGS:
            data = fs.read(conf, doing)
            if not data:
                continue
            entries, default = parse_grub(data)
            if not entries:
                continue
            entry = _pick(entries, default, args)
            # A grub.cfg under /boot names files from the filesystem's root; one of a
            # separate /boot partition (at /grub/...) names them from that partition.
            dest.mkdir(parents=True, exist_ok=True)
            kernel = dest / "vmlinuz"
            fs.copy(_clean(entry.kernel), kernel, doing)
            ramdisk = None
            if entry.initrd:
                ramdisk = dest / "initrd.img"
                fs.copy(_clean(entry.initrd), ramdisk, doing)
            for arg in args:
                if arg.startswith("--args="):
                    entry.args = arg.split("=", 1)[1]
            return BootFiles(kernel, ramdisk, entry.args, entry.title,
                             [e.title for e in entries])
    raise NotFound(f"Failed {doing}: no filesystem on it holds a GRUB configuration "
                   f"({', '.join(CONFIGS)})")


# The guest writes its own grub.cfg: a path is spliced into a debugfs request (which
# splits on blanks and reads quotes), so only plain path characters pass, as one word.
_PATH_RE = re.compile(r"/[A-Za-z0-9._+@~/-]*\Z")


def _clean(path: str) -> str:
    """A GRUB path as a filesystem path: `(hd0,1)/vmlinuz` -> /vmlinuz; no '..'."""
    path = re.sub(r"^\([^)]*\)", "", path)
    if not _PATH_RE.match(path) or ".." in path.split("/"):
        raise InvalidConfig(f"Failed to read the boot menu (pygrub): unusable path "
                            f"{shlex.quote(path)}")
    return path
