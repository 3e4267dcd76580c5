"""The pieces every image builder shares (xenia.images.cache)."""

from __future__ import annotations

from pathlib import Path

import pytest

from xenia.errors import BackendError, InvalidConfig, NotFound
from xenia.images.cache import build_dir, build_errors, build_lock, replace_dir
from xenia.images.debs import DebError


class FormatError(ValueError):
    pass


@pytest.mark.parametrize(("raised", "want", "message"), [
    (DebError("linux-image-foo is unknown to apt"), NotFound,
     "Failed building image tiny: linux-image-foo is unknown to apt"),
    (DebError("cannot reach the Debian mirror"), BackendError,
     "Failed building image tiny: cannot reach the Debian mirror"),
    (OSError(28, "No space left on device"), BackendError,
     "Failed building image tiny: [Errno 28] No space left on device"),
    (FormatError("bad FAT"), BackendError, "Failed building image tiny: bad FAT"),
    (InvalidConfig("as it was"), InvalidConfig, "as it was"),
])  # fmt: skip
def test_build_errors_name_the_image(raised: Exception, want: type[Exception],
                                     message: str) -> None:
    with pytest.raises(want) as info, build_errors("image tiny", FormatError):
        raise raised
    assert str(info.value) == message
    assert type(info.value) is want


def test_build_errors_leave_other_exceptions_alone() -> None:
    # A bug in a builder must show as itself, not as a build failure.
    with pytest.raises(KeyError), build_errors("image tiny"):
        raise KeyError("x")
    with pytest.raises(ValueError), build_errors("image tiny"):  # not a listed cause
        raise ValueError("x")


def test_build_dir_removes_leftovers_and_itself(tmp_path: Path) -> None:
    (tmp_path / ".tiny-build-dead").mkdir()
    (tmp_path / ".tiny-old-123").mkdir()
    (tmp_path / ".rootfs-old-1").mkdir()
    (tmp_path / ".tiny.lock").write_text("")
    with build_lock(tmp_path, "tiny"), build_dir(tmp_path, "tiny") as tmp:
        assert tmp.is_dir() and tmp.name.startswith(".tiny-build-")
        (tmp / "file").write_text("x")
        left = sorted(p.name for p in tmp_path.iterdir() if p != tmp)
    assert left == [".rootfs-old-1", ".tiny.lock"]
    assert not tmp.exists()
    with pytest.raises(RuntimeError), build_dir(tmp_path, "rootfs", stale="build-*") as tmp:
        raise RuntimeError("build failed")
    assert not tmp.exists()
    assert (tmp_path / ".rootfs-old-1").is_dir()  # an old tree containers may still use


def test_replace_dir_swaps_in_the_new_image(tmp_path: Path) -> None:
    target, new = tmp_path / "tiny", tmp_path / ".tiny-build-1"
    target.mkdir()
    (target / "v").write_text("1")
    new.mkdir()
    (new / "v").write_text("2")
    replace_dir(new, target, "tiny")
    assert (target / "v").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]
