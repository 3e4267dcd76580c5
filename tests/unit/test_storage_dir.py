"""StorageManager + DirDriver against the real qemu-img in a temporary directory.

Fakes stand in for qemu-img only where a real failure is hard to make (missing binary,
a full disk).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from xenia.errors import AlreadyExists, BackendError, InUse, InvalidConfig, NotFound, NotSupported
from xenia.paths import Paths
from xenia.storage.manager import DEFAULT_POOL, StorageManager
from xenia.storage.qemuimg import QemuImg
from xenia.store.sqlite import SqliteStore

MiB = 2**20


# -- helpers -----------------------------------------------------------------------------
def qemu_io(path: Path, fmt: str, *cmds: str, readonly: bool = False) -> None:
    argv = ["qemu-io", "-f", fmt] + (["-r"] if readonly else [])
    for c in cmds:
        argv += ["-c", c]
    res = subprocess.run([*argv, str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def write(path: Path, fmt: str, pattern: int, offset: int, length: int = MiB) -> None:
    qemu_io(path, fmt, f"write -P {pattern:#x} {offset} {length}")


def holds(path: Path, fmt: str, pattern: int, offset: int, length: int = MiB) -> bool:
    res = subprocess.run(["qemu-io", "-f", fmt, "-r", "-U", "-c",
                          f"read -P {pattern:#x} {offset} {length}", str(path)],
                         capture_output=True, text=True)
    return res.returncode == 0


def info(path: Path, fmt: str) -> dict:  # type: ignore[type-arg]
    out = subprocess.run(["qemu-img", "info", "--output=json", "-U", "-f", fmt, str(path)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def make(root: Path, qemu_img: QemuImg | None = None) -> StorageManager:
    paths = Paths(state=root / "state", run=root / "run")
    m = StorageManager(paths, SqliteStore(paths.db), qemu_img=qemu_img)
    asyncio.run(m.start())
    return m


@pytest.fixture
def sm(tmp_path: Path) -> Iterator[StorageManager]:
    m = make(tmp_path)
    yield m
    asyncio.run(m.stop())
    m.store.close()


def pool_dir(m: StorageManager, pool: str = DEFAULT_POOL) -> Path:
    return Path(m.get_pool(pool).location)


def fake_qemu_img(tmp: Path, stderr: str, partial: bool = True) -> QemuImg:
    """A qemu-img that fails like a full disk does: after writing part of its output."""
    script = tmp / "fake-qemu-img"
    lines = ["#!/bin/sh"]
    lines.append('if [ "$1" = info ]; then exec qemu-img "$@"; fi')
    if partial:
        # The output file is the last argument (create: the one before the size).
        lines.append('for a; do case "$a" in /*) last="$a";; esac; done')
        lines.append('printf partial > "$last"')
    lines.append(f"echo '{stderr}' >&2")
    lines.append("exit 1")
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o755)
    return QemuImg(str(script))


# -- pools -------------------------------------------------------------------------------
def test_start_creates_the_default_pool_once(tmp_path: Path) -> None:
    m = make(tmp_path)
    pools = m.list_pools()
    assert [p.name for p in pools] == [DEFAULT_POOL]
    p = pools[0]
    assert p.state == "active" and p.type == "dir" and p.volumes == 0
    assert p.location == str(tmp_path / "state" / "pools" / "default")
    assert Path(p.location).is_dir() and p.capacity > 0
    rec = m.store.obj_get("pool", DEFAULT_POOL)
    assert rec is not None and rec["config"]["created_dir"] is True
    m.create_volume(DEFAULT_POOL, "keep", "1M")
    asyncio.run(m.start())  # a restart keeps the pool and what it holds
    assert [v.name for v in m.list_volumes()] == ["keep"]
    m.store.close()
    m2 = make(tmp_path)  # a new daemon on the same state
    assert [v.name for v in m2.list_volumes(DEFAULT_POOL)] == ["keep"]


def test_pool_create_list_delete(sm: StorageManager, tmp_path: Path) -> None:
    p = sm.create_pool("fast")
    assert p.location == str(tmp_path / "state" / "pools" / "fast")
    own = tmp_path / "mine" / "deep"
    q = sm.create_pool("mine", path=str(own))
    assert q.location == str(own) and own.is_dir()
    assert stat.S_IMODE(own.stat().st_mode) == 0o700
    assert [x.name for x in sm.list_pools()] == ["default", "fast", "mine"]
    sm.delete_pool("mine")
    # The pool's own directory goes; parents made on the way stay (others may use them).
    assert not own.exists() and own.parent.is_dir()
    sm.delete_pool("fast")
    assert not (tmp_path / "state" / "pools" / "fast").exists()
    assert [x.name for x in sm.list_pools()] == ["default"]
    with pytest.raises(NotFound, match="there is no pool 'fast'"):
        sm.delete_pool("fast")


def test_pool_on_an_existing_directory_keeps_it(sm: StorageManager, tmp_path: Path) -> None:
    d = tmp_path / "existing"
    d.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(d / "old.raw"), "1M"],
                   check=True)
    (d / "notes.txt").write_text("not a volume")
    sm.create_pool("ext", path=str(d))
    assert [v.name for v in sm.list_volumes("ext")] == ["old"]  # adopted
    with pytest.raises(InUse, match="holds 1 volume"):
        sm.delete_pool("ext")
    sm.delete_volume("ext", "old")
    sm.delete_pool("ext")
    assert d.is_dir() and (d / "notes.txt").exists()  # not ours: left in place


@pytest.mark.parametrize("kwargs,error,match", [
    ({"name": "default"}, AlreadyExists, "exists already"),
    ({"name": "../x"}, InvalidConfig, "not a valid pool name"),
    ({"name": "x", "type": "zfs"}, InvalidConfig, "unknown pool type 'zfs'"),
    ({"name": "x", "path": "relative/dir"}, InvalidConfig, "not absolute"),
])
def test_pool_create_refusals(sm: StorageManager, kwargs: dict, error: type,  # type: ignore[type-arg]
                              match: str) -> None:
    before = tree(sm.paths.state / "pools")
    with pytest.raises(error, match=match):
        sm.create_pool(**kwargs)
    assert [p.name for p in sm.list_pools()] == ["default"]
    assert tree(sm.paths.state / "pools") == before


def test_pool_paths_may_not_overlap(sm: StorageManager, tmp_path: Path) -> None:
    default = pool_dir(sm)
    for path in (default, default / "sub", default.parent):
        with pytest.raises(InvalidConfig, match="overlaps"):
            sm.create_pool("x", path=str(path))
    assert [p.name for p in sm.list_pools()] == ["default"]


def test_pool_create_rolls_back(sm: StorageManager, tmp_path: Path) -> None:
    f = tmp_path / "a-file"
    f.write_text("")
    with pytest.raises(InvalidConfig, match="not a directory"):
        sm.create_pool("x", path=str(f))
    assert sm.store.obj_get("pool", "x") is None
    # The first directory is made, the second cannot be (name too long): both undone.
    with pytest.raises(BackendError, match="cannot create"):
        sm.create_pool("y", path=str(tmp_path / "made" / ("n" * 300)))
    assert sm.store.obj_get("pool", "y") is None
    assert not (tmp_path / "made").exists()


def test_missing_pool_directory_is_unavailable_not_fatal(tmp_path: Path) -> None:
    m = make(tmp_path)
    m.create_pool("gone", path=str(tmp_path / "gone"))
    m.store.close()
    (tmp_path / "gone").rmdir()
    m2 = make(tmp_path)
    pools = {p.name: p for p in m2.list_pools()}
    assert pools["default"].state == "active"
    assert pools["gone"].state == "unavailable"
    assert "directory" in (pools["gone"].error or "") and "missing" in (pools["gone"].error or "")
    with pytest.raises(BackendError, match="missing"):
        m2.create_volume("gone", "v", "1M")
    m2.delete_pool("gone")  # forgetting it still works
    assert [p.name for p in m2.list_pools()] == ["default"]


# -- volumes -----------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_create_volume(sm: StorageManager, fmt: str) -> None:
    v = sm.create_volume(DEFAULT_POOL, "disk", "64M", fmt)
    assert v.path == pool_dir(sm) / f"disk.{fmt}"
    assert (v.format, v.virtual_size, v.backing, v.snapshots) == (fmt, 64 * MiB, None, [])
    got = info(v.path, fmt)
    assert got["format"] == fmt and got["virtual-size"] == 64 * MiB
    assert stat.S_IMODE(v.path.stat().st_mode) == 0o600
    assert sm.volume_path(DEFAULT_POOL, "disk") == v.path
    assert sm.get_volume(DEFAULT_POOL, "disk") == v
    assert sm.get_pool(DEFAULT_POOL).volumes == 1


def test_volume_names_are_unique_across_formats(sm: StorageManager) -> None:
    sm.create_volume(DEFAULT_POOL, "d", "1M", "raw")
    before = tree(pool_dir(sm))
    with pytest.raises(AlreadyExists, match="has a volume 'd' already"):
        sm.create_volume(DEFAULT_POOL, "d", "1M", "qcow2")
    assert tree(pool_dir(sm)) == before


@pytest.mark.parametrize("name,size,fmt,error,match", [
    ("../x", "1M", "qcow2", InvalidConfig, "not a valid volume name"),
    ("a/b", "1M", "qcow2", InvalidConfig, "not a valid volume name"),
    (".x", "1M", "qcow2", InvalidConfig, "not a valid volume name"),
    ("x", "1Q", "qcow2", InvalidConfig, "is not a size"),
    ("x", "0", "qcow2", InvalidConfig, "more than 0"),
    ("x", "1000", "qcow2", InvalidConfig, "multiple of 512"),
    ("x", "1M", "vmdk", InvalidConfig, "unknown format 'vmdk'"),
])
def test_bad_volume_input_changes_nothing(sm: StorageManager, name: str, size: str, fmt: str,
                                          error: type, match: str) -> None:
    sm.create_volume(DEFAULT_POOL, "keep", "1M")
    before = tree(sm.paths.state)
    with pytest.raises(error, match=match):
        sm.create_volume(DEFAULT_POOL, name, size, fmt)
    assert tree(sm.paths.state) == before


def test_unknown_pool_and_volume(sm: StorageManager) -> None:
    with pytest.raises(NotFound, match="there is no pool 'nope'"):
        sm.create_volume("nope", "x", "1M")
    with pytest.raises(NotFound, match="no such volume"):
        sm.get_volume(DEFAULT_POOL, "nope")
    with pytest.raises(NotFound, match="no such volume"):
        sm.delete_volume(DEFAULT_POOL, "nope")
    with pytest.raises(NotFound, match="no such volume"):
        sm.clone_volume(DEFAULT_POOL, "nope", "new")
    assert sm.list_volumes() == []


def test_list_skips_foreign_files_and_reports_broken_images(sm: StorageManager) -> None:
    d = pool_dir(sm)
    sm.create_volume(DEFAULT_POOL, "good", "1M")
    (d / "README").write_text("hi")
    (d / "x.img").write_text("")
    (d / ".tmp-y.qcow2.abcd").write_text("")
    (d / "broken.qcow2").write_text("this is no qcow2 image")
    vols = {v.name: v for v in sm.list_volumes()}
    assert sorted(vols) == ["broken", "good"]
    assert vols["good"].error is None
    assert vols["broken"].error and "Failed to read volume 'broken'" in vols["broken"].error


def test_mount_removes_what_a_crash_left(tmp_path: Path) -> None:
    m = make(tmp_path)
    d = pool_dir(m)
    m.create_volume(DEFAULT_POOL, "v", "1M")
    m.create_snapshot(DEFAULT_POOL, "v", "s")
    (d / ".tmp-w.qcow2.0000").write_text("half")
    (d / ".snapshots" / "v" / ".tmp-t.qcow2.0000").write_text("half")
    m.store.close()
    m2 = make(tmp_path)
    assert not (d / ".tmp-w.qcow2.0000").exists()
    assert not (d / ".snapshots" / "v" / ".tmp-t.qcow2.0000").exists()
    assert [v.name for v in m2.list_volumes()] == ["v"]
    assert [s.name for s in m2.list_snapshots(DEFAULT_POOL, "v")] == ["s"]


# -- clone -------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_clone_is_a_thin_overlay(sm: StorageManager, fmt: str) -> None:
    base = sm.create_volume(DEFAULT_POOL, "base", "64M", fmt)
    write(base.path, fmt, 0xAB, 0)
    c = sm.clone_volume(DEFAULT_POOL, "base", "c1")
    assert c.path == pool_dir(sm) / "c1.qcow2"
    assert (c.format, c.backing, c.backing_format, c.virtual_size) == \
        ("qcow2", "base", fmt, 64 * MiB)
    got = info(c.path, "qcow2")
    # Relative, so the pool directory can move (or be mounted elsewhere on another host).
    assert got["backing-filename"] == f"base.{fmt}"
    assert got["backing-filename-format"] == fmt
    assert got["actual-size"] < MiB  # thin: base's data was not copied
    assert holds(c.path, "qcow2", 0xAB, 0)
    write(c.path, "qcow2", 0xCD, 0)
    assert holds(c.path, "qcow2", 0xCD, 0) and holds(base.path, fmt, 0xAB, 0)
    assert sm.list_volumes()[1].backing == "base"


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_full_clone_is_an_independent_copy(sm: StorageManager, fmt: str) -> None:
    base = sm.create_volume(DEFAULT_POOL, "base", "64M", fmt)
    write(base.path, fmt, 0xAB, 0)
    c = sm.clone_volume(DEFAULT_POOL, "base", "c1", linked=False)
    assert (c.path, c.format, c.backing) == (pool_dir(sm) / f"c1.{fmt}", fmt, None)
    assert holds(c.path, fmt, 0xAB, 0)
    write(c.path, fmt, 0xCD, 0)
    assert holds(base.path, fmt, 0xAB, 0)
    # Nothing relies on base: it may be written and deleted.
    assert sm.dependents_of(base.path) == []
    sm.delete_volume(DEFAULT_POOL, "base")
    assert holds(c.path, fmt, 0xCD, 0)


def test_a_backing_volume_cannot_be_deleted(sm: StorageManager) -> None:
    sm.create_volume(DEFAULT_POOL, "base", "8M")
    sm.clone_volume(DEFAULT_POOL, "base", "c1")
    sm.clone_volume(DEFAULT_POOL, "c1", "c2")
    before = tree(pool_dir(sm))
    with pytest.raises(InUse, match=r"'base'.*c1 is backed by it"):
        sm.delete_volume(DEFAULT_POOL, "base")
    with pytest.raises(InUse, match="c2 is backed by it"):
        sm.delete_volume(DEFAULT_POOL, "c1")
    assert tree(pool_dir(sm)) == before
    assert sm.dependents_of(pool_dir(sm) / "base.qcow2") == ["c1"]
    assert sm.dependents_of("/no/such/file") == []
    sm.delete_volume(DEFAULT_POOL, "c2")
    sm.delete_volume(DEFAULT_POOL, "c1")
    sm.delete_volume(DEFAULT_POOL, "base")
    assert sm.list_volumes() == []


def test_clone_refuses_a_taken_name(sm: StorageManager) -> None:
    sm.create_volume(DEFAULT_POOL, "a", "1M")
    sm.create_volume(DEFAULT_POOL, "b", "1M", "raw")
    with pytest.raises(AlreadyExists):
        sm.clone_volume(DEFAULT_POOL, "a", "b")
    with pytest.raises(InvalidConfig, match="not a valid volume name"):
        sm.clone_volume(DEFAULT_POOL, "a", "../b")
    assert [v.name for v in sm.list_volumes()] == ["a", "b"]


# -- resize ------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_resize(sm: StorageManager, fmt: str) -> None:
    v = sm.create_volume(DEFAULT_POOL, "v", "64M", fmt)
    write(v.path, fmt, 0xAB, 0)
    assert sm.resize_volume(DEFAULT_POOL, "v", "128M").virtual_size == 128 * MiB
    assert sm.resize_volume(DEFAULT_POOL, "v", "+64M").virtual_size == 192 * MiB
    assert info(v.path, fmt)["virtual-size"] == 192 * MiB
    assert holds(v.path, fmt, 0xAB, 0)
    assert sm.resize_volume(DEFAULT_POOL, "v", "192M").virtual_size == 192 * MiB  # no-op
    for size in ("64M", "-1M"):
        with pytest.raises(InvalidConfig, match="needs --shrink"):
            sm.resize_volume(DEFAULT_POOL, "v", size)
    assert info(v.path, fmt)["virtual-size"] == 192 * MiB
    assert sm.resize_volume(DEFAULT_POOL, "v", "-64M", shrink=True).virtual_size == 128 * MiB
    assert sm.resize_volume(DEFAULT_POOL, "v", "32M", shrink=True).virtual_size == 32 * MiB
    assert holds(v.path, fmt, 0xAB, 0)
    with pytest.raises(InvalidConfig, match="no size at all"):
        sm.resize_volume(DEFAULT_POOL, "v", "-32M", shrink=True)
    with pytest.raises(InvalidConfig, match="is not a size"):
        sm.resize_volume(DEFAULT_POOL, "v", "+lots")


def test_a_backing_volume_is_not_shrunk(sm: StorageManager) -> None:
    sm.create_volume(DEFAULT_POOL, "base", "64M")
    sm.clone_volume(DEFAULT_POOL, "base", "c")
    with pytest.raises(InUse, match="c are backed by it|while c"):
        sm.resize_volume(DEFAULT_POOL, "base", "32M", shrink=True)
    assert sm.resize_volume(DEFAULT_POOL, "base", "128M").virtual_size == 128 * MiB


# -- snapshots ---------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_snapshot_is_a_read_only_copy_and_leaves_the_volume_alone(sm: StorageManager,
                                                                  fmt: str) -> None:
    v = sm.create_volume(DEFAULT_POOL, "v", "64M", fmt)
    write(v.path, fmt, 0xAB, 0)
    before = digest(v.path)
    s = sm.create_snapshot(DEFAULT_POOL, "v", "s1")
    assert digest(v.path) == before  # the volume's file is not touched
    assert s.path == pool_dir(sm) / ".snapshots" / "v" / f"s1.{fmt}"
    assert (s.name, s.volume, s.format, s.virtual_size) == ("s1", "v", fmt, 64 * MiB)
    assert stat.S_IMODE(s.path.stat().st_mode) == 0o444
    assert abs(s.created - time.time()) < 60
    assert holds(s.path, fmt, 0xAB, 0)
    write(v.path, fmt, 0xCD, 0)  # later writes do not reach the snapshot
    assert holds(s.path, fmt, 0xAB, 0) and holds(v.path, fmt, 0xCD, 0)
    assert sm.get_volume(DEFAULT_POOL, "v").snapshots == ["s1"]
    assert [x.name for x in sm.list_snapshots(DEFAULT_POOL, "v")] == ["s1"]
    assert [x.name for x in sm.list_volumes()] == ["v"]  # a snapshot is no volume
    with pytest.raises(AlreadyExists, match="has a snapshot 's1' already"):
        sm.create_snapshot(DEFAULT_POOL, "v", "s1")
    with pytest.raises(InvalidConfig, match="not a valid snapshot name"):
        sm.create_snapshot(DEFAULT_POOL, "v", "../s2")

    restored = sm.restore_snapshot(DEFAULT_POOL, "v", "s1")
    assert holds(v.path, fmt, 0xAB, 0) and restored.snapshots == ["s1"]
    assert stat.S_IMODE(v.path.stat().st_mode) == 0o600

    sm.delete_snapshot(DEFAULT_POOL, "v", "s1")
    assert sm.list_snapshots(DEFAULT_POOL, "v") == []
    assert not (pool_dir(sm) / ".snapshots").exists()
    with pytest.raises(NotFound, match="no such snapshot"):
        sm.delete_snapshot(DEFAULT_POOL, "v", "s1")


def test_snapshot_of_a_clone_stays_thin(sm: StorageManager) -> None:
    base = sm.create_volume(DEFAULT_POOL, "base", "64M")
    write(base.path, "qcow2", 0xAB, 0, 4 * MiB)
    c = sm.clone_volume(DEFAULT_POOL, "base", "c")
    write(c.path, "qcow2", 0xCD, 4 * MiB)
    s = sm.create_snapshot(DEFAULT_POOL, "c", "s")
    got = info(s.path, "qcow2")
    assert got["backing-filename"] == "../../base.qcow2"
    assert got["actual-size"] < 3 * MiB  # c's 1 MiB, not base's 4 MiB as well
    assert holds(s.path, "qcow2", 0xAB, 0, 4 * MiB) and holds(s.path, "qcow2", 0xCD, 4 * MiB)
    # The snapshot reads from base too: base stays until the snapshot is gone.
    sm.delete_volume(DEFAULT_POOL, "c")  # takes its snapshot along
    assert not s.path.exists()
    sm.delete_volume(DEFAULT_POOL, "base")


def test_snapshot_keeps_base_alive(sm: StorageManager) -> None:
    sm.create_volume(DEFAULT_POOL, "base", "8M")
    sm.clone_volume(DEFAULT_POOL, "base", "c")
    sm.create_snapshot(DEFAULT_POOL, "c", "s")
    with pytest.raises(InUse, match=r"c, c@s are backed by it"):
        sm.delete_volume(DEFAULT_POOL, "base")


def test_restore_a_clone_keeps_its_backing(sm: StorageManager) -> None:
    base = sm.create_volume(DEFAULT_POOL, "base", "64M")
    write(base.path, "qcow2", 0xAB, 0)
    c = sm.clone_volume(DEFAULT_POOL, "base", "c")
    sm.create_snapshot(DEFAULT_POOL, "c", "s")
    write(c.path, "qcow2", 0xEE, 0)
    r = sm.restore_snapshot(DEFAULT_POOL, "c", "s")
    assert r.backing == "base"
    assert info(c.path, "qcow2")["backing-filename"] == "base.qcow2"
    assert holds(c.path, "qcow2", 0xAB, 0)


def test_restore_refuses_a_volume_with_clones(sm: StorageManager) -> None:
    sm.create_volume(DEFAULT_POOL, "base", "8M")
    sm.create_snapshot(DEFAULT_POOL, "base", "s")
    sm.clone_volume(DEFAULT_POOL, "base", "c")
    with pytest.raises(InUse, match="would see their data change"):
        sm.restore_snapshot(DEFAULT_POOL, "base", "s")


# -- in use by a domain --------------------------------------------------------------------
def test_volumes_in_use_by_a_domain_are_protected(sm: StorageManager) -> None:
    v = sm.create_volume(DEFAULT_POOL, "v", "8M")
    sm.create_snapshot(DEFAULT_POOL, "v", "s")
    seen: list[str] = []

    def in_use(path: str) -> str | None:
        seen.append(path)
        return "web" if path == str(v.path) else None

    sm.set_in_use_check(in_use)
    before = tree(pool_dir(sm))
    for call in (lambda: sm.delete_volume(DEFAULT_POOL, "v"),
                 lambda: sm.resize_volume(DEFAULT_POOL, "v", "16M"),
                 lambda: sm.clone_volume(DEFAULT_POOL, "v", "c"),
                 lambda: sm.create_snapshot(DEFAULT_POOL, "v", "s2"),
                 lambda: sm.restore_snapshot(DEFAULT_POOL, "v", "s")):
        with pytest.raises(InUse, match=r"domain 'web' uses .*v\.qcow2; "):
            call()
    assert tree(pool_dir(sm)) == before
    assert sm.describe_volume(sm.get_volume(DEFAULT_POOL, "v"))["used_by"] == "web"
    assert str(v.path) in seen
    sm.set_in_use_check(None)
    sm.delete_volume(DEFAULT_POOL, "v")


def test_qemu_locks_stop_a_snapshot_of_an_open_image(sm: StorageManager) -> None:
    # Even without the in-use check, QEMU's image lock keeps a copy from being taken
    # while a writer holds the image: the snapshot can never be torn.
    v = sm.create_volume(DEFAULT_POOL, "v", "8M")
    holder = subprocess.Popen(["qemu-io", "-f", "qcow2", "-c", "sleep 20000", str(v.path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Wait until qemu-io holds the image open and locked. QEMU's image locks are OFD
        # locks on single bytes, listed in the fd's fdinfo: 100 + n while it holds
        # permission n, 200 + n while it shares it with no one; 1 is write. Probing with
        # `qemu-img info` instead would race: its own shared lock can make qemu-io's
        # write lock fail, and qemu-io would exit.
        deadline = time.monotonic() + 20

        def locked_bytes() -> set[int]:
            try:
                for fd in Path(f"/proc/{holder.pid}/fd").iterdir():
                    if os.path.realpath(fd) == os.path.realpath(v.path):
                        info = Path(f"/proc/{holder.pid}/fdinfo/{fd.name}").read_text()
                        # "lock: 1: OFDLCK ADVISORY READ -1 fe:00:123 100 101": bytes 100-101
                        ranges = [line.split()[-2:] for line in info.splitlines()
                                  if line.startswith("lock:")]
                        return {b for first, last in ranges if last.isdigit()
                                for b in range(int(first), int(last) + 1)}
            except OSError:
                pass
            return set()

        while not {101, 201} <= locked_bytes():
            assert holder.poll() is None, "qemu-io could not open the image"
            assert time.monotonic() < deadline, "qemu-io did not lock the image"
            time.sleep(0.05)
        assert holder.poll() is None, "qemu-io could not lock the image"
        assert subprocess.run(["qemu-img", "info", str(v.path)],
                              capture_output=True).returncode != 0, "no lock on the image"
        # image_info works all the same: it passes -U (force-share).
        assert sm.image_info(v.path, "qcow2")["virtual-size"] == 8 * MiB
        assert [x.name for x in sm.list_volumes()] == ["v"]
        with pytest.raises(BackendError, match="lock"):
            sm.create_snapshot(DEFAULT_POOL, "v", "s")
        assert not (pool_dir(sm) / ".snapshots").exists()
    finally:
        holder.kill()
        holder.wait()


# -- for the domain engine -----------------------------------------------------------------
def test_image_info_and_volume_at(sm: StorageManager, tmp_path: Path) -> None:
    v = sm.create_volume(DEFAULT_POOL, "v", "8M", "raw")
    assert sm.image_info(v.path, "raw")["format"] == "raw"
    assert sm.image_info(str(v.path))["virtual-size"] == 8 * MiB
    assert sm.volume_at(v.path) == ("default", "v")
    assert sm.volume_at(tmp_path / "elsewhere.raw") is None
    with pytest.raises(NotFound, match="does not exist"):
        sm.image_info(tmp_path / "nope.qcow2")


# -- qemu-img failures ---------------------------------------------------------------------
def test_qemu_img_missing(tmp_path: Path) -> None:
    m = make(tmp_path, qemu_img=QemuImg("no-such-qemu-img-here"))
    with pytest.raises(NotSupported, match=r"apt-get install qemu-utils"):
        m.create_volume(DEFAULT_POOL, "v", "1M")
    assert tree(pool_dir(m)) == []


def test_disk_full_surfaces_qemu_img_and_leaves_nothing(tmp_path: Path) -> None:
    enospc = "qemu-img: /x: error while writing at byte 2097152: No space left on device"
    m = make(tmp_path)
    v = m.create_volume(DEFAULT_POOL, "v", "8M")
    m.qemu_img = fake_qemu_img(tmp_path, enospc)
    before = tree(pool_dir(m))
    content = digest(v.path)
    for call in (lambda: m.create_volume(DEFAULT_POOL, "w", "1M"),
                 lambda: m.clone_volume(DEFAULT_POOL, "v", "c"),
                 lambda: m.create_snapshot(DEFAULT_POOL, "v", "s")):
        with pytest.raises(BackendError) as e:
            call()
        assert e.value.message.startswith("Failed to ")
        assert "No space left on device" in e.value.message
        assert "qemu-img: " not in e.value.message
        assert tree(pool_dir(m)) == before
    assert digest(v.path) == content
    m.qemu_img = QemuImg()
    m.create_snapshot(DEFAULT_POOL, "v", "s")
    m.qemu_img = fake_qemu_img(tmp_path, enospc)
    before = tree(pool_dir(m))
    content = digest(v.path)
    with pytest.raises(BackendError, match="No space left"):
        m.restore_snapshot(DEFAULT_POOL, "v", "s")
    assert tree(pool_dir(m)) == before and digest(v.path) == content
