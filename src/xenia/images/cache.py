"""What every image builder shares: its manifest file, its build lock, its scratch
directory and how it reports a failed build.

Each image (tiny, hvm, rootfs) lives in `images_dir/<name>/` with a `manifest.json` that
says what it was built from; a build holds `images_dir/.<name>.lock` so two builds of the
same image (two xeniads, a test and a user) never interleave.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from xenia.errors import BackendError, NotFound, XeniaError
from xenia.files import fsync_dir
from xenia.images.debs import DebError

MANIFEST = "manifest.json"


def read_manifest(image_dir: Path) -> dict[str, Any] | None:
    """The image's manifest, or None if it is missing or unreadable (then: rebuild)."""
    try:
        data = json.loads((image_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextlib.contextmanager
def build_lock(images_dir: Path, name: str) -> Iterator[None]:
    with open(images_dir / f".{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def replace_dir(new: Path, target: Path, name: str) -> None:
    """Put the freshly built `new` at `target`; the old image (if any) moves aside first,
    then is removed, so a reader never sees a half-replaced image."""
    old = None
    if target.exists():
        old = target.with_name(f".{name}-old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.rename(target, old)
    os.rename(new, target)
    fsync_dir(target.parent)  # the new image survives a crash once built
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def build_dir(images_dir: Path, name: str, stale: str = "*") -> Iterator[Path]:
    """A fresh scratch directory `images_dir/.<name>-build-*`, removed afterwards whatever
    happens. Call it under build_lock: it first removes what killed builds left behind
    (`.<name>-<stale>`; the lock says none is running now)."""
    for old in images_dir.glob(f".{name}-{stale}"):
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-build-", dir=images_dir))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def build_errors(what: str, *causes: type[Exception]) -> Iterator[None]:
    """Turn what a build raises into Xenia's errors, "Failed building <what>: ...": a
    package apt does not know is NotFound; other .deb trouble, OSError and the builder's
    own `causes` are BackendError; Xenia's errors pass unchanged."""
    failures: tuple[type[Exception], ...] = (OSError, *causes)
    try:
        yield
    except DebError as e:
        if "unknown to apt" in str(e):
            raise NotFound(f"Failed building {what}: {e}") from e
        raise BackendError(f"Failed building {what}: {e}") from e
    except XeniaError:
        raise
    except failures as e:
        raise BackendError(f"Failed building {what}: {e}") from e
