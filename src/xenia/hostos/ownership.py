"""Dynamic ownership of the files a confined QEMU is given; the main class is Ledger.

As libvirt's DAC driver does: before QEMU starts (or a disk is hot-plugged, a cdrom
inserted, a save file written), each file the domain writes is chowned to its QEMU's own
uid, each file it only reads and could not gets an ACL entry `user:<uid>:r--`, and every
directory above them that this uid could not search gets an ACL entry `user:<uid>:--x`
(search only: no listing, no other file in it becomes readable). The
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
from collections.abc import Callable, Iterable
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


def acl_with(raw: bytes | None, mode: int, uid: int, perm: int) -> bytes:
    """The ACL `raw` (None: the one `mode` implies) plus permission `perm` for `uid`."""
    entries = [e for e in _acl_entries(raw, mode) if e[0] != _MASK]
    old_mask = next((e[1] for e in _acl_entries(raw, mode) if e[0] == _MASK), None)
    users = {e[2]: e for e in entries if e[0] == _USER}
    perm = users[uid][1] | perm if uid in users else perm
    entries = [e for e in entries if not (e[0] == _USER and e[2] == uid)]
    entries.append((_USER, perm, uid))
    if old_mask is None:
        # No mask yet: it must let through what the group class had, and the new entry.
        old_mask = 0
        for tag, p, _ in entries:
            if tag in (_GROUP_OBJ, _GROUP, _USER):
                old_mask |= p
    entries.append((_MASK, old_mask | perm, _NO_ID))
    return _pack(entries)


def acl_with_search(raw: bytes | None, mode: int, uid: int) -> bytes:
    return acl_with(raw, mode, uid, _SEARCH)


def acl_without(raw: bytes, mode: int, uid: int) -> bytes:
    """The ACL `raw` less `uid`'s own entry (the mask is left: it only limits)."""
    return _pack([e for e in _acl_entries(raw, mode) if not (e[0] == _USER and e[2] == uid)])


def _pack(entries: list[tuple[int, int, int]]) -> bytes:
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
# Permission bits each kind of gift needs (a directory given outright: rwx).
_NEED = {"own": 6, "read": 4, "search": _SEARCH}


