"""Block and LVM pool creation: each type's options, and refusals that leave nothing."""

from __future__ import annotations

import pytest

from tests.unit import test_storage_dir
from xenia.errors import InvalidConfig, NotFound, NotSupported
from xenia.storage import lvm
from xenia.storage.manager import StorageManager

# The dir tests' StorageManager fixture, on a fresh state directory.
sm = test_storage_dir.sm


def names(sm: StorageManager) -> list[str]:
    return sorted(p.name for p in sm.list_pools())


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"type": "block"}, "needs --device"),
    ({"type": "block", "device": "/dev/null", "path": "/tmp"}, "takes no --path"),
    ({"type": "block", "device": "dev/sdb"}, "not an absolute path"),
    ({"type": "block", "device": "/dev/null"}, "not a block device"),
    ({"type": "lvm"}, "needs --vg"),
    ({"type": "lvm", "vg": "vg0", "device": "/dev/sdb"}, "takes no --device"),
    ({"type": "dir", "vg": "vg0"}, "takes no --vg"),
    ({"type": "zfs"}, "unknown pool type"),
])
def test_bad_options_are_refused(sm: StorageManager, kwargs: dict[str, str],
                                 match: str) -> None:
    before = names(sm)
    with pytest.raises(InvalidConfig, match=match):
        sm.create_pool("p", **kwargs)
    assert names(sm) == before


def test_a_missing_device(sm: StorageManager) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        sm.create_pool("p", type="block", device="/dev/no-such-disk")


def test_lvm_without_device_mapper_leaves_no_pool(sm: StorageManager,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lvm, "dm_available", lambda: False)
    before = names(sm)
    with pytest.raises(NotSupported, match="no device-mapper"):
        sm.create_pool("lv", type="lvm", vg="vg0")
    assert names(sm) == before
