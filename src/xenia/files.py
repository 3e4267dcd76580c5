"""Reading files a user names: open_regular and read_regular.

A path from a user may name a FIFO (open() waits for a writer forever), a device
(/dev/zero never ends), a directory or a huge file. These open without blocking, refuse
anything but a regular file at once with a message, and read at most a cap.
"""

from __future__ import annotations

import os
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
