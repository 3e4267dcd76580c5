"""User ids for container domains: each container's own range of host uids and gids.

Main class: IdAllocator. Every container runs in a user namespace whose ids 0..size-1 are
host ids that no other container has (docs/decisions.md, "Hardened containers"). They
come from the subordinate ranges /etc/subuid and /etc/subgid give the owner `xenia`
(`xenia:START:COUNT`; the install step adds one), cut into blocks of 65536 ids. A
container gets one block of each (or the range its config's `idmap` names, which must lie
inside those ranges: a mapping outside them is refused).

Claims live in the store, one document a block (kinds "container-uids" and
"container-gids", named by the block number), written with create=True, so two creates
can never claim the same block; the claim names the domain's UUID and goes when the
domain does (`release`), or, if that was missed, when a later allocation finds no record
of that UUID (`collect_garbage`). Blocks that a running process's user namespace maps
already (another Xenia root on the same machine, podman, LXC) are skipped too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xenia.errors import AlreadyExists, InUse, InvalidConfig, NotSupported

if TYPE_CHECKING:
    from xenia.store.base import Store

OWNER = "xenia"
SUBUID = Path("/etc/subuid")
SUBGID = Path("/etc/subgid")
BLOCK = 65536  # ids a container gets (LXC's and podman's usual size)
KINDS = {"uid": "container-uids", "gid": "container-gids"}
_REQUEST_RE = re.compile(r"\s*(\d+)\s*(?::\s*(\d+)\s*)?:\s*(\d+)\s*\Z")
MAX_ID = 2**32 - 2  # (uid_t)-1 is "no id"


@dataclass(frozen=True)
class IdMap:
    """Container ids 0..size-1 are host uids uid..uid+size-1 and gids gid..gid+size-1."""

    uid: int
    gid: int
    size: int = BLOCK

    def to_dict(self) -> dict[str, int]:
        return {"uid": self.uid, "gid": self.gid, "size": self.size}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IdMap:
        return cls(int(data["uid"]), int(data["gid"]), int(data.get("size", BLOCK)))

    def host_range(self, which: str) -> IdRange:
        return IdRange(self.uid if which == "uid" else self.gid, self.size)


@dataclass(frozen=True)
class IdRange:
    start: int
    count: int

    @property
    def end(self) -> int:  # one past the last id
        return self.start + self.count

    def covers(self, other: IdRange) -> bool:
        return self.start <= other.start and other.end <= self.end

    def overlaps(self, other: IdRange) -> bool:
        return self.start < other.end and other.start < self.end

    def blocks(self) -> range:
        """Numbers of the BLOCK-sized blocks this range touches."""
        return range(self.start // BLOCK, (self.end - 1) // BLOCK + 1)

    def whole_blocks(self) -> range:
        """Numbers of the blocks lying wholly inside this range."""
        return range(-(-self.start // BLOCK), self.end // BLOCK)

    def __str__(self) -> str:
        return f"{self.start}-{self.end - 1}"


def parse_request(text: str) -> IdMap:
    """`idmap` of a config: "ID:COUNT" (the same host id for uids and gids) or
    "UID:GID:COUNT". ValueError saying what is wrong."""
    m = _REQUEST_RE.match(text)
    if m is None:
        raise ValueError(f"'{text}' is not HOSTID:COUNT or HOSTUID:HOSTGID:COUNT")
    uid, gid_text, count = int(m[1]), m[2], int(m[3])
    gid = int(gid_text) if gid_text is not None else uid
    if not 1 <= count <= BLOCK:
        raise ValueError(f"COUNT must be from 1 to {BLOCK}, got {count}")
    for what, start in (("uid", uid), ("gid", gid)):
        if start == 0:
            raise ValueError(f"host {what} 0 is the host's root; a container's ids must be "
                             "unprivileged ids of its own")
        if start + count - 1 > MAX_ID:
            raise ValueError(f"host {what}s {start}.. go past the largest id {MAX_ID}")
    return IdMap(uid, gid, count)


def parse_subids(text: str, owner: str = OWNER) -> list[IdRange]:
    """The ranges an /etc/subuid-style text gives `owner` (lines "NAME:START:COUNT")."""
    found = []
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) != 3 or parts[0] != owner:
            continue
        try:
            start, count = int(parts[1]), int(parts[2])
        except ValueError:
            continue
        if start > 0 and count > 0:
            found.append(IdRange(start, count))
    return found


def read_subids(path: Path, owner: str = OWNER) -> list[IdRange]:
    try:
        return parse_subids(path.read_text(), owner)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise NotSupported(f"Failed to read {path} (the user ids for containers): "
                           f"{e.strerror}") from e


def live_ranges(which: str, proc: Path = Path("/proc")) -> list[IdRange]:
    """Host ids the user namespaces of running processes map (not the host's own)."""
    found: set[IdRange] = set()
    name = "uid_map" if which == "uid" else "gid_map"
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / name).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            parts = line.split()
            if len(parts) != 3:
                continue
            inside, outside, count = (int(p) for p in parts)
            if inside == 0 and outside == 0 and count == 2**32 - 1:
                continue  # the initial user namespace
            found.add(IdRange(outside, count))
    return sorted(found, key=lambda r: r.start)


