"""Dynamic ownership of the files a confined QEMU is given; the main class is Ledger.

As libvirt's DAC driver does: before QEMU starts (or a disk is hot-plugged, a cdrom
inserted, a save file written), each file the domain was given is chowned to the QEMU
user, and every directory above it that the QEMU user could not search gets an ACL entry
`user:<qemu>:--x` (search only: no listing, no other file in it becomes readable). The
original owner, group, mode and ACL are written to a ledger file first and given back
when the last domain holding the file lets go (a read-only image two domains share is
given back once both have ended).

The ledger is a JSON file under the state dir, replaced atomically (write, fsync,
rename, fsync the dir): a xeniad that crashed between giving and giving back finds the
originals at its next start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xenia.errors import BackendError, InvalidConfig
from xenia.files import write_atomic

log = logging.getLogger(__name__)

ACL_XATTR = "system.posix_acl_access"
_ACL_VERSION = 2
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_NO_ID = 0xFFFFFFFF
_SEARCH = 0o1


@dataclass(frozen=True)
class Identity:
    """Who QEMU runs as."""

    uid: int
    gid: int


# -- POSIX ACLs in their xattr form (linux/posix_acl_xattr.h) ---------------------------
def _acl_entries(raw: bytes | None, mode: int) -> list[tuple[int, int, int]]:
    if raw is None:
        return [(_USER_OBJ, (mode >> 6) & 7, _NO_ID), (_GROUP_OBJ, (mode >> 3) & 7, _NO_ID),
                (_OTHER, mode & 7, _NO_ID)]
    if len(raw) < 4 or (len(raw) - 4) % 8 or struct.unpack_from("<I", raw)[0] != _ACL_VERSION:
        raise ValueError("not a POSIX ACL")
    return [struct.unpack_from("<HHI", raw, off) for off in range(4, len(raw), 8)]


def acl_with_search(raw: bytes | None, mode: int, uid: int) -> bytes:
    """The ACL `raw` (None: the one `mode` implies) plus search permission for `uid`."""
    entries = [e for e in _acl_entries(raw, mode) if e[0] != _MASK]
    old_mask = next((e[1] for e in _acl_entries(raw, mode) if e[0] == _MASK), None)
    users = {e[2]: e for e in entries if e[0] == _USER}
    perm = users[uid][1] | _SEARCH if uid in users else _SEARCH
    entries = [e for e in entries if not (e[0] == _USER and e[2] == uid)]
    entries.append((_USER, perm, uid))
    if old_mask is None:
        # No mask yet: it must let through what the group class had, and the new entry.
        old_mask = 0
        for tag, p, _ in entries:
            if tag in (_GROUP_OBJ, _GROUP, _USER):
                old_mask |= p
    entries.append((_MASK, old_mask | _SEARCH, _NO_ID))
    entries.sort(key=lambda e: (e[0], e[2]))
    return struct.pack("<I", _ACL_VERSION) + b"".join(struct.pack("<HHI", *e) for e in entries)


def _get_acl(path: str) -> bytes | None:
    try:
        return os.getxattr(path, ACL_XATTR, follow_symlinks=False)
    except OSError:
        return None


def _may(st: os.stat_result, who: Identity, bit: int) -> bool:
    """Whether `who` has permission `bit` (4 read, 1 search) by the mode bits alone."""
    if st.st_uid == who.uid:
        return bool(st.st_mode & (bit << 6))
    if st.st_gid == who.gid:
        return bool(st.st_mode & (bit << 3))
    return bool(st.st_mode & bit)


def can_search(st: os.stat_result, who: Identity) -> bool:
    return _may(st, who, 1)


def can_read(st: os.stat_result, who: Identity) -> bool:
    return _may(st, who, 4)


# -- the ledger --------------------------------------------------------------------------
class Ledger:
    """Which files are given to which domains, and what they were before."""

    def __init__(self, path: Path, who: Identity) -> None:
        self.path = path
        self.who = who
        self._lock = threading.Lock()

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise BackendError(f"Failed to read the file ownership ledger {self.path}: {e}; "
                               "move it aside to start afresh (files it lists keep the "
                               "QEMU user as owner until chowned back by hand)") from e
        return data if isinstance(data, dict) else {}

    def _save(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(data, sort_keys=True).encode(), 0o600)

    def held_by(self, holder: str) -> list[str]:
        with self._lock:
            data = self._load()
        return sorted(p for p, e in data.items() if holder in e["holders"])

    def give(self, holder: str, write: Iterable[Path | str] = (),
             read: Iterable[Path | str] = ()) -> list[str]:
        """Give `write` (files and dirs QEMU writes: chowned to its user) and `read`
        (files it only reads: chowned only if its user could not read them) to `holder`,
        with search ACLs on the directories above them. Returns the paths newly held,
        for a caller that must undo just these (a hot-plug). All or nothing: on a
        failure, what this call changed is given back."""
        wanted = [(self._checked(p, holder), "own") for p in write]
        wanted += [(self._checked(p, holder), "read") for p in read]
        with self._lock:
            data = self._load()
            done: list[str] = []
            try:
                for path, how in wanted:
                    self._take(data, holder, path, how, done)
                    parent = os.path.dirname(path)
                    while parent and parent != "/":
                        self._take(data, holder, parent, "search", done)
                        parent = os.path.dirname(parent)
            except OSError as e:
                self._release(data, holder, done)
                self._save(data)
                raise BackendError(f"Failed to give {e.filename or 'a file'} to the QEMU of "
                                   f"{holder}: {e.strerror}") from e
            self._save(data)
        return done

    def _checked(self, path: Path | str, holder: str) -> str:
        p = str(path)
        if not os.path.isabs(p):
            raise InvalidConfig(f"Failed to give '{p}' to the QEMU of {holder}: not an "
                                "absolute path")
        # Resolved once: the ledger keeps the real file, so a symlink swapped later
        # cannot make us chown something else back.
        return os.path.realpath(p)

    def _take(self, data: dict[str, Any], holder: str, path: str, how: str,
              done: list[str]) -> None:
        entry = data.get(path)
        if entry is not None:
            if holder not in entry["holders"]:
                entry["holders"].append(holder)
                done.append(path)
            if how == "own" and entry["how"] == "search":
                # A directory searched so far is now given outright: QEMU writes in it.
                self._chown(path)
                entry["how"] = "own"
            return
        st = os.stat(path, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            raise OSError(0, "a symbolic link after resolving", path)
        if how == "search" and (not stat.S_ISDIR(st.st_mode) or can_search(st, self.who)):
            return  # searchable already: nothing to change, nothing to give back
        if how == "read":
            if can_read(st, self.who):
                return
            how = "own"
        acl = _get_acl(path) if how == "search" else None
        data[path] = {"uid": st.st_uid, "gid": st.st_gid, "mode": stat.S_IMODE(st.st_mode),
                      "acl": acl.hex() if acl is not None else None, "how": how,
                      "holders": [holder]}
        done.append(path)
        if how == "own":
            self._chown(path)
        else:
            os.setxattr(path, ACL_XATTR, acl_with_search(acl, st.st_mode, self.who.uid),
                        follow_symlinks=False)

    def _chown(self, path: str) -> None:
        os.chown(path, self.who.uid, self.who.gid, follow_symlinks=False)

    def give_back(self, holder: str, only: Iterable[str] | None = None) -> None:
        """Give back what `holder` holds (or just `only` of it) to its original owners."""
        with self._lock:
            data = self._load()
            paths = [p for p, e in data.items() if holder in e["holders"]]
            if only is not None:
                keep = set(only)
                paths = [p for p in paths if p in keep]
            self._release(data, holder, paths)
            self._save(data)

    def _release(self, data: dict[str, Any], holder: str, paths: list[str]) -> None:
        # Deepest first: a directory is given back after the files below it.
        for path in sorted(paths, key=lambda p: -p.count("/")):
            entry = data.get(path)
            if entry is None or holder not in entry["holders"]:
                continue
            entry["holders"].remove(holder)
            if entry["holders"]:
                continue
            del data[path]
            try:
                _restore(path, entry)
            except FileNotFoundError:
                pass  # gone (a run dir removed, a volume deleted): nothing to give back
            except OSError as e:
                log.warning("giving %s back to uid %s failed: %s", path, entry["uid"], e)


def _restore(path: str, entry: dict[str, Any]) -> None:
    if entry["how"] == "own":
        os.chown(path, entry["uid"], entry["gid"], follow_symlinks=False)
    if entry["how"] == "search" or entry["acl"] is not None:
        if entry["acl"] is not None:
            os.setxattr(path, ACL_XATTR, bytes.fromhex(entry["acl"]), follow_symlinks=False)
        else:
            with contextlib.suppress(OSError):
                os.removexattr(path, ACL_XATTR, follow_symlinks=False)
    # Last: setting or removing an ACL rewrote the group bits of the mode.
    os.chmod(path, entry["mode"])
