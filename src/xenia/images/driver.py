"""The "driver" guest image: the tiny image plus an NBD server, for driver domains.

Main entry point: `build_driver()`. The tiny image (images/tiny.py) stays as it is; this
one shares its kernel and appends a second gzip'd cpio archive to its initramfs (the
kernel unpacks concatenated archives in order, later files replacing earlier ones):

- the host's `qemu-nbd` (Debian's qemu-utils, a dependency of Xenia already) with every
  shared library `ldd` names and the dynamic loader, at the paths ldd gives;
- /sbin/xenia-nbd-serve (data/driver-nbd-serve): with `xenia.nbd=ADDR` on the command
  line it serves each /dev/vdX on ADDR, port 10809 + X's index (drivers/qemu_drvdom.py);
- /etc/inittab: tiny's, plus a `once` entry running that script after rcS.

Guest contract: tiny's, plus the lines `xenia-driver: serving /dev/vdX on ADDR:PORT`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import shutil
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from xenia.errors import BackendError
from xenia.images import tiny
from xenia.images.cache import (
    MANIFEST,
    build_dir,
    build_errors,
    build_lock,
    read_manifest,
    replace_dir,
)
from xenia.images.debs import sha256_file
from xenia.images.initramfs import Initramfs
from xenia.tools import find_tool, run_tool

NAME = "driver"
FORMAT = 1
SERVE_SCRIPT = "sbin/xenia-nbd-serve"
INITTAB_LINE = f"::once:/{SERVE_SCRIPT}\n"
_LDD_RE = re.compile(r"^\s*(?:\S+ => )?(/\S+) \(0x[0-9a-f]+\)$")


def _data(name: str) -> bytes:
    return (resources.files("xenia.images") / "data" / name).read_bytes()


def _fail(cause: str) -> BackendError:
    return BackendError(f"Failed building image {NAME}: {cause}")


def shared_libraries(binary: Path) -> list[Path]:
    """The files `ldd` says `binary` loads (the loader included), as absolute paths."""
    doing = f"to list the libraries of {binary}"
    out = run_tool([find_tool("ldd", "libc-bin", doing), str(binary)], doing).stdout
    libs = []
    for line in out.splitlines():
        m = _LDD_RE.match(line)
        if m:
            libs.append(Path(m.group(1)))
        elif "not found" in line:
            raise _fail(f"{binary} needs a library that is missing: {line.strip()}")
    return libs


def _recipe(base: tiny.ImageInfo, nbd: Path) -> str:
    h = hashlib.sha256(f"format={FORMAT}\n".encode())
    h.update(sha256_file(base.initrd).encode())
    h.update(sha256_file(base.kernel).encode())
    h.update(sha256_file(nbd).encode())
    h.update(_data("driver-nbd-serve"))
    h.update(_data("tiny-inittab"))
    return h.hexdigest()


def _valid(target: Path, recipe: str) -> tiny.ImageInfo | None:
    manifest = read_manifest(target)
    if manifest is None or manifest.get("recipe") != recipe:
        return None
    try:
        for fname, want in manifest["files"].items():
            if sha256_file(target / fname) != want["sha256"]:
                return None
        return tiny.ImageInfo.from_manifest(target, manifest)
    except (OSError, KeyError, TypeError, ValueError):
        return None


def build_driver(
    images_dir: Path,
    *,
    cache_dir: Path | None = None,
    force: bool = False,
    progress: Callable[[str], None] = print,
) -> tiny.ImageInfo:
    """Build the driver-domain image into `images_dir/driver` (the tiny one first)."""
    images_dir = Path(images_dir)
    base = tiny.build_tiny(images_dir, cache_dir=cache_dir, progress=progress)
    nbd = Path(find_tool("qemu-nbd", "qemu-utils", f"to build image {NAME}"))
    recipe = _recipe(base, nbd)
    target = images_dir / NAME
    if not force and (info := _valid(target, recipe)) is not None:
        return info
    with build_lock(images_dir, NAME):
        if not force and (info := _valid(target, recipe)) is not None:
            return info
        with build_dir(images_dir, NAME) as tmp, build_errors(f"image {NAME}"):
            out = tmp / "image"
            out.mkdir()
            extra = Initramfs()
            progress(f"Adding {nbd} and its libraries (ldd)")
            for path in [nbd, *shared_libraries(nbd)]:
                extra.add_file(str(path), path.read_bytes(), 0o755)
            extra.add_file(SERVE_SCRIPT, _data("driver-nbd-serve"), 0o755)
            extra.add_file("etc/inittab", _data("tiny-inittab") + INITTAB_LINE.encode(),
                           0o644)
            extra.write(tmp / "extra.gz")
            # Concatenated archives: tiny's, then ours (its inittab replaces tiny's).
            with open(out / tiny.INITRD_FILE, "wb") as f:
                f.write(base.initrd.read_bytes())
                f.write((tmp / "extra.gz").read_bytes())
            shutil.copyfile(base.kernel, out / tiny.KERNEL_FILE)
            files = {f: {"sha256": sha256_file(out / f), "size": (out / f).stat().st_size}
                     for f in (tiny.KERNEL_FILE, tiny.INITRD_FILE)}
            manifest = {
                "name": NAME, "format": FORMAT, "recipe": recipe, "base": tiny.NAME,
                "built": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "kernel_version": base.kernel_version,
                "packages": base.packages | {"qemu-nbd": str(nbd)},
                "files": files,
                "modules": {"boot": list(base.boot_modules),
                            "missing": list(base.missing_modules)},
                "cmdline": base.cmdline, "ready_line": base.ready_line,
            }
            (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            replace_dir(out, target, NAME)
    progress(f"Image {NAME} ready in {target}")
    info = _valid(target, recipe)
    if info is None:  # pragma: no cover - we just wrote it
        raise _fail(f"{target} does not match its manifest after the build")
    return info