class IdAllocator:
    """Gives each container domain host ids of its own; see the module docstring."""

    def __init__(self, store: Store, *, subuid: Path = SUBUID, subgid: Path = SUBGID,
                 owner: str = OWNER, proc: Path = Path("/proc")) -> None:
        self.store = store
        self.files = {"uid": subuid, "gid": subgid}
        self.owner = owner
        self.proc = proc

    def pool(self, which: str, doing: str) -> list[IdRange]:
        ranges = read_subids(self.files[which], self.owner)
        if not ranges:
            path = self.files[which]
            raise NotSupported(
                f"Failed {doing}: {path} gives '{self.owner}' no ids, and every container "
                f"runs with user ids of its own taken from there; add a line such as "
                f"'{self.owner}:1073741824:67108864' to /etc/subuid and /etc/subgid (the "
                "install step, scripts/install-deps.sh, does)")
        return ranges

    def claims(self, which: str) -> dict[int, str]:
        """Claimed block number -> UUID of the domain holding it."""
        out = {}
        for doc in self.store.obj_list(KINDS[which]):
            try:
                out[int(doc["block"])] = str(doc["uuid"])
            except (KeyError, TypeError, ValueError):
                continue
        return out

    # -- claiming ------------------------------------------------------------------------
    def _claim(self, which: str, blocks: Iterable[int], uuid: str) -> bool:
        """Claim every block or none; False if one is taken."""
        done: list[int] = []
        for b in blocks:
            try:
                self.store.obj_put(KINDS[which], str(b), {"block": b, "uuid": uuid},
                                   create=True)
            except AlreadyExists:
                for d in done:
                    self.store.obj_delete(KINDS[which], str(d))
                return False
            done.append(b)
        return True

    def _holder(self, uuid: str) -> str:
        rec = self.store.get(uuid)
        return f"domain '{rec.name}'" if rec is not None else f"domain {uuid}"

    def _auto(self, which: str, uuid: str, doing: str) -> int:
        """Claim the first free whole block of the pool; returns its first id."""
        pool = self.pool(which, doing)
        busy = live_ranges(which, self.proc)
        claimed = self.claims(which)
        total = 0
        for r in pool:
            for b in r.whole_blocks():
                total += 1
                if b in claimed:
                    continue
                block = IdRange(b * BLOCK, BLOCK)
                if any(block.overlaps(x) for x in busy):
                    continue
                if self._claim(which, [b], uuid):
                    return block.start
        if total == 0:
            raise NotSupported(
                f"Failed {doing}: the ranges {self.files[which]} gives '{self.owner}' "
                f"({', '.join(map(str, pool))}) hold no whole block of {BLOCK} ids "
                f"aligned to {BLOCK}; give it a larger range")
        raise InUse(f"Failed {doing}: all {total} ranges of {BLOCK} {which}s that "
                    f"{self.files[which]} gives '{self.owner}' are in use (by containers "
                    "or other user namespaces); destroy a container, or add a range to "
                    "/etc/subuid and /etc/subgid")

    def _requested(self, which: str, want: IdRange, uuid: str, doing: str) -> None:
        pool = self.pool(which, doing)
        if not any(r.covers(want) for r in pool):
            raise InvalidConfig(
                f"Failed {doing}: idmap asks for host {which}s {want}, which lie outside "
                f"the ranges {self.files[which]} gives '{self.owner}' "
                f"({', '.join(map(str, pool))}); a container may only have ids from there")
        claimed = self.claims(which)
        for b in want.blocks():
            if b in claimed and claimed[b] != uuid:
                raise InUse(f"Failed {doing}: host {which}s {want} share ids with "
                            f"{self._holder(claimed[b])}; leave idmap out to get a range "
                            "of its own, or pick another")
        for x in live_ranges(which, self.proc):
            if x.overlaps(want):
                raise InUse(f"Failed {doing}: host {which}s {want} are mapped by a running "
                            f"user namespace ({x}); pick another range")
        mine = [b for b in want.blocks() if claimed.get(b) != uuid]
        if not self._claim(which, mine, uuid):
            raise InUse(f"Failed {doing}: host {which}s {want} were just taken by another "
                        "domain; try again")

    def allocate(self, uuid: str, name: str, request: IdMap | None = None) -> IdMap:
        """Claim host ids for domain `uuid`: a block of each kind, or `request`."""
        doing = f"to give container '{name}' user ids of its own"
        try:
            if request is None:
                uid = self._auto("uid", uuid, doing)
                gid = self._auto("gid", uuid, doing)
                return IdMap(uid, gid, BLOCK)
            self._requested("uid", request.host_range("uid"), uuid, doing)
            self._requested("gid", request.host_range("gid"), uuid, doing)
            return request
        except BaseException:
            self.release(uuid)
            raise

    def hold(self, uuid: str, name: str, idmap: IdMap) -> None:
        """Make sure domain `uuid` holds the ids it recorded, before a boot: they must still
        lie inside the pool (the admin may have shrunk /etc/subuid since: InvalidConfig)
        and be claimed by it (claimed again if a release dropped them: InUse if another
        domain took them meanwhile)."""
        doing = f"to start container '{name}'"
        for which in ("uid", "gid"):
            want = idmap.host_range(which)
            pool = self.pool(which, doing)
            if not any(r.covers(want) for r in pool):
                raise InvalidConfig(
                    f"Failed {doing}: its host {which}s {want} are no longer inside the "
                    f"ranges {self.files[which]} gives '{self.owner}'; give them back to "
                    "it there, or destroy the container and create it again")
            claimed = self.claims(which)
            for b in want.blocks():
                holder = claimed.get(b)
                if holder is not None and holder != uuid:
                    raise InUse(f"Failed {doing}: its host {which}s {want} are held by "
                                f"{self._holder(holder)} now; destroy one of them")
            missing = [b for b in want.blocks() if b not in claimed]
            if missing and not self._claim(which, missing, uuid):
                raise InUse(f"Failed {doing}: its host {which}s {want} were just taken by "
                            "another domain")

    # -- freeing -------------------------------------------------------------------------
    def release(self, uuid: str) -> None:
        """Free every block domain `uuid` holds (idempotent)."""
        for which, kind in KINDS.items():
            for b, holder in self.claims(which).items():
                if holder == uuid:
                    self.store.obj_delete(kind, str(b))

    def collect_garbage(self, keep: Iterable[str]) -> list[str]:
        """Free the blocks of domains not in `keep` (gone without a release); returns
        their UUIDs."""
        keep = set(keep)
        gone = sorted({u for which in KINDS for u in self.claims(which).values()} - keep)
        for uuid in gone:
            self.release(uuid)
        return gone
