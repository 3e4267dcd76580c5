"""The save file: a self-describing, checksummed container around QEMU's migration stream.

Layout:
    MAGIC (16 bytes) | header length (8, big endian) | header JSON | zero padding to
    STREAM_ALIGN | QEMU migration stream | trailer: TRAILER_MAGIC (16) + stream length (8)
    + SHA-256 of header JSON and stream (32)

The header carries the domain's config and device placement (everything needed to build
the same machine again), the QEMU version and machine type. `verify()` refuses a
truncated or corrupted file before anything is started.

The stream comes from QEMU, which a guest may have taken over: it never gets the file
(drivers/qemu_migrate.py copies its stream from a pipe), and even so `finish()` refuses
a file whose header is not byte for byte what `begin()` wrote, digests the header from
memory, not from disk, and gives the file to root, mode 0600, before the trailer.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xenia.errors import InvalidConfig
from xenia.files import fsync_dir, open_regular

MAGIC = b"XENIA-SAVE\x00v1\x00\x00\n"
TRAILER_MAGIC = b"XENIA-SAVE-END\x00\n"
STREAM_ALIGN = 4096
FORMAT_VERSION = 1
assert len(MAGIC) == 16 and len(TRAILER_MAGIC) == 16
_TRAILER_LEN = 16 + 8 + 32


@dataclass
class SaveHeader:
    offset: int  # where QEMU's stream starts
    meta: dict[str, Any]
    blob: bytes = b""  # the header JSON, as written (begin) or read (verify)
    size: int = 0  # the whole file's, once finished

    @property
    def head(self) -> bytes:
        """Every byte before the stream: magic, length, JSON and padding."""
        head = MAGIC + struct.pack(">Q", len(self.blob)) + self.blob
        return head + bytes(self.offset - len(head))

    @property
    def sha256(self) -> str:
        """The header's hash: a record kept elsewhere (a snapshot's) pins it with this."""
        return hashlib.sha256(self.head).hexdigest()


# A save file's directory may be writable by others (/tmp, a shared dir): a file or a
# link planted at the name is never followed or reused.
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def partial_name(target: Path) -> Path:
    """The unpredictable name a save file is written under before it is complete."""
    return target.with_name(f".{target.name}.partial-{secrets.token_hex(8)}")


def begin(path: Path, meta: dict[str, Any]) -> SaveHeader:
    """Write magic and header into a new file `path` (never an existing file or link);
    return the offset at which QEMU must write its stream."""
    meta = dict(meta, format_version=FORMAT_VERSION)
    blob = json.dumps(meta, sort_keys=True).encode()
    header = SaveHeader(_stream_offset(len(blob)), meta, blob)
    try:
        fd = os.open(path, _NEW, 0o600)
    except FileExistsError as e:
        raise InvalidConfig(f"Failed to save to {path}: something appeared at that name "
                            "(a planted file or link?); retry") from e
    with os.fdopen(fd, "wb") as f:
        f.write(header.head)
    return header


def _stream_offset(blob_len: int) -> int:
    return -(-(24 + blob_len) // STREAM_ALIGN) * STREAM_ALIGN


def finish(path: Path, header: SaveHeader) -> int:
    """After QEMU wrote its stream (and let go of it): check the header is the one
    begin() wrote, append the trailer (length + checksum). Returns the size."""
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "r+b") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidConfig(f"Failed to save to {path}: it is no longer a regular file")
        # Root's again before anything is read back: whoever wrote the stream keeps no
        # say over the file by owning it.
        if os.geteuid() == 0:
            os.fchown(fd, 0, 0)
        os.fchmod(fd, 0o600)
        size = st.st_size
        stream_len = size - header.offset
        if stream_len <= 0:
            raise InvalidConfig(f"Failed to save to {path}: QEMU wrote no state")
        if os.pread(fd, header.offset, 0) != header.head:
            # A guest that took over its QEMU could name any host file as its disk in a
            # record that would then verify: refused, the save is not published.
            raise InvalidConfig(f"Failed to save to {path}: the file's header is not the "
                                "one Xenia wrote (it changed while QEMU wrote the stream; "
                                "a QEMU that is not to be trusted?); the save is refused")
        # The header hashed from memory: what xeniad wrote, whatever is on disk now.
        digest = _digest(f, header.blob, header.offset, stream_len)
        os.pwrite(fd, TRAILER_MAGIC + struct.pack(">Q", stream_len) + digest, size)
        os.fsync(fd)
    return size + _TRAILER_LEN


def _read_header(f: Any, path: Path) -> tuple[bytes, dict[str, Any], int]:
    magic = f.read(16)
    if magic != MAGIC:
        raise InvalidConfig(f"Failed to restore from {path}: not a Xenia save file (bad magic)")
    raw = f.read(8)
    if len(raw) != 8:
        raise InvalidConfig(f"Failed to restore from {path}: the file is truncated")
    (n,) = struct.unpack(">Q", raw)
    if n > 16 * 1024 * 1024:
        raise InvalidConfig(f"Failed to restore from {path}: corrupted header length")
    blob = f.read(n)
    if len(blob) != n:
        raise InvalidConfig(f"Failed to restore from {path}: the file is truncated")
    try:
        meta = json.loads(blob)
    except ValueError as e:
        raise InvalidConfig(f"Failed to restore from {path}: corrupted header ({e})") from e
    return blob, meta, _stream_offset(n)


def _digest(f: Any, blob: bytes, offset: int, stream_len: int) -> bytes:
    h = hashlib.sha256(blob)
    f.seek(offset)
    left = stream_len
    while left:
        chunk = f.read(min(left, 4 * 1024 * 1024))
        if not chunk:
            break
        h.update(chunk)
        left -= len(chunk)
    return h.digest()


def verify(path: Path, digest: bool = True) -> SaveHeader:
    """Check magic, completeness and checksum; the header if the file is intact.

    digest=False skips the checksum (a pass over the whole file): for files Xenia wrote
    itself and reads many times, such as a snapshot's memory that clones start from."""
    # A regular file only: a FIFO would block the restore forever, a device never end.
    f = open_regular(path, f"to restore from {path}")
    with f:
        size = os.fstat(f.fileno()).st_size
        blob, meta, offset = _read_header(f, path)
        if size < offset + _TRAILER_LEN:
            raise InvalidConfig(f"Failed to restore from {path}: the file is truncated "
                                "(no trailer: the save did not finish or the copy was cut)")
        f.seek(size - _TRAILER_LEN)
        trailer = f.read(_TRAILER_LEN)
        if trailer[:16] != TRAILER_MAGIC:
            raise InvalidConfig(f"Failed to restore from {path}: the file is truncated or "
                                "corrupted (no end marker)")
        (stream_len,) = struct.unpack(">Q", trailer[16:24])
        if offset + stream_len + _TRAILER_LEN != size:
            raise InvalidConfig(
                f"Failed to restore from {path}: the file is truncated or has trailing data "
                f"({size} bytes, {offset + stream_len + _TRAILER_LEN} expected)"
            )
        if digest and _digest(f, blob, offset, stream_len) != trailer[24:]:
            raise InvalidConfig(f"Failed to restore from {path}: checksum mismatch, the "
                                "file is corrupted")
    if meta.get("format_version") != FORMAT_VERSION:
        raise InvalidConfig(f"Failed to restore from {path}: save format version "
                            f"{meta.get('format_version')} is not supported")
    return SaveHeader(offset, meta, blob)


def publish(tmp: Path, target: Path) -> None:
    """Rename the complete file into place, and fsync the directory so the rename
    itself survives a crash (the file's data was fsynced by finish())."""
    os.replace(tmp, target)
    fsync_dir(target.parent)
