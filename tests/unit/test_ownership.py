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
    assert owner(tree / "a.img")[:2] == (WHO.uid, WHO.gid)
    assert owner(tree / "b.img")[:2] == (WHO.uid, WHO.gid)
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


def test_shared_file_given_back_when_the_last_holder_ends(tmp_path: Path, tree: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.json", WHO)
    ledger.give("dom1", read=[tree / "ro.iso"])
    ledger.give("dom2", read=[tree / "ro.iso"])
    ledger.give_back("dom1")
    assert owner(tree / "ro.iso")[0] == WHO.uid  # dom2 still has it
    ledger.give_back("dom2")
    assert owner(tree / "ro.iso") == (0, 0, 0o600)


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
