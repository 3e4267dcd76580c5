"""Paths given to external tools and temporary files: qemu-img gets only absolute paths,
after `--` (a real qemu-img, with a file whose name starts with '-'); temporary files are
created exclusively under unpredictable names, never through a planted symlink, with
their final mode, and renamed into place."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from xenia import files
from xenia.errors import InvalidConfig
from xenia.storage import qemuimg
from xenia.storage.dir import DirDriver
from xenia.storage.qemuimg import QemuImg

needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None,
                                    reason="qemu-img is installed by scripts/install-deps.sh")


@needs_qemu_img
def test_qemu_img_takes_names_that_look_like_options(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # The absolute-path check is lifted and the names are relative: only `--` keeps
    # "-f" and "--help" from being read as options (an absolute path never starts '-').
    monkeypatch.setattr(qemuimg, "absolute", lambda path, doing: str(path))
    monkeypatch.chdir(tmp_path)
    img = QemuImg()
    dash = Path("-f")
    img.create(dash, "qcow2", 1 << 20, "to create")
    assert img.info(dash, "qcow2", "to read")["format"] == "qcow2"
    img.resize(dash, "qcow2", 2 << 20, False, "to resize")
    copy = Path("--help")
    img.convert(dash, "qcow2", copy, "qcow2", "to copy")
    assert img.info(copy, "qcow2", "to read")["virtual-size"] == 2 << 20


@pytest.mark.parametrize("path", ["-f", "relative.qcow2", 'json:{"driver":"file"}',
                                  "nbd:localhost:10809", "./x"])
def test_qemu_img_refuses_paths_that_are_not_absolute(path: str) -> None:
    img = QemuImg()
    for call in (lambda: img.create(Path(path), "raw", 1, "to create"),
                 lambda: img.resize(Path(path), "raw", 1, False, "to resize"),
                 lambda: img.convert(Path("/x"), "raw", Path(path), "raw", "to copy")):
        with pytest.raises(InvalidConfig, match="not an absolute path"):
            call()


def test_create_private_never_follows_a_planted_name(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    victim = tmp_path / "victim"
    victim.write_text("root's file")
    names = iter(["aaaa", "aaaa", "bbbb"])
    monkeypatch.setattr(files.secrets, "token_hex", lambda n: next(names))
    (tmp_path / ".x.aaaa.tmp").symlink_to(victim)  # an attacker guessed the first name
    fd, path = files.create_private(tmp_path, ".x.", ".tmp", 0o600)
    os.close(fd)
    assert path == str(tmp_path / ".x.bbbb.tmp")
    assert victim.read_text() == "root's file"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_write_atomic_uses_random_names_and_final_mode(tmp_path: Path) -> None:
    target = tmp_path / "key.pem"
    old_fixed = tmp_path / "key.pem.tmp"
    victim = tmp_path / "victim"
    victim.write_text("keep")
    old_fixed.symlink_to(victim)  # where the old code wrote: not used any more
    files.write_atomic(target, b"secret", 0o600)
    assert target.read_bytes() == b"secret" and victim.read_text() == "keep"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.pem", "key.pem.tmp", "victim"]


@needs_qemu_img
def test_pool_images_are_written_to_private_temporaries(tmp_path: Path) -> None:
    pool = DirDriver("p", {"path": str(tmp_path)}, QemuImg())
    seen: list[tuple[str, int]] = []
    real = pool.qemu_img.create

    def watch(path: Path, *a: object, **kw: object) -> None:
        st = os.lstat(path)  # made before qemu-img runs: a regular file of ours, 0600
        seen.append((path.name, stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else -1))
        real(path, *a, **kw)  # type: ignore[arg-type]

    pool.qemu_img.create = watch  # type: ignore[method-assign]
    info = pool.create_volume("v", 1 << 20, "qcow2")
    assert info.path == tmp_path / "v.qcow2"
    assert stat.S_IMODE(os.stat(info.path).st_mode) == 0o600
    (name, mode), = seen
    assert name.startswith(".tmp-v.qcow2.") and len(name) == len(".tmp-v.qcow2.") + 16
    assert mode == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["v.qcow2"]


def test_read_nofollow_reads_no_more_than_its_limit_of_a_growing_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A console log QEMU appends to while xeniad reads its tail: the read stops at
    `limit` bytes, however fast the file grows (memory stays bounded)."""
    from xenia.hostos import procfs

    log = tmp_path / "console.log"
    log.write_bytes(b"a" * 100)
    real_pread, real_read = os.pread, os.read
    grown = 0

    def grow() -> None:
        nonlocal grown
        if grown < 50:  # QEMU writes 1 MiB more before each read
            with log.open("ab") as f:
                f.write(b"b" * (1 << 20))
            grown += 1

    def pread(fd: int, n: int, offset: int) -> bytes:
        grow()
        return real_pread(fd, n, offset)

    def read(fd: int, n: int) -> bytes:
        grow()
        return real_read(fd, n)

    monkeypatch.setattr(procfs.os, "pread", pread)
    monkeypatch.setattr(procfs.os, "read", read)
    data = procfs.read_nofollow(log, 64)
    assert data == b"a" * 64 and grown == 1  # one read, of what was there
    # Links and non-regular files are still refused.
    (tmp_path / "link").symlink_to(log)
    with pytest.raises(OSError):
        procfs.read_nofollow(tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OSError, match="not a regular file"):
        procfs.read_nofollow(tmp_path / "fifo")
