"""A rename is durable only once its directory is fsynced: files.write_atomic and
savefile.publish fsync the directory, after the rename (os.fsync watched)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xenia import files
from xenia.migration import savefile


@pytest.fixture
def fsynced(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """(path, is a directory) of every fd os.fsync is given, in order."""
    calls: list[tuple[str, bool]] = []
    real = os.fsync

    def watch(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        calls.append((path, os.path.isdir(path)))
        real(fd)

    monkeypatch.setattr(os, "fsync", watch)
    return calls


def test_write_atomic_fsyncs_the_file_then_the_directory_after_the_rename(
        tmp_path: Path, fsynced: list[tuple[str, bool]]) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    files.write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert fsynced[-1] == (str(tmp_path), True)  # last: the rename is in place
    assert any(not is_dir for _, is_dir in fsynced[:-1])  # the data, before it


def test_savefile_publish_fsyncs_the_directory(tmp_path: Path,
                                               fsynced: list[tuple[str, bool]]) -> None:
    tmp, target = tmp_path / ".x.tmp", tmp_path / "x.save"
    tmp.write_bytes(b"image")
    savefile.publish(tmp, target)
    assert target.read_bytes() == b"image" and not tmp.exists()
    assert fsynced == [(str(tmp_path), True)]
