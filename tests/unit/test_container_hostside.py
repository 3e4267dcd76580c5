"""Host-side parts of container confinement, on this host as root: pids and swap limits on
the real cgroupfs, idmapped mounts (the probe), the shifted copy of a rootfs, and the
choice between them (LowerLayers)."""

from __future__ import annotations

import contextlib
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from xenia.config.model import DomainConfig
from xenia.containers import confine, idmount, limits
from xenia.containers.idmap import IdMap
from xenia.containers.lower import LowerLayers
from xenia.hostos.cgroupfs import CgroupLayout, Hierarchy, host_layout
from xenia.hostos.cgroups import DomainCgroup

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.fixture
def cgroup() -> Iterator[DomainCgroup]:
    if os.geteuid() != 0 or host_layout().hierarchy_for("pids") is None:
        pytest.skip("needs root and the pids and memory controllers")
    cg = DomainCgroup.create(f"t{uuid.uuid4().hex[:12]}", root="xenia-unit")
    try:
        yield cg
    finally:
        cg.remove(timeout=5.0, evict=True)
        for h in cg.layout.used():
            with contextlib.suppress(OSError):  # another test's group may still be there
                (h.mount / "xenia-unit").rmdir()


def test_pids_max(cgroup: DomainCgroup) -> None:
    limits.set_pids_max(cgroup, 64)
    assert limits.pids_max(cgroup) == 64
    assert (cgroup.path("pids") / "pids.max").read_text().strip() == "64"
    limits.set_pids_max(cgroup, 0)
    assert limits.pids_max(cgroup) is None
    limits.set_pids_max(cgroup, limits.DEFAULT_PIDS_LIMIT)
    assert limits.pids_max(cgroup) == 2048


def test_memory_and_swap_move_together(cgroup: DomainCgroup) -> None:
    h = cgroup.layout.hierarchy_for("memory")
    assert h is not None
    swap_expected = (lambda mib: mib << 20) if h.version == 1 else (lambda mib: 0)
    # From no limit, up, down and up again: on v1 the kernel refuses any order that would
    # leave memsw below the limit, so each step passing shows the order is right.
    for mib in (64, 256, 32, 512, 48):
        limits.set_memory(cgroup, mib << 20)
        assert cgroup.memory_limit() == mib << 20
        if limits.swap_limit(cgroup) is not None or h.version == 2:
            assert limits.swap_limit(cgroup) == swap_expected(mib)


