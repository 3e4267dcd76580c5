"""A gzip-compressed newc cpio archive (an initramfs), written in Python.

The main class is `Initramfs`: add directories, files, symlinks and device nodes by their
path inside the archive, then `write()` it. Parent directories are created implicitly and
always come before their contents (the kernel's unpacker does not create missing parents).
Timestamps and owners are fixed (mtime 0, root:root), so the same inputs give the same bytes.
"""

from __future__ import annotations

import gzip
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    mode: int  # file type bits | permission bits
    data: bytes = b""  # file contents, or a symlink's target
    rdev: tuple[int, int] = (0, 0)


class Initramfs:
    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}

    @staticmethod
    def _norm(path: str) -> str:
        p = PurePosixPath("/", path)
        if ".." in p.parts:
            raise ValueError(f"bad path in initramfs: {path!r}")
        return p.as_posix().lstrip("/")

    def _parents(self, path: str) -> None:
        for parent in reversed(PurePosixPath(path).parents):
            key = parent.as_posix()
            if key not in (".", "") and key not in self._entries:
                self._entries[key] = Entry(stat.S_IFDIR | 0o755)

    def _put(self, path: str, entry: Entry) -> None:
        key = self._norm(path)
        if not key:
            raise ValueError("the archive root cannot be an entry")
        self._parents(key)
        old = self._entries.get(key)
        if old is not None and stat.S_ISDIR(old.mode) and not stat.S_ISDIR(entry.mode):
            raise ValueError(f"{path} is already a directory in the initramfs")
        self._entries[key] = entry

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        self._put(path, Entry(stat.S_IFDIR | mode))

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._put(path, Entry(stat.S_IFREG | mode, data))

    def add_symlink(self, path: str, target: str) -> None:
        self._put(path, Entry(stat.S_IFLNK | 0o777, target.encode()))

    def add_chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._put(path, Entry(stat.S_IFCHR | mode, rdev=(major, minor)))

    def __contains__(self, path: str) -> bool:
        return self._norm(path) in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def cpio(self) -> bytes:
        """The uncompressed newc archive."""
        out = bytearray()
        # Sorting by path parts puts every directory before what it contains.
        for ino, key in enumerate(sorted(self._entries, key=lambda k: k.split("/")), start=1):
            e = self._entries[key]
            nlink = 2 if stat.S_ISDIR(e.mode) else 1
            _append(out, key, ino, e.mode, nlink, e.data, e.rdev)
        _append(out, TRAILER, 0, 0, 1, b"", (0, 0))
        return bytes(out)

    def write(self, path: Path, compresslevel: int = 9) -> int:
        """Write the gzip-compressed archive to `path`; returns its size in bytes."""
        raw = self.cpio()
        with (
            open(path, "wb") as f,
            gzip.GzipFile(
                filename="", mode="wb", fileobj=f, compresslevel=compresslevel, mtime=0
            ) as gz,
        ):
            gz.write(raw)
        return path.stat().st_size


def _append(
    out: bytearray, name: str, ino: int, mode: int, nlink: int, data: bytes, rdev: tuple[int, int]
) -> None:
    bname = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(bname), 0)
    out += b"070701" + b"".join(b"%08X" % v for v in fields)
    out += bname
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(out) % 4)
