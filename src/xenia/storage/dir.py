"""DirDriver: a pool that is a directory of qcow2 and raw image files.

Layout of a pool directory:

    <vol>.qcow2, <vol>.raw          volumes; the suffix is the format (never probed)
    .snapshots/<vol>/<snap>.<fmt>   read-only point-in-time copies of <vol>
    .tmp-*                          images being written; renamed into place when whole

Nothing about volumes is stored elsewhere: name and format come from the file name, the
rest from `qemu-img info`, so the pool cannot drift from its files after a crash. Names
with a leading '.' are never volume names, so the driver's own files cannot collide with
a volume. Thin clones name their backing file relative to their own directory, so a pool
directory can be moved or mounted elsewhere (another host) and its clones still open.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from xenia.errors import AlreadyExists, BackendError, InUse, InvalidConfig, NotFound, XeniaError
from xenia.files import create_private, fsync_dir
from xenia.storage.driver import (
    VOLUME_FORMATS,
    PoolDriver,
    PoolUsage,
    SnapshotInfo,
    VolumeInfo,
)
from xenia.storage.units import format_size, valid_name

log = logging.getLogger(__name__)

SNAPSHOT_DIR = ".snapshots"
TMP_PREFIX = ".tmp-"
# A guest's disk is its data: readable by root (and QEMU running as root) only.
VOLUME_MODE = 0o600


def split_image_name(filename: str) -> tuple[str, str] | None:
    """("vol", "qcow2") for "vol.qcow2"; None for anything that is not a volume file."""
    stem, dot, fmt = filename.rpartition(".")
    if not dot or fmt not in VOLUME_FORMATS or not valid_name(stem):
        return None
    return stem, fmt


def _unlink_quiet(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _rmdir_quiet(path: Path) -> None:
    """Remove a directory if it is empty; leave it (and say nothing) otherwise."""
    with contextlib.suppress(OSError):
        path.rmdir()


class DirDriver(PoolDriver):
    kind = "dir"

    @property
    def path(self) -> Path:
        return Path(self.config["path"])

    @property
    def location(self) -> str:
        return str(self.path)

    # -- paths: the only places that turn names into paths --------------------------------
    def _plain(self, name: str) -> str:
        # Defence in depth: the manager checked the name already, but a path built from a
        # name must never leave the pool whoever calls the driver.
        if not valid_name(name):
            raise InvalidConfig(f"Failed to use {name!r} in pool '{self.name}': not a valid name")
        return name

    def _file(self, name: str, fmt: str) -> Path:
        return self.path / f"{self._plain(name)}.{fmt}"

    def _snapdir(self, name: str) -> Path:
        return self.path / SNAPSHOT_DIR / self._plain(name)

    def _tmp(self, directory: Path, name: str, fmt: str) -> Path:
        """A new empty file for an image being written, created here: exclusively, 0600,
        not through a symlink, under 64 random bits. qemu-img then writes a file of ours
        (it keeps an existing file's mode), never a name someone planted in a pool
        directory others can write to, and the image is never readable by others."""
        fd, path = create_private(directory, f"{TMP_PREFIX}{name}.{fmt}.", mode=VOLUME_MODE)
        os.close(fd)
        return Path(path)

    def _find(self, name: str) -> tuple[Path, str]:
        """The volume's file and format; NotFound if there is none."""
        found = [(self._file(name, fmt), fmt) for fmt in VOLUME_FORMATS
                 if self._file(name, fmt).is_file()]
        if not found:
            raise NotFound(
                f"Failed to find volume '{name}' in pool '{self.name}': no such volume "
                f"(see `xenia volume list --pool {self.name}`)"
            )
        if len(found) > 1:
            raise BackendError(
                f"Failed to use volume '{name}' in pool '{self.name}': both "
                f"{' and '.join(str(p) for p, _ in found)} exist; rename one of them"
            )
        return found[0]

    def _check_free(self, name: str, doing: str) -> None:
        for fmt in VOLUME_FORMATS:
            if self._file(name, fmt).exists():
                raise AlreadyExists(
                    f"Failed {doing}: pool '{self.name}' has a volume '{name}' already"
                )

    def _commit(self, tmp: Path, final: Path, doing: str) -> None:
        """Give a finished temporary image its real name, never replacing another file.

        A hard link fails if the name exists, so two writers cannot clobber each other
        (which matters once a pool directory is shared between hosts).
        """
        try:
            os.link(tmp, final)
        except FileExistsError as e:
            raise AlreadyExists(f"Failed {doing}: {final} exists already") from e
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                raise BackendError(f"Failed {doing}: cannot create {final}: {e}") from e
            # A filesystem without hard links (vfat, some FUSE): check, then rename.
            if final.exists():
                raise AlreadyExists(f"Failed {doing}: {final} exists already") from e
            os.rename(tmp, final)
            fsync_dir(final.parent)
            return
        _unlink_quiet(tmp)
        fsync_dir(final.parent)

    def _backing_arg(self, backing: Path, directory: Path) -> str:
        """How an image in `directory` names `backing`: relative inside the pool (so the
        pool can move), absolute for a backing file outside it."""
        pool = os.path.realpath(self.path)
        real = os.path.realpath(backing)
        if os.path.commonpath([pool, real]) == pool:
            return os.path.relpath(real, os.path.realpath(directory))
        return str(backing)

    # -- pool lifecycle ------------------------------------------------------------------
    def create(self) -> dict[str, Any]:
        path = self.path
        doing = f"to create pool '{self.name}'"
        if not path.is_absolute():
            raise InvalidConfig(f"Failed {doing}: the path {path} is not absolute")
        if path.exists():
            if not path.is_dir():
                raise InvalidConfig(f"Failed {doing}: {path} exists and is not a directory")
            created = False
        else:
            # Remember each directory made, to remove exactly those if a later step fails.
            made = []
            p = path
            while not p.exists():
                made.append(p)
                p = p.parent
            try:
                for d in reversed(made):
                    d.mkdir(mode=0o700)
            except OSError as e:
                for d in made:
                    _rmdir_quiet(d)
                raise BackendError(f"Failed {doing}: cannot create {path}: {e.strerror or e}"
                                   ) from e
            created = True
        if not os.access(path, os.W_OK | os.X_OK):
            raise BackendError(f"Failed {doing}: {path} is not writable")
        return {"path": str(path), "created_dir": created}

    def delete(self) -> None:
        snaps = self.path / SNAPSHOT_DIR
        if snaps.is_dir():
            for d in snaps.iterdir():
                _rmdir_quiet(d)
            _rmdir_quiet(snaps)
        self._clean_tmp()
        if self.config.get("created_dir") and self.path.exists():
            try:
                self.path.rmdir()
            except OSError as e:
                # Files that are no volumes of ours (notes, foreign images): not ours to
                # delete. The pool is forgotten; the directory stays.
                log.warning("pool %s: left %s in place: %s", self.name, self.path,
                            e.strerror or e)

    def mount(self) -> None:
        if not self.path.is_dir():
            raise BackendError(
                f"Failed to mount pool '{self.name}': the directory {self.path} is missing; "
                f"restore it, or `xenia pool delete {self.name}`"
            )
        self._clean_tmp()

    def unmount(self) -> None:
        pass  # a directory needs no unmounting; volumes stay usable by running domains

    def _clean_tmp(self) -> None:
        """Remove half-written images that a crash in the middle of a verb left behind."""
        dirs = [self.path]
        snaps = self.path / SNAPSHOT_DIR
        if snaps.is_dir():
            dirs += [d for d in snaps.iterdir() if d.is_dir()]
        for d in dirs:
            with contextlib.suppress(OSError):
                for f in d.iterdir():
                    if f.name.startswith(TMP_PREFIX) and f.is_file():
                        log.info("pool %s: removing %s left by an interrupted operation",
                                 self.name, f)
                        _unlink_quiet(f)

    def usage(self) -> PoolUsage:
        try:
            st = os.statvfs(self.path)
        except OSError as e:
            raise BackendError(f"Failed to read the usage of pool '{self.name}': {e}") from e
        return PoolUsage(capacity=st.f_blocks * st.f_frsize, available=st.f_bavail * st.f_frsize)

    # -- volumes -------------------------------------------------------------------------
    def _volume_files(self) -> Iterator[tuple[str, str, Path]]:
        try:
            entries = sorted(os.scandir(self.path), key=lambda e: e.name)
        except OSError as e:
            raise BackendError(f"Failed to list pool '{self.name}': {e}") from e
        for entry in entries:
            parsed = split_image_name(entry.name)
            if parsed and entry.is_file():
                yield parsed[0], parsed[1], Path(entry.path)

    def volume_names(self) -> list[str]:
        return sorted({name for name, _, _ in self._volume_files()})

    def _info(self, name: str, fmt: str, path: Path) -> VolumeInfo:
        try:
            info = self.qemu_img.info(path, fmt, f"to read volume '{name}' in pool '{self.name}'")
        except NotFound:
            raise
        except XeniaError as e:
            return VolumeInfo(name=name, pool=self.name, format=fmt, path=path,
                              virtual_size=0, allocation=0, error=e.message,
                              snapshots=self._snapshot_names(name, fmt))
        backing_path = _full_backing(info, path)
        backing: str | None = None
        if backing_path is not None:
            backing = str(backing_path)
            parsed = split_image_name(backing_path.name)
            if parsed and os.path.realpath(backing_path.parent) == os.path.realpath(self.path):
                backing = parsed[0]
        return VolumeInfo(
            name=name, pool=self.name, format=fmt, path=path,
            virtual_size=int(info.get("virtual-size", 0)),
            allocation=int(info.get("actual-size", 0)),
            backing=backing, backing_path=backing_path,
            backing_format=info.get("backing-filename-format"),
            snapshots=self._snapshot_names(name, fmt),
        )

    def list_volumes(self) -> list[VolumeInfo]:
        return [self._info(name, fmt, path) for name, fmt, path in self._volume_files()]

    def volume_info(self, name: str) -> VolumeInfo:
        path, fmt = self._find(name)
        return self._info(name, fmt, path)

    def volume_path(self, name: str) -> Path:
        return self._find(name)[0]

    def create_volume(self, name: str, size: int, fmt: str) -> VolumeInfo:
        doing = f"to create volume '{name}' in pool '{self.name}'"
        if fmt not in self.formats:
            raise InvalidConfig(f"Failed {doing}: unknown format '{fmt}' "
                                f"(pick one of {', '.join(self.formats)})")
        self._check_free(name, doing)
        tmp = self._tmp(self.path, name, fmt)
        with contextlib.ExitStack() as undo:
            undo.callback(_unlink_quiet, tmp)
            self.qemu_img.create(tmp, fmt, size, doing)
            os.chmod(tmp, VOLUME_MODE)
            self._commit(tmp, self._file(name, fmt), doing)
            undo.pop_all()
        return self.volume_info(name)

    def delete_volume(self, name: str) -> None:
        doing = f"to delete volume '{name}' in pool '{self.name}'"
        path, _ = self._find(name)
        users = self.dependents(name)
        if users:
            raise InUse(
                f"Failed {doing}: {', '.join(users)} {'is' if len(users) == 1 else 'are'} "
                "backed by it (thin clones read from it); delete those first"
            )
        # Snapshots first: a crash in between leaves a volume without some snapshots,
        # never snapshots without their volume.
        snapdir = self._snapdir(name)
        if snapdir.is_dir():
            for f in snapdir.iterdir():
                _unlink_quiet(f)
            _rmdir_quiet(snapdir)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            raise BackendError(f"Failed {doing}: cannot remove {path}: {e.strerror or e}") from e

    def clone_volume(self, src: str, new: str, linked: bool = True) -> VolumeInfo:
        doing = f"to clone volume '{src}' to '{new}' in pool '{self.name}'"
        src_path, src_fmt = self._find(src)
        self._check_free(new, doing)
        fmt = "qcow2" if linked else src_fmt
        tmp = self._tmp(self.path, new, fmt)
        with contextlib.ExitStack() as undo:
            undo.callback(_unlink_quiet, tmp)
            if linked:
                # No size: the overlay takes its backing file's virtual size.
                self.qemu_img.create(tmp, "qcow2", None, doing,
                                     backing=src_path.name, backing_fmt=src_fmt)
            else:
                # A full copy keeps src's own backing file (if any): it is src's data.
                info = self.volume_info(src)
                backing = (self._backing_arg(info.backing_path, self.path)
                           if info.backing_path is not None else None)
                self.qemu_img.convert(src_path, src_fmt, tmp, fmt, doing, backing=backing,
                                      backing_fmt=info.backing_format)
            os.chmod(tmp, VOLUME_MODE)
            self._commit(tmp, self._file(new, fmt), doing)
            undo.pop_all()
        return self.volume_info(new)

    def resize_volume(self, name: str, size: int, shrink: bool = False) -> VolumeInfo:
        doing = f"to resize volume '{name}' in pool '{self.name}'"
        info = self.volume_info(name)
        if info.error:
            raise BackendError(f"Failed {doing}: {info.error}")
        if size == info.virtual_size:
            return info
        if size < info.virtual_size:
            if not shrink:
                raise InvalidConfig(
                    f"Failed {doing}: {format_size(size)} is smaller than its size "
                    f"{format_size(info.virtual_size)}; shrinking cuts off the data at the "
                    "end, so it needs --shrink (shrink the filesystem inside first)"
                )
            users = self.dependents(name)
            if users:
                raise InUse(f"Failed {doing}: cannot shrink it while {', '.join(users)} "
                            "are backed by it")
        # qemu-img resize changes the image in place, and either completes or leaves the
        # image as it was: there is nothing of ours to undo.
        self.qemu_img.resize(info.path, info.format, size, size < info.virtual_size, doing)
        return self.volume_info(name)

    def dependents(self, name: str) -> list[str]:
        target = os.path.realpath(self._find(name)[0])
        users = []
        for vol, fmt, path in self._volume_files():
            if fmt == "qcow2" and self._backed_by(path, target):
                users.append(vol)
            for snap in self._snapshot_names(vol, fmt):
                spath = self._snapdir(vol) / f"{snap}.{fmt}"
                if fmt == "qcow2" and self._backed_by(spath, target):
                    users.append(f"{vol}@{snap}")
        return users

    def _backed_by(self, path: Path, target: str) -> bool:
        try:
            info = self.qemu_img.info(path, "qcow2", f"to read {path}")
        except XeniaError:
            # An image we cannot read might be backed by the target: assume it is, so
            # the target is not deleted under it. The error then names the image.
            return True
        backing = _full_backing(info, path)
        return backing is not None and os.path.realpath(backing) == target

    # -- snapshots -----------------------------------------------------------------------
    def _snapshot_names(self, name: str, fmt: str) -> list[str]:
        d = self._snapdir(name)
        if not d.is_dir():
            return []
        names = []
        for f in d.iterdir():
            parsed = split_image_name(f.name)
            if parsed and parsed[1] == fmt and f.is_file():
                names.append(parsed[0])
        return sorted(names)

    def _snapshot_file(self, name: str, snap: str) -> tuple[Path, str]:
        _, fmt = self._find(name)
        path = self._snapdir(name) / f"{self._plain(snap)}.{fmt}"
        if not path.is_file():
            raise NotFound(
                f"Failed to find snapshot '{snap}' of volume '{name}' in pool '{self.name}': "
                f"no such snapshot (see `xenia volume snapshot-list --pool {self.name} {name}`)"
            )
        return path, fmt

    def create_snapshot(self, name: str, snap: str) -> SnapshotInfo:
        doing = f"to snapshot volume '{name}' as '{snap}' in pool '{self.name}'"
        info = self.volume_info(name)
        if info.error:
            raise BackendError(f"Failed {doing}: {info.error}")
        snapdir = self._snapdir(name)
        final = snapdir / f"{self._plain(snap)}.{info.format}"
        if final.exists():
            raise AlreadyExists(f"Failed {doing}: volume '{name}' has a snapshot '{snap}' already")
        with contextlib.ExitStack() as undo:
            made_dirs = [d for d in (snapdir.parent, snapdir) if not d.exists()]
            for d in made_dirs:
                d.mkdir(mode=0o700)
                # Callbacks run last-in first-out: the inner directory goes first.
                undo.callback(_rmdir_quiet, d)
            tmp = self._tmp(snapdir, snap, info.format)
            undo.callback(_unlink_quiet, tmp)
            backing = None
            if info.backing_path is not None:
                # Thin like its volume: the copy shares the volume's backing file and
                # holds only the volume's own data.
                backing = self._backing_arg(info.backing_path, snapdir)
            self.qemu_img.convert(info.path, info.format, tmp, info.format, doing,
                                  backing=backing, backing_fmt=info.backing_format)
            # Read-only marks it as a snapshot to people and tools; root could still
            # write it, which is why nothing hands its path out writable.
            os.chmod(tmp, 0o444)
            self._commit(tmp, final, doing)
            undo.pop_all()
        return self._snapshot_info(name, snap, final, info.format)

    def _snapshot_info(self, name: str, snap: str, path: Path, fmt: str) -> SnapshotInfo:
        info = self.qemu_img.info(path, fmt, f"to read snapshot '{snap}' of volume '{name}'")
        return SnapshotInfo(name=snap, volume=name, path=path, format=fmt,
                            virtual_size=int(info.get("virtual-size", 0)),
                            allocation=int(info.get("actual-size", 0)),
                            created=path.stat().st_mtime)

    def list_snapshots(self, name: str) -> list[SnapshotInfo]:
        _, fmt = self._find(name)
        return [self._snapshot_info(name, s, self._snapdir(name) / f"{s}.{fmt}", fmt)
                for s in self._snapshot_names(name, fmt)]

    def delete_snapshot(self, name: str, snap: str) -> None:
        path, _ = self._snapshot_file(name, snap)
        try:
            path.unlink()
        except OSError as e:
            raise BackendError(f"Failed to delete snapshot '{snap}' of volume '{name}': "
                               f"{e.strerror or e}") from e
        _rmdir_quiet(path.parent)
        _rmdir_quiet(path.parent.parent)

    def restore_snapshot(self, name: str, snap: str) -> VolumeInfo:
        doing = f"to restore volume '{name}' from snapshot '{snap}' in pool '{self.name}'"
        spath, fmt = self._snapshot_file(name, snap)
        vpath, _ = self._find(name)
        users = self.dependents(name)
        if users:
            raise InUse(f"Failed {doing}: {', '.join(users)} are backed by it and would see "
                        "their data change; delete them first")
        sinfo = self.qemu_img.info(spath, fmt, doing)
        backing_path = _full_backing(sinfo, spath)
        backing = (self._backing_arg(backing_path, self.path)
                   if backing_path is not None else None)
        tmp = self._tmp(self.path, name, fmt)
        with contextlib.ExitStack() as undo:
            undo.callback(_unlink_quiet, tmp)
            self.qemu_img.convert(spath, fmt, tmp, fmt, doing, backing=backing,
                                  backing_fmt=sinfo.get("backing-filename-format"))
            os.chmod(tmp, VOLUME_MODE)
            # rename() replaces the volume in one step: a crash leaves the old or the new
            # content, never a mix.
            os.rename(tmp, vpath)
            fsync_dir(vpath.parent)
            undo.pop_all()
        return self.volume_info(name)


def _full_backing(info: dict[str, Any], image: Path) -> Path | None:
    """The absolute, normalised path of an image's backing file, from qemu-img info."""
    name = info.get("full-backing-filename") or info.get("backing-filename")
    if not name:
        return None
    p = Path(name)
    if not p.is_absolute():
        p = image.parent / p
    return Path(os.path.normpath(p))