# -- rootfs ownership -----------------------------------------------------------------------------
@pytest.fixture
def tree(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    t = tmp_path / "tree"
    (t / "bin").mkdir(parents=True)
    (t / "etc").mkdir()
    prog = t / "bin" / "prog"
    prog.write_text("#!/bin/sh\n")
    os.link(prog, t / "bin" / "alias")
    os.symlink("prog", t / "bin" / "link")
    (t / "etc" / "shadow").write_text("x\n")
    os.mkfifo(t / "fifo")
    for p in (t, t / "bin", t / "etc", prog, t / "etc" / "shadow"):
        os.chown(p, 100000, 100000)
    os.lchown(t / "bin" / "link", 100000, 100000)
    os.chown(t / "etc" / "shadow", 100000, 100042)
    os.chown(t / "etc", 5, 5)  # outside the tree's range
    os.chmod(prog, 0o4755)  # setuid (after the chown, which clears it): the copy keeps it
    return t


def test_shift() -> None:
    assert idmount.shift(100000, 100000, 7000000, 65536) == 7000000
    assert idmount.shift(165535, 100000, 7000000, 65536) == 7065535
    assert idmount.shift(5, 100000, 7000000, 65536) == 7065534  # nobody
    assert idmount.shift(5, 100000, 7000000, 100) == 7000099


def test_shifted_copy(tree: Path, tmp_path: Path) -> None:
    dst = tmp_path / "copy"
    idmount.shifted_copy(tree, dst, (100000, 7000000), (100000, 8000000), 65536)
    st = (dst / "bin" / "prog").stat()
    assert (st.st_uid, st.st_gid) == (7000000, 8000000)
    assert stat.S_IMODE(st.st_mode) == 0o4755
    assert (dst / "bin" / "alias").stat().st_ino == st.st_ino  # still one file
    assert os.readlink(dst / "bin" / "link") == "prog"
    assert (dst / "bin" / "link").lstat().st_uid == 7000000
    assert (dst / "etc" / "shadow").stat().st_gid == 8000042
    assert (dst / "etc").stat().st_uid == 7065534
    assert not (dst / "fifo").exists()
    assert (tree / "bin" / "prog").stat().st_uid == 100000  # the source is untouched
    assert not (tmp_path / "copy.part").exists()


@root_only
def test_probe_on_this_host(tmp_path: Path) -> None:
    # This kernel (6.x) idmaps ext4 and tmpfs and stacks overlays on them.
    d = tmp_path / "probe"
    d.mkdir()
    assert idmount.probe_in_child(str(d)) is None
    assert "No such file" in (idmount.probe_in_child(str(tmp_path / "missing")) or "")


def test_lower_layers_choose_and_fall_back(tree: Path, tmp_path: Path) -> None:
    calls: list[str] = []

    def refuse(path: str) -> str | None:
        calls.append(path)
        return "EINVAL"

    idmap = IdMap(7000000, 8000000)
    same = LowerLayers(refuse).prepare(tree, IdMap(100000, 100000), tmp_path / "c0", "ct")
    assert same.mode == "same" and same.monitor_args() == ["--lower", str(tree)]
    assert calls == []

    mapped = LowerLayers(lambda path: None).prepare(tree, idmap, tmp_path / "c1", "ct")
    assert mapped.mode == "idmapped" and not (tmp_path / "c1").exists()
    assert mapped.monitor_args() == ["--lower", str(tree),
                                     "--lower-uid-map", "100000 7000000 65536",
                                     "--lower-gid-map", "100000 8000000 65536"]

    layers = LowerLayers(refuse)
    copy = layers.prepare(tree, idmap, tmp_path / "c2", "ct")
    assert copy.mode == "copy" and copy.monitor_args() == ["--lower", str(tmp_path / "c2")]
    assert (tmp_path / "c2" / "bin" / "prog").stat().st_uid == 7000000
    assert (tmp_path / "c2").stat().st_uid == 7000000
    layers.prepare(tree, idmap, tmp_path / "c2", "ct")  # a reboot reuses the copy
    assert calls == [str(tree)]  # probed once for the filesystem


def test_limits_on_a_fake_v2_tree(tmp_path: Path) -> None:
    layout = CgroupLayout((Hierarchy(tmp_path, 2, frozenset({"memory", "pids", "cpu"}),
                                     frozenset({"memory", "pids", "cpu"})),))
    group = tmp_path / "xenia" / "u1"
    group.mkdir(parents=True)
    for name, value in (("memory.max", "max"), ("memory.swap.max", "max"),
                        ("pids.max", "max")):
        (group / name).write_text(value + "\n")
    cg = DomainCgroup("u1", layout=layout)
    limits.set_memory(cg, 64 << 20)
    assert (group / "memory.max").read_text() == str(64 << 20)
    assert (group / "memory.swap.max").read_text() == "0"
    assert limits.swap_limit(cg) == 0
    limits.set_pids_max(cg, 100)
    assert limits.pids_max(cg) == 100
    (group / "memory.swap.max").unlink()  # a kernel without swap: memory only
    limits.set_memory(cg, 32 << 20)
    assert (group / "memory.max").read_text() == str(32 << 20)
    assert limits.swap_limit(cg) is None


def test_no_swap_accounting_is_warned_once_and_reported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # A v1 memory hierarchy without memory.memsw.* (a kernel booted without
    # swapaccount=1): the memory limit is set, swap cannot be, and xeniad says so once.
    monkeypatch.setattr(limits, "_warned_no_swap_accounting", False)
    layout = CgroupLayout((Hierarchy(tmp_path, 1, frozenset({"memory", "pids"}),
                                     frozenset({"memory", "pids"})),))
    groups = []
    for name in ("u1", "u2"):
        group = tmp_path / "xenia" / name
        group.mkdir(parents=True)
        (group / "memory.limit_in_bytes").write_text(f"{2**63 - 4096}\n")
        (group / "pids.max").write_text("max\n")
        groups.append(DomainCgroup(name, layout=layout))
    cfg = DomainConfig(name="ct1", type="container", memory=48)
    with caplog.at_level("WARNING", logger="xenia.containers.limits"):
        assert confine.set_limits(groups[0], cfg) is False
        assert limits.set_memory(groups[1], 32 << 20) is False
    assert (tmp_path / "xenia/u1/memory.limit_in_bytes").read_text() == str(48 << 20)
    assert limits.swap_limit(groups[0]) is None
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "no swap accounting" in warnings[0], warnings
    assert "memory.memsw.limit_in_bytes" in warnings[0] and "swapaccount=1" in warnings[0]
    # With the accounting there, swap is held to the limit and nothing more is said.
    (tmp_path / "xenia/u2/memory.memsw.limit_in_bytes").write_text(f"{2**63 - 4096}\n")
    caplog.clear()
    assert limits.set_memory(groups[1], 32 << 20) is True
    assert limits.swap_limit(groups[1]) == 32 << 20 and caplog.records == []
