"""A uid of its own for each domain's QEMU (as Firecracker's jailer runs each microVM as
its own uid), from a range reserved for Xenia; the main class is UidRange.

The range is `XENIA_QEMU_UIDS=FIRST:COUNT` (default DEFAULT_RANGE). It is checked, when
first used, against every uid in /etc/passwd and every range in /etc/subuid and
/etc/subgid (containers' user namespaces, Xenia's own included): an overlap is refused
with a message, so a QEMU can never run as a real account or a container's mapped id.

A uid is claimed machine-wide, not only in this xeniad's store, because several Xenia
roots may share a machine (the test hosts, a migration between two roots on one box): a
claim is a file CLAIMS/<uid> made with O_CREAT|O_EXCL holding the claiming xeniad's pid
and the domain's uuid, in a tmpfs directory (/run: gone at reboot, with the QEMUs). A
claim is stale, and taken over, when its xeniad is dead and no process runs as its uid
(a QEMU outliving a restarted xeniad keeps its uid: the new xeniad adopts it with the
uid in the domain's record). The claim goes when the domain ends (release).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Collection
from pathlib import Path

from xenia.errors import BackendError, InvalidConfig
from xenia.hostos.ownership import Ledger

ENV = "XENIA_QEMU_UIDS"
DEFAULT_RANGE = (1_879_048_192, 65_536)  # 0x70000000: far above system and login uids
CLAIMS = Path("/run/xenia-qemu-uids")


def parse_range(text: str) -> tuple[int, int]:
    try:
        first, count = (int(x) for x in text.split(":"))
    except ValueError:
        raise InvalidConfig(f"Failed to read {ENV}='{text}': it must be FIRST:COUNT, e.g. "
                            f"{DEFAULT_RANGE[0]}:{DEFAULT_RANGE[1]}") from None
    if first < 1000 or count < 1 or first + count > 2**32 - 2:
        raise InvalidConfig(f"Failed to read {ENV}='{text}': FIRST must be 1000 or more and "
                            "FIRST+COUNT below 4294967294")
    return first, count


def _passwd_uids(path: Path) -> dict[int, str]:
    out: dict[int, str] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            f = line.split(":")
            if len(f) > 2 and f[2].isdigit():
                out[int(f[2])] = f[0]
    return out


def _sub_ranges(path: Path) -> list[tuple[str, int, int]]:
    out = []
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            f = line.strip().split(":")
            if len(f) == 3 and f[1].isdigit() and f[2].isdigit():
                out.append((f[0], int(f[1]), int(f[2])))
    return out


def check_range(first: int, count: int, etc: Path = Path("/etc")) -> None:
    """Refuse a range that holds an account's uid or overlaps a subordinate id range."""
    last = first + count - 1
    clash = [f"uid {u} ({name}, {etc / 'passwd'})"
             for u, name in sorted(_passwd_uids(etc / "passwd").items()) if first <= u <= last]
    for name in ("subuid", "subgid"):
        clash += [f"{owner}:{start}:{n} in {etc / name}"
                  for owner, start, n in _sub_ranges(etc / name)
                  if start <= last and first < start + n]
    if clash:
        raise InvalidConfig(
            f"Failed to use QEMU uids {first}..{last}: the range holds {', '.join(clash[:3])}; "
            f"give QEMU a free range with {ENV}=FIRST:COUNT in xeniad's environment")


def _running_uids() -> set[int]:
    uids: set[int] = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                uids.add(entry.stat().st_uid)
    return uids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class UidRange:
    def __init__(self, first: int, count: int, claims: Path = CLAIMS,
                 etc: Path = Path("/etc")) -> None:
        self.first, self.count = first, count
        self.claims = claims
        self.etc = etc
        self._checked = False

    @classmethod
    def from_env(cls) -> UidRange:
        text = os.environ.get(ENV)
        first, count = parse_range(text) if text else DEFAULT_RANGE
        return cls(first, count)

    def _dir(self) -> Path:
        self.claims.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self.claims

    def allocate(self, uuid: str, in_use: Collection[int] = ()) -> int:
        """Claim a free uid for domain `uuid` (`in_use`: uids this xeniad's records hold)."""
        if not self._checked:
            check_range(self.first, self.count, self.etc)
            self._checked = True
        d = self._dir()
        # One allocator at a time on the machine: the scan of running uids and the claim
        # must not interleave with another xeniad's.
        lock = os.open(d / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            running = _running_uids()
            for uid in range(self.first, self.first + self.count):
                if uid in in_use or uid in running:
                    continue
                if self._claim(d / str(uid), uuid, running):
                    return uid
        finally:
            os.close(lock)
        raise BackendError(f"Failed to give domain {uuid} a QEMU uid: all {self.count} uids "
                           f"from {self.first} are taken; widen {ENV}")

    def _claim(self, path: Path, uuid: str, running: set[int]) -> bool:
        text = f"{os.getpid()} {uuid}\n"
        for _ in range(2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                if not self._stale(path, running):
                    return False
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
            return True
        return False

    @staticmethod
    def _stale(path: Path, running: set[int]) -> bool:
        try:
            pid = int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return True
        return not _alive(pid) and int(path.name) not in running

    def adopt(self, uid: int, uuid: str) -> None:
        """A restarted xeniad keeps the uid its running QEMU has: the claim is its now."""
        path = self._dir() / str(uid)
        with contextlib.suppress(OSError):
            owner = path.read_text().split()
            if len(owner) == 2 and owner[1] != uuid:
                return  # another domain's claim: leave it
        with contextlib.suppress(OSError):
            path.write_text(f"{os.getpid()} {uuid}\n")

    def free(self, uid: int, uuid: str) -> None:
        """Drop the claim of domain `uuid` on `uid` (only its own)."""
        path = self.claims / str(uid)
        try:
            owner = path.read_text().split()
        except OSError:
            return
        if len(owner) == 2 and owner[1] == uuid:
            with contextlib.suppress(OSError):
                path.unlink()

    def holds(self, uid: int) -> bool:
        return self.first <= uid < self.first + self.count

    def stale(self, uid: int) -> bool:
        """A uid of this range that no process runs as (its QEMU is gone)."""
        return self.holds(uid) and uid not in _running_uids()



class UidsAndLedger:
    """The QEMU uid range and an ownership ledger giving files to its uids, both made at
    first use (the range is read from the environment, checked at its first allocation):
    what every confined process kind (a domain's QEMU, a replica's storage daemon) needs."""

    def __init__(self, ledger_path: Path, uids: UidRange | None = None) -> None:
        self.ledger_path = ledger_path
        self._uids = uids
        self._ledger: Ledger | None = None

    @property
    def uids(self) -> UidRange:
        if self._uids is None:
            self._uids = UidRange.from_env()
        return self._uids

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = Ledger(self.ledger_path, stale_uid=self.uids.stale,
                                  qemu_uid=self.uids.holds)
        return self._ledger
