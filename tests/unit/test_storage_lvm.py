"""LVM pool: the argv of every operation (golden files) and the device-mapper refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.goldens import compare
from xenia.errors import NotSupported
from xenia.storage import lvm
from xenia.storage.lvm import LvmCommands, LvmDriver, dm_available, snap_lv
from xenia.storage.qemuimg import QemuImg

GiB = 2**30


def _script(cmds: LvmCommands) -> str:
    argvs = [
        cmds.vgs(), cmds.lvs(),
        cmds.create("web", 10 * GiB),
        cmds.snapshot("web", snap_lv("web", "before"), ["xenia_snap", "xenia_of_web"], 10 * GiB),
        cmds.snapshot("web", "web2", [], 10 * GiB),
        cmds.activate(snap_lv("web", "before")),
        cmds.resize("web", 12 * GiB, False),
        cmds.resize("web", 8 * GiB, True),
        cmds.copy(Path("/dev/vg0/web_snap_before"), Path("/dev/vg0/web")),
        cmds.remove(snap_lv("web", "before")),
        cmds.remove("web"),
    ]
    return "".join(" ".join(a) + "\n" for a in argvs)


def test_linear_commands() -> None:
    compare("lvm-linear.cmds", _script(LvmCommands("vg0")))


def test_thin_commands() -> None:
    compare("lvm-thin.cmds", _script(LvmCommands("vg0", thin_pool="tpool")))


def test_no_command_takes_a_name_as_an_option() -> None:
    # A volume group whose name starts with '-' must not turn into an option.
    assert LvmCommands("-x").vgs()[-2:] == ["--", "-x"]
    assert LvmCommands("-x").create("v", GiB)[-2:] == ["--", "-x"]


def test_dm_available_reads_proc_misc(tmp_path: Path) -> None:
    misc = tmp_path / "misc"
    misc.write_text("229 fuse\n236 device-mapper\n")
    assert dm_available(tmp_path / "none", misc)
    misc.write_text("229 fuse\n")
    assert not dm_available(tmp_path / "none", misc)
    # A node without a driver behind it (libdevmapper mknods one anyway) is no proof;
    # /dev/null stands for a node that opens.
    assert dm_available(Path("/dev/null"), misc)


def test_create_refuses_at_once_without_device_mapper(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[list[str]] = []
    monkeypatch.setattr(lvm, "dm_available", lambda: False)
    drv = LvmDriver("p", {"vg": "vg0"}, QemuImg())
    monkeypatch.setattr(drv, "_run", lambda argv, doing, timeout=0: ran.append(argv) or "")
    with pytest.raises(NotSupported, match="no device-mapper"):
        drv.create()
    assert ran == []  # refused before any LVM tool ran