class Ledger:
    """Which files are given to which domains, and what they were before.

    Each domain's QEMU has its own uid (hostos/qemuids.py). A file given to be written is
    chowned to the first domain that writes it (its group is kept: the QEMU group
    `xenia-qemu` all QEMUs share must not open it); every other gift is a POSIX ACL entry
    for that domain's uid alone: `r--` for a read-only file (an image shared by several
    domains gets one entry per domain), `--x` for a directory above a given file, `rw-`
    for a second writer of a shared disk. Entries: {"uid", "gid", "mode", "acl" (the
    originals), "owner": the holder it is chowned to or None, "holders": {holder: {"uid",
    "perm", "acl": whether an ACL entry was added}}}.
    """

    def __init__(self, path: Path, who: Identity | None = None,
                 stale_uid: Callable[[int], bool] | None = None,
                 qemu_uid: Callable[[int], bool] | None = None) -> None:
        self.path = path
        self.who = who  # the identity of a give() that names none
        # Whether a uid is in the QEMU range (hostos/qemuids.py). A file owned by such a
        # uid when first given is held by another QEMU (the source of a shared-storage
        # migration, on this machine or another): that uid is never recorded as its
        # original owner (root is), as it may be a different domain's by the time this
        # one gives the file back.
        self.qemu_uid = qemu_uid or (lambda uid: False)
        # Whether a uid is a QEMU uid whose QEMU is gone. A file another Xenia root on
        # this machine had given to its QEMU (a migration between two roots) was
        # recorded here with that QEMU's uid as its owner: it is given back to root
        # instead once that QEMU is gone, since the uid may go to another domain next.
        self.stale_uid = stale_uid or (lambda uid: False)
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
        if not isinstance(data, dict):
            return {}
        for entry in data.values():
            if isinstance(entry.get("holders"), list):
                # An older xeniad's entry (one QEMU user for all): given back whole when
                # its last holder ends, as it was written.
                holders = entry["holders"]
                entry["owner"] = holders[0] if entry.get("how") == "own" and holders else None
                entry["holders"] = {h: {"uid": None, "perm": 0, "acl": False}
                                    for h in holders}
        return data

    def _save(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(data, sort_keys=True).encode(), 0o600)

    def held_by(self, holder: str) -> list[str]:
        with self._lock:
            data = self._load()
        return sorted(p for p, e in data.items() if holder in e["holders"])

    def give(self, holder: str, write: Iterable[Path | str] = (),
             read: Iterable[Path | str] = (), who: Identity | None = None) -> list[str]:
        """Give `write` (files and dirs QEMU writes) and `read` (files it only reads) to
        `holder`, whose QEMU runs as `who`, with search ACLs on the directories above
        them. Returns the paths newly held, for a caller that must undo just these (a
        hot-plug). All or nothing: on a failure, what this call changed is given back."""
        who = who or self.who
        if who is None:
            raise BackendError(f"Failed to give files to the QEMU of {holder}: no uid")
        wanted = [(self._checked(p, holder), "own") for p in write]
        wanted += [(self._checked(p, holder), "read") for p in read]
        with self._lock:
            data = self._load()
            done: list[str] = []
            try:
                for path, how in wanted:
                    self._take(data, holder, who, path, how, done)
                    parent = os.path.dirname(path)
                    while parent and parent != "/":
                        self._take(data, holder, who, parent, "search", done)
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

    def _take(self, data: dict[str, Any], holder: str, who: Identity, path: str, how: str,
              done: list[str]) -> None:
        st = os.stat(path, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            raise OSError(0, "a symbolic link after resolving", path)
        isdir = stat.S_ISDIR(st.st_mode)
        if how == "search" and not isdir:
            return
        need = 7 if how == "own" and isdir else _NEED[how]
        entry = data.get(path)
        grant = entry["holders"].get(holder) if entry is not None else None
        if grant is not None and (entry is not None and entry["owner"] == holder
                                  or grant["perm"] & need == need):
            return  # it has that already
        if entry is None and how != "own" and _may(st, who, need):
            return  # open to it already: nothing to change, nothing to give back
        if entry is None:
            acl = _get_acl(path)
            entry = data[path] = {
                "uid": 0 if self.qemu_uid(st.st_uid) else st.st_uid, "gid": st.st_gid,
                "mode": stat.S_IMODE(st.st_mode),
                "acl": acl.hex() if acl is not None else None, "owner": None, "holders": {}}
        if grant is None:
            grant = entry["holders"][holder] = {"uid": who.uid, "perm": 0, "acl": False}
            done.append(path)
        if how == "own" and entry["owner"] is None:
            # The group is kept: the QEMU group is every QEMU's.
            os.chown(path, who.uid, -1, follow_symlinks=False)
            entry["owner"] = holder
        elif not _may(st, who, need):
            os.setxattr(path, ACL_XATTR, acl_with(_get_acl(path), st.st_mode, who.uid, need),
                        follow_symlinks=False)
            grant["acl"] = True
        grant["perm"] |= need

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
            grant = entry["holders"].pop(holder)
            try:
                if entry["uid"] != 0 and self.stale_uid(entry["uid"]):
                    entry["uid"] = 0
                if not entry["holders"]:
                    del data[path]
                    _restore(path, entry, holder, grant, self.stale_uid)
                else:
                    _withdraw(path, entry, holder, grant)
            except FileNotFoundError:
                data.pop(path, None)  # gone (a run dir removed, a volume deleted)
            except OSError as e:
                log.warning("giving %s back to uid %s failed: %s", path, entry["uid"], e)


def _taken(st: os.stat_result, entry: dict[str, Any], holder: str,
           grant: dict[str, Any]) -> bool:
    """Whether a file chowned to `holder`'s uid has another owner now: another Xenia root
    gave it to its QEMU (the destination of a migration), or an admin chowned it. Its
    owner is then not ours to change back."""
    if entry.get("taken"):
        return True  # seen when an earlier holder let go: the file stays theirs
    uid = grant.get("uid")
    return entry["owner"] == holder and isinstance(uid, int) and st.st_uid != uid


def _drop_acl_entry(path: str, st: os.stat_result, grant: dict[str, Any]) -> None:
    if grant["acl"] and grant["uid"] is not None:
        raw = _get_acl(path)
        if raw is not None:
            os.setxattr(path, ACL_XATTR, acl_without(raw, st.st_mode, grant["uid"]),
                        follow_symlinks=False)


def _withdraw(path: str, entry: dict[str, Any], holder: str, grant: dict[str, Any]) -> None:
    """One holder of a shared file lets go: its ACL entry goes, and a file chowned to it
    goes back to its original owner (its uid may be handed to another domain next)."""
    st = os.stat(path, follow_symlinks=False)
    _drop_acl_entry(path, st, grant)
    if _taken(st, entry, holder, grant):
        log.info("not giving %s back to uid %s: it is uid %s's now", path, entry["uid"],
                 st.st_uid)
        entry["owner"], entry["taken"] = None, True
    elif entry["owner"] == holder:
        os.chown(path, entry["uid"], -1, follow_symlinks=False)
        os.chmod(path, stat.S_IMODE(st.st_mode))  # chown cleared set-id bits
        entry["owner"] = None


def _restore(path: str, entry: dict[str, Any], holder: str, grant: dict[str, Any],
             stale_uid: Callable[[int], bool]) -> None:
    st = os.stat(path, follow_symlinks=False)
    if _taken(st, entry, holder, grant):
        # Owner, mode and ACL are the new holder's business now: only our entry goes.
        _drop_acl_entry(path, st, grant)
        log.info("not giving %s back to uid %s: it is uid %s's now", path, entry["uid"],
                 st.st_uid)
        return
    os.chown(path, entry["uid"], entry["gid"], follow_symlinks=False)
    if entry["acl"] is not None:
        raw = bytes.fromhex(entry["acl"])
        for tag, _perm, uid in _acl_entries(raw, entry["mode"]):
            if tag == _USER and stale_uid(uid):
                raw = acl_without(raw, entry["mode"], uid)  # another root's gone QEMU
        os.setxattr(path, ACL_XATTR, raw, follow_symlinks=False)
    else:
        with contextlib.suppress(OSError):
            os.removexattr(path, ACL_XATTR, follow_symlinks=False)
    # Last: setting or removing an ACL rewrote the group bits of the mode.
    os.chmod(path, entry["mode"])
