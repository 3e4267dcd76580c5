"""Files Xenia reads from users and writes for itself.

Reading (open_regular, read_regular): a path from a user may name a FIFO (open() waits
for a writer forever), a device (/dev/zero never ends), a directory or a huge file.
These open without blocking, refuse anything but a regular file at once with a message,
and read at most a cap.

Writing (create_private, write_atomic, fsync_dir): temporary files under unpredictable
names, created with O_EXCL|O_NOFOLLOW and their final mode, renamed into place, and the
directory fsynced so the rename survives a crash.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from typing import BinaryIO

from xenia.errors import InvalidConfig, NotFound

# xl.cfg files are a few KiB; 1 MiB holds any real one a hundred times over.
MAX_CONFIG_BYTES = 1024 * 1024

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path: str | os.PathLike[str], doing: str) -> BinaryIO:
    """`path` opened for reading if it is a regular file; NotFound or InvalidConfig
    ("Failed <doing>: ...", so `doing` names the file) otherwise, at once.

    O_NONBLOCK makes opening a FIFO return instead of waiting for a writer; the check is
    on the open file (fstat), so the path cannot be swapped in between."""
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"Failed {doing}: no such file") from None
    except OSError as e:
        raise InvalidConfig(f"Failed {doing}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidConfig(f"Failed {doing}: it is {_kind(st.st_mode)}, not a "
                                "regular file; give the path of a file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike[str], doing: str,
                 limit: int = MAX_CONFIG_BYTES) -> bytes:
    """The content of the regular file `path`, refused if it holds more than `limit`
    bytes (checked on what is read, so a file that grows meanwhile is caught too).
    /dev/null reads as empty: `xl create /dev/null name=... kernel=...` is an idiom."""
    if _is_dev_null(path):
        return b""
    with open_regular(path, doing) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise InvalidConfig(f"Failed {doing}: it is larger than {_size(limit)}, the most "
                            "Xenia reads for it; is it the right file?")
    return data


def _is_dev_null(path: str | os.PathLike[str]) -> bool:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return False
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)


def _size(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n % (1024 * 1024) == 0 else f"{n // 1024} KiB"


# -- writing ---------------------------------------------------------------------------
def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make renames and links in `directory` durable (they live in the directory)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_private(directory: str | os.PathLike[str], prefix: str, suffix: str = "",
                   mode: int = 0o600) -> tuple[int, str]:
    """A new file in `directory` under an unpredictable name: (fd, path).

    O_CREAT|O_EXCL|O_NOFOLLOW: nothing planted at the name (a symlink to a file of
    root's, say) is followed or reused; 64 random bits make the name unguessable."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(8):
        path = os.path.join(os.fspath(directory), f"{prefix}{secrets.token_hex(8)}{suffix}")
        try:
            return os.open(path, flags, mode), path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {os.fspath(directory)}")


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` whole: written to a private temporary file in the same
    directory (created with `mode`, so never readable by others even briefly), fsynced,
    renamed over `path`, and the rename fsynced."""
    target = os.fspath(path)
    directory = os.path.dirname(target) or "."
    fd, tmp = create_private(directory, f".{os.path.basename(target)}.", ".tmp", mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)
