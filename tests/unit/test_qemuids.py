"""Per-domain QEMU uids (hostos/qemuids.py): the range check against accounts and
subordinate ranges, machine-wide claims, stale claims, freeing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xenia.errors import BackendError, InvalidConfig
from xenia.hostos import qemuids
from xenia.hostos.qemuids import UidRange, check_range, parse_range


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    d = tmp_path / "etc"
    d.mkdir()
    (d / "passwd").write_text("root:x:0:0::/root:/bin/sh\nbob:x:5000:5000::/h:/bin/sh\n")
    (d / "subuid").write_text("xenia:1073741824:67108864\n")
    (d / "subgid").write_text("bob:100000:65536\n")
    return d


def test_parse_range() -> None:
    assert parse_range("2000000:100") == (2000000, 100)
    for bad in ("2000000", "a:b", "0:10", "4294967290:100"):
        with pytest.raises(InvalidConfig, match="XENIA_QEMU_UIDS"):
            parse_range(bad)


def test_range_must_miss_accounts_and_subordinate_ranges(etc: Path) -> None:
    check_range(*qemuids.DEFAULT_RANGE, etc=etc)  # the default is clear of both
    with pytest.raises(InvalidConfig, match=r"uid 5000 \(bob"):
        check_range(4000, 2000, etc=etc)
    with pytest.raises(InvalidConfig, match="xenia:1073741824:67108864 in .*subuid"):
        check_range(1073741824 + 10, 5, etc=etc)
    with pytest.raises(InvalidConfig, match="bob:100000:65536 in .*subgid"):
        check_range(99990, 20, etc=etc)
    with pytest.raises(InvalidConfig):
        UidRange(4000, 2000, claims=etc / "c", etc=etc).allocate("u1")


def test_each_domain_gets_its_own_uid_and_frees_it(tmp_path: Path, etc: Path) -> None:
    r = UidRange(3_000_000_000, 3, claims=tmp_path / "claims", etc=etc)
    a, b = r.allocate("dom-a"), r.allocate("dom-b")
    assert a != b and r.holds(a) and r.holds(b)
    # A second xeniad (another root on the machine) sees the claims.
    other = UidRange(3_000_000_000, 3, claims=tmp_path / "claims", etc=etc)
    c = other.allocate("dom-c")
    assert c not in (a, b)
    with pytest.raises(BackendError, match="all 3 uids"):
        other.allocate("dom-d")
    r.free(a, "dom-b")  # not its claim: kept
    with pytest.raises(BackendError):
        other.allocate("dom-d")
    r.free(a, "dom-a")
    assert other.allocate("dom-d") == a


def dead_pid() -> int:
    """The pid of a process that has ended (a crashed xeniad's)."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_stale_claim_is_taken_over(tmp_path: Path, etc: Path) -> None:
    claims = tmp_path / "claims"
    claims.mkdir()
    dead = dead_pid()
    (claims / "3000000000").write_text(f"{dead} dom-gone\n")  # a crashed xeniad's
    (claims / "3000000001").write_text(f"{os.getpid()} dom-live\n")
    r = UidRange(3_000_000_000, 3, claims=claims, etc=etc)
    assert r.allocate("dom-new") == 3_000_000_000
    assert r.allocate("dom-next") == 3_000_000_002


def test_confinement_assigns_records_and_frees_a_domains_uid(tmp_path: Path, etc: Path
                                                             ) -> None:
    from xenia.config.model import DomainConfig
    from xenia.drivers.qemu_confine import QemuConfinement
    from xenia.paths import Paths
    from xenia.store.base import DomainRecord

    claims = tmp_path / "claims"
    conf = QemuConfinement(Paths(state=tmp_path / "s", run=tmp_path / "r"),
                           uids=UidRange(3_000_000_000, 8, claims=claims, etc=etc))

    def rec(uuid: str) -> DomainRecord:
        cfg = DomainConfig.from_dict({"name": uuid, "type": "pv", "kernel": "/k"})
        return DomainRecord(uuid=uuid, name=uuid, domid=1, config=cfg, state="running")

    a, b = rec("dom-a"), rec("dom-b")
    with pytest.raises(BackendError, match="has none"):
        QemuConfinement.identity(a)
    who_a, who_b = conf.assign(a), conf.assign(b)
    assert who_a.uid != who_b.uid and who_a.gid == who_b.gid != 0
    # In the record, for a restarted xeniad.
    assert QemuConfinement.identity(a) == who_a
    assert a.runtime["confinement"]["uid"] == who_a.uid
    # Its taps: its uid, no group (not the QEMU group every QEMU is in).
    assert QemuConfinement.tap_owner(a) == (who_a.uid, None)
    assert (claims / str(who_a.uid)).exists()
    # A new QEMU for b's record without a release between (a crash restart): b's old
    # claim goes (no process runs as its uid), so no uid leaks.
    again = conf.assign(b)
    assert again.uid == who_b.uid  # freed, then the lowest free uid again
    assert sorted(os.listdir(claims)) == sorted([".lock", str(who_a.uid), str(who_b.uid)])
    conf.release(a)
    assert not (claims / str(who_a.uid)).exists()
    assert (claims / str(who_b.uid)).exists()


def test_an_older_confined_record_keeps_its_shared_user() -> None:
    """A QEMU an older xeniad confined (all as xenia-qemu; no gid in its record) is
    adopted with that uid, and the QEMU user's group."""
    import pwd

    from xenia.config.model import DomainConfig
    from xenia.drivers.qemu_confine import QemuConfinement
    from xenia.store.base import DomainRecord

    cfg = DomainConfig.from_dict({"name": "old", "type": "pv", "kernel": "/k"})
    rec = DomainRecord(uuid="u", name="old", domid=1, config=cfg, state="running")
    qemu = pwd.getpwnam("xenia-qemu")
    rec.runtime["confinement"] = {"user": "xenia-qemu", "uid": qemu.pw_uid}
    who = QemuConfinement.identity(rec)
    assert (who.uid, who.gid) == (qemu.pw_uid, qemu.pw_gid)


def test_adopting_a_qemu_makes_its_uids_claim_this_xeniads(tmp_path: Path, etc: Path
                                                           ) -> None:
    """After a xeniad restart the claim names the dead xeniad; adopting the QEMU moves it
    to this one, so the uid is not handed on when that QEMU dies, before its domain's
    files are given back."""
    from xenia.config.model import DomainConfig
    from xenia.drivers.qemu_confine import QemuConfinement
    from xenia.paths import Paths
    from xenia.store.base import DomainRecord

    claims = tmp_path / "claims"
    claims.mkdir()
    dead = dead_pid()
    uid = 3_000_000_000
    (claims / str(uid)).write_text(f"{dead} dom-a\n")  # the crashed xeniad's
    (claims / str(uid + 1)).write_text(f"{dead} dom-other\n")
    uids = UidRange(uid, 8, claims=claims, etc=etc)
    conf = QemuConfinement(Paths(state=tmp_path / "s", run=tmp_path / "r"), uids=uids)
    cfg = DomainConfig.from_dict({"name": "a", "type": "pv", "kernel": "/k"})
    rec = DomainRecord(uuid="dom-a", name="a", domid=1, config=cfg, state="running")
    rec.runtime["confinement"] = {"user": "xenia-qemu", "uid": uid, "gid": 995}
    conf.adopt(rec)
    assert (claims / str(uid)).read_text() == f"{os.getpid()} dom-a\n"
    # Its QEMU gone (no process runs as the uid here), the claim still holds.
    assert uids.allocate("dom-new") == uid + 1  # the other dead claim: stale, taken
    rec.runtime["confinement"]["uid"] = uid + 1
    conf.adopt(rec)  # another domain's claim: left as it is
    assert (claims / str(uid + 1)).read_text() == f"{os.getpid()} dom-new\n"


def test_the_ledger_knows_the_qemu_range(tmp_path: Path) -> None:
    both = qemuids.UidsAndLedger(tmp_path / "o.json", UidRange(3_000_000_000, 8))
    assert both.ledger.qemu_uid(3_000_000_007) and not both.ledger.qemu_uid(1234)
