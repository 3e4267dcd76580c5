"""The file ownership ledger of confined QEMUs (hostos/ownership.py): give, give back,
sharing, and its error paths (nothing half-given)."""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import pytest

from xenia.errors import BackendError, InvalidConfig
from xenia.hostos.ownership import ACL_XATTR, Identity, Ledger, acl_with_search

WHO = Identity(65534, 65534)  # nobody: any uid that is not root and not the file's owner

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")


def owner(p: Path) -> tuple[int, int, int]:
    st = os.stat(p)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def acl(p: Path) -> bytes | None:
    try:
        return os.getxattr(p, ACL_XATTR)
    except OSError:
        return None


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    d = tmp_path / "locked"
    d.mkdir(mode=0o700)
    os.chmod(d, 0o700)
    for name in ("a.img", "b.img", "ro.iso"):
        (d / name).write_bytes(b"x")
        os.chmod(d / name, 0o600)
    os.chown(d / "b.img", 1234, 4321)
    return d


def test_give_and_give_back_restore_owner_mode_and_acl(tmp_path: Path, tree: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.json", WHO)
    before = {p: owner(p) for p in (tree, tree / "a.img", tree / "b.img")}
    ledger.give("dom1", write=[tree / "a.img", tree / "b.img"])
    # Owned by the domain's uid; the group is kept (the QEMU group is every QEMU's).
    assert owner(tree / "a.img")[:2] == (WHO.uid, 0)
    assert owner(tree / "b.img")[:2] == (WHO.uid, 4321)
    # The directory above: searchable by QEMU's user through an ACL, not by others.
    assert acl(tree) is not None
    assert owner(tree)[2] & 0o007 == 0
    ledger.give_back("dom1")
    assert {p: owner(p) for p in before} == before
    assert acl(tree) is None
    assert ledger.held_by("dom1") == []


def test_read_only_file_readable_already_is_not_chowned(tmp_path: Path, tree: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.json", WHO)
    os.chmod(tree / "ro.iso", 0o644)
    ledger.give("dom1", read=[tree / "ro.iso"])
    assert owner(tree / "ro.iso") == (0, 0, 0o644)
    assert str(tree) in ledger.held_by("dom1")  # only its directory was opened up
    ledger.give_back("dom1")
    assert acl(tree) is None


def user_entries(p: Path) -> dict[int, int]:
    raw = acl(p)
    if raw is None:
        return {}
    entries = [struct.unpack_from("<HHI", raw, o) for o in range(4, len(raw), 8)]
    return {uid: perm for tag, perm, uid in entries if tag == 0x02}


A, B = Identity(70001, 995), Identity(70002, 995)


def test_shared_read_only_file_gets_an_acl_entry_per_domain(tmp_path: Path, tree: Path
                                                            ) -> None:
    ledger = Ledger(tmp_path / "ledger.json")
    ledger.give("dom1", read=[tree / "ro.iso"], who=A)
    ledger.give("dom2", read=[tree / "ro.iso"], who=B)
    assert owner(tree / "ro.iso")[:2] == (0, 0)  # not chowned: read through the ACL
    assert user_entries(tree / "ro.iso") == {A.uid: 4, B.uid: 4}
    assert user_entries(tree) == {A.uid: 1, B.uid: 1}
    ledger.give_back("dom1")
    assert user_entries(tree / "ro.iso") == {B.uid: 4}  # dom2 still has it; dom1 not
    assert user_entries(tree) == {B.uid: 1}
    ledger.give_back("dom2")
    assert owner(tree / "ro.iso") == (0, 0, 0o600)
    assert acl(tree / "ro.iso") is None and acl(tree) is None


def test_a_written_file_is_one_domains_and_a_second_writer_gets_an_acl(
        tmp_path: Path, tree: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.json")
    ledger.give("dom1", write=[tree / "b.img"], who=A)
    ledger.give("dom2", write=[tree / "b.img"], who=B)  # a shared (w!) disk
    assert owner(tree / "b.img")[:2] == (A.uid, 4321)
    assert user_entries(tree / "b.img") == {B.uid: 6}
    # dom1 ends first: its uid may go to another domain next, so the file is not its.
    ledger.give_back("dom1")
    assert owner(tree / "b.img")[:2] == (1234, 4321)
    assert user_entries(tree / "b.img") == {B.uid: 6}
    ledger.give_back("dom2")
    assert owner(tree / "b.img") == (1234, 4321, 0o600)
    assert acl(tree / "b.img") is None


def test_another_domains_file_is_not_open_to_a_domain(tmp_path: Path, tree: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.json")
    ledger.give("dom1", write=[tree / "a.img"], who=A)
    ledger.give("dom2", write=[tree / "b.img"], who=B)
    st = os.stat(tree / "a.img")
    assert st.st_uid == A.uid and B.uid not in user_entries(tree / "a.img")
    assert st.st_mode & 0o077 == 0  # neither group nor others: B cannot open it
    ledger.give_back("dom1")
    ledger.give_back("dom2")


def test_an_older_ledger_is_given_back(tmp_path: Path, tree: Path) -> None:
    """An entry an older xeniad wrote (one QEMU user, holders a list)."""
    import json
    os.chown(tree / "a.img", WHO.uid, WHO.gid)
    (tmp_path / "ledger.json").write_text(json.dumps({str(tree / "a.img"): {
        "uid": 0, "gid": 0, "mode": 0o600, "acl": None, "how": "own", "holders": ["dom1"]}}))
    Ledger(tmp_path / "ledger.json").give_back("dom1")
    assert owner(tree / "a.img") == (0, 0, 0o600)


def test_a_missing_file_gives_nothing(tmp_path: Path, tree: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.json", WHO)
    before = {p: owner(p) for p in (tree, tree / "a.img")}
    with pytest.raises(BackendError, match="Failed to give .*nope"):
        ledger.give("dom1", write=[tree / "a.img", tree / "nope"])
    assert {p: owner(p) for p in before} == before
    assert acl(tree) is None
    assert ledger.held_by("dom1") == []


def test_relative_path_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfig, match="not an absolute path"):
        Ledger(tmp_path / "l.json", WHO).give("dom1", write=["disk.img"])


def test_symlink_gives_its_target_and_gives_that_back(tmp_path: Path, tree: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.json", WHO)
    link = tmp_path / "link.img"
    link.symlink_to(tree / "a.img")
    ledger.give("dom1", write=[link])
    assert owner(tree / "a.img")[0] == WHO.uid
    # Swapped for a link to another file: giving back still restores the first file.
    link.unlink()
    link.symlink_to(tree / "b.img")
    ledger.give_back("dom1")
    assert owner(tree / "a.img") == (0, 0, 0o600)
    assert owner(tree / "b.img") == (1234, 4321, 0o600)


def test_ledger_survives_a_restart(tmp_path: Path, tree: Path) -> None:
    Ledger(tmp_path / "ledger.json", WHO).give("dom1", write=[tree / "a.img"])
    Ledger(tmp_path / "ledger.json", WHO).give_back("dom1")  # a new xeniad
    assert owner(tree / "a.img") == (0, 0, 0o600)


def test_corrupt_ledger_is_a_clear_error(tmp_path: Path, tree: Path) -> None:
    (tmp_path / "ledger.json").write_text("{not json")
    with pytest.raises(BackendError, match="ownership ledger .* move it aside"):
        Ledger(tmp_path / "ledger.json", WHO).give("dom1", write=[tree / "a.img"])
    assert owner(tree / "a.img") == (0, 0, 0o600)


def test_vanished_file_is_skipped_on_give_back(tmp_path: Path, tree: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.json", WHO)
    ledger.give("dom1", write=[tree / "a.img", tree / "b.img"])
    (tree / "a.img").unlink()
    ledger.give_back("dom1")
    assert owner(tree / "b.img") == (1234, 4321, 0o600)


def test_acl_with_search_keeps_existing_entries() -> None:
    raw = acl_with_search(None, 0o750, 42)
    entries = [struct.unpack_from("<HHI", raw, o) for o in range(4, len(raw), 8)]
    assert (0x01, 7, 0xFFFFFFFF) in entries  # owner rwx
    assert (0x02, 1, 42) in entries  # the QEMU user: search
    assert (0x04, 5, 0xFFFFFFFF) in entries  # group r-x kept
    assert (0x10, 5, 0xFFFFFFFF) in entries  # mask: group r-x | x
    again = acl_with_search(raw, 0o750, 42)
    assert again == raw


def test_a_file_another_roots_gone_qemu_had_goes_back_to_root(tmp_path: Path, tree: Path
                                                              ) -> None:
    """A migration between two Xenia roots on one machine: the file was the source
    QEMU's (uid 70001) when this root gave it; that QEMU is gone at give-back, and its
    uid may go to another domain next, so the file goes to root, not to it."""
    os.chown(tree / "a.img", A.uid, 4321)
    os.setxattr(tree, ACL_XATTR, acl_with_search(None, 0o700, A.uid))
    gone = {A.uid}
    ledger = Ledger(tmp_path / "ledger.json", stale_uid=lambda uid: uid in gone)
    ledger.give("dom2", write=[tree / "a.img"], who=B)
    assert owner(tree / "a.img")[0] == B.uid
    ledger.give_back("dom2")
    assert owner(tree / "a.img") == (0, 4321, 0o600)
    assert user_entries(tree) == {}  # the gone QEMU's search entry is not put back


def in_qemu_range(uid: int) -> bool:
    return 70000 <= uid < 80000


def test_a_qemu_uid_is_never_recorded_as_an_original_owner(tmp_path: Path, tree: Path
                                                           ) -> None:
    """Shared storage, migration between two hosts: when the destination gives the disk,
    the source's QEMU (uid 70001 on the source) still holds it. That uid is not stale
    here (on another host it may be a running domain's): the file still goes to root."""
    os.chown(tree / "a.img", A.uid, 4321)
    ledger = Ledger(tmp_path / "ledger.json", qemu_uid=in_qemu_range)
    ledger.give("dom2", write=[tree / "a.img"], who=B)
    assert owner(tree / "a.img")[0] == B.uid
    ledger.give_back("dom2")
    assert owner(tree / "a.img") == (0, 4321, 0o600)


def test_a_file_another_qemu_took_meanwhile_is_not_taken_back(tmp_path: Path, tree: Path
                                                              ) -> None:
    """The source of a migration between two roots ends after the destination gave the
    disk to its own QEMU (uid B): the source's give-back leaves it with B."""
    ledger = Ledger(tmp_path / "ledger.json", qemu_uid=in_qemu_range)
    ledger.give("dom1", write=[tree / "b.img"], who=A)
    assert owner(tree / "b.img")[0] == A.uid
    os.chown(tree / "b.img", B.uid, -1)  # the other root's give
    ledger.give_back("dom1")
    assert owner(tree / "b.img")[0] == B.uid
    assert ledger.held_by("dom1") == []


def test_a_shared_file_another_qemu_took_is_not_withdrawn(tmp_path: Path, tree: Path
                                                          ) -> None:
    """The same when another domain of this root still holds the file (_withdraw)."""
    ledger = Ledger(tmp_path / "ledger.json", qemu_uid=in_qemu_range)
    ledger.give("dom1", write=[tree / "b.img"], who=A)
    ledger.give("dom3", write=[tree / "b.img"], who=WHO)  # a second writer: an ACL entry
    os.chown(tree / "b.img", B.uid, -1)
    ledger.give_back("dom1")
    assert owner(tree / "b.img")[0] == B.uid
    ledger.give_back("dom3")
    assert owner(tree / "b.img")[0] == B.uid
    assert WHO.uid not in user_entries(tree / "b.img")
