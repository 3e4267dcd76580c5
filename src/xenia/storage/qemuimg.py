"""QemuImg: every image operation of the storage drivers, run as `qemu-img` with an argv list.

Every image path is absolute and comes after `--` (checked with each verb against
qemu-img 10: info, create, resize, convert all take it). The format is always passed with
-f/-F: letting qemu-img probe a raw image a guest can write to is the classic hole where
the guest writes a qcow2 header naming a host file as its backing file (CVE-2008-2004).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from xenia.errors import BackendError, InvalidConfig, NotFound, NotSupported

QEMU_IMG = "qemu-img"
INSTALL_HINT = "install it with `apt-get install qemu-utils`"

def absolute(path: Path, doing: str) -> str:
    """`path` as qemu-img's argument, refused unless absolute: a relative name could start
    with '-' (an option, were it not after `--`) or hold a protocol prefix qemu-img
    obeys ("json:{...}", "nbd:..."); an absolute one is always a plain file name."""
    text = str(path)
    if not text.startswith("/"):
        raise InvalidConfig(f"Failed {doing}: '{text}' is not an absolute path")
    return text


# Metadata-only operations finish in milliseconds; a minute means a hung filesystem.
# Copies (convert) scale with the data and get no limit.
QUICK_TIMEOUT = 60.0


class QemuImg:
    def __init__(self, binary: str = QEMU_IMG) -> None:
        self.binary = binary

    def _path(self, doing: str) -> str:
        # Looked up on every call, not once: installing qemu-utils must not need a restart.
        path = shutil.which(self.binary)
        if path is None:
            raise NotSupported(f"Failed {doing}: {self.binary} is not installed; {INSTALL_HINT}")
        return path

    def run(self, args: list[str], doing: str, timeout: float | None = QUICK_TIMEOUT) -> str:
        """Run qemu-img with `args`; its stdout, or BackendError carrying its stderr."""
        argv = [self._path(doing), *args]
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                 stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise BackendError(
                f"Failed {doing}: qemu-img did not finish in {timeout:.0f}s "
                "(is the filesystem hung?)"
            ) from e
        except OSError as e:
            raise BackendError(f"Failed {doing}: cannot run {argv[0]}: {e}") from e
        if res.returncode != 0:
            raise BackendError(f"Failed {doing}: {clean_stderr(res.stderr, res.returncode)}")
        return res.stdout

    # -- verbs ---------------------------------------------------------------------------
    def info(self, path: Path, fmt: str | None, doing: str) -> dict[str, Any]:
        """`qemu-img info --output=json -U`: -U (force-share) so it also reads an image a
        running QEMU holds the write lock on; the numbers may then lag a little."""
        if not path.exists():
            raise NotFound(f"Failed {doing}: {path} does not exist")
        args = ["info", "--output=json", "-U"]
        if fmt is not None:
            args += ["-f", fmt]
        out = self.run([*args, "--", absolute(path, doing)], doing)
        try:
            data: dict[str, Any] = json.loads(out)
        except ValueError as e:
            raise BackendError(f"Failed {doing}: qemu-img info printed no JSON: {out[:200]!r}"
                               ) from e
        return data

    def create(self, path: Path, fmt: str, size: int | None, doing: str,
               backing: str | None = None, backing_fmt: str | None = None) -> None:
        args = ["create", "-q", "-f", fmt]
        if backing is not None:
            # A relative backing name is resolved from the new image's directory.
            args += ["-b", backing, "-F", backing_fmt or "raw"]
        args += ["--", absolute(path, doing)]
        if size is not None:
            args.append(str(size))
        self.run(args, doing)

    def resize(self, path: Path, fmt: str, size: int, shrink: bool, doing: str) -> None:
        args = ["resize", "-q", "-f", fmt]
        if shrink:
            args.append("--shrink")
        self.run([*args, "--", absolute(path, doing), str(size)], doing)

    def convert(self, src: Path, src_fmt: str, dst: Path, dst_fmt: str, doing: str,
                backing: str | None = None, backing_fmt: str | None = None,
                force_share: bool = False, existing: bool = False) -> None:
        """Copy `src` into a new image `dst` (sparse). With `backing`, dst becomes an
        overlay of it and holds only what differs from it: `backing` must have the same
        content as src's own backing chain. `force_share` (-U) reads an image a stopped
        QEMU still holds; `existing` (-n) writes into a dst that exists (a block device)."""
        args = ["convert", "-q", "-f", src_fmt, "-O", dst_fmt]
        if force_share:
            args.append("-U")
        if existing:
            args.append("-n")
        if backing is not None:
            if dst_fmt != "qcow2":
                raise InvalidConfig(f"Failed {doing}: only qcow2 images can have a backing file")
            args += ["-B", backing, "-F", backing_fmt or "raw"]
        self.run([*args, "--", absolute(src, doing), absolute(dst, doing)], doing,
                 timeout=None)


def clean_stderr(stderr: str, returncode: int) -> str:
    """qemu-img's complaint as one line, without its 'qemu-img: ' prefixes."""
    lines = []
    for line in stderr.strip().splitlines():
        line = line.strip()
        if line.startswith("qemu-img: "):
            line = line[len("qemu-img: "):]
        if line:
            lines.append(line)
    return "; ".join(lines) or f"qemu-img exited with status {returncode} and said nothing"
