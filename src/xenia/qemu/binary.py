"""Finding the QEMU binary and its version."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from dataclasses import dataclass

from xenia.errors import BackendError, NotSupported

QEMU_BINARY = "qemu-system-x86_64"
INSTALL_HINT = (
    "install it with 'apt-get install qemu-system-x86 qemu-utils' (on Debian 12 from "
    "bookworm-backports: 'apt-get install -t bookworm-backports qemu-system-x86 qemu-utils'), "
    "or run the README's install step"
)


@dataclass(frozen=True)
class QemuInfo:
    path: str
    version: tuple[int, int, int]
    version_string: str

    @property
    def version_text(self) -> str:
        return ".".join(str(p) for p in self.version)


def find_qemu(binary: str = QEMU_BINARY) -> str:
    path = shutil.which(binary)
    if path is None:
        raise NotSupported(f"Failed to find QEMU: {binary} is not installed; {INSTALL_HINT}")
    return path


@functools.lru_cache(maxsize=4)
def qemu_info(binary: str = QEMU_BINARY) -> QemuInfo:
    path = find_qemu(binary)
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise BackendError(f"Failed to run {path} --version: {e}") from e
    m = re.search(r"version (\d+)\.(\d+)\.(\d+)", out)
    if not m:
        raise BackendError(f"Failed to read QEMU's version from: {out.strip()[:200]!r}")
    first = out.strip().splitlines()[0] if out.strip() else ""
    return QemuInfo(path, (int(m[1]), int(m[2]), int(m[3])), first)


@functools.lru_cache(maxsize=8)
def machine_alias(alias: str = "q35", binary: str = QEMU_BINARY) -> str:
    """The versioned machine an alias stands for ("q35" -> "pc-q35-10.0").

    A domain records the versioned name at creation: a migration destination or a restore
    on a newer QEMU must build the same machine, not the newest the alias points to.
    """
    path = find_qemu(binary)
    try:
        out = subprocess.run([path, "-machine", "help"], capture_output=True, text=True,
                             timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise BackendError(f"Failed to list QEMU's machine types: {e}") from e
    m = re.search(rf"^{re.escape(alias)}\s.*\(alias of ([\w.-]+)\)", out, re.M)
    return m.group(1) if m else alias


def machine_types(binary: str = QEMU_BINARY) -> set[str]:
    path = find_qemu(binary)
    out = subprocess.run([path, "-machine", "help"], capture_output=True, text=True,
                         timeout=30, check=False).stdout
    return {line.split()[0] for line in out.splitlines()[1:] if line.strip()}
