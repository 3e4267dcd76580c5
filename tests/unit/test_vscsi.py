"""xl's vscsi: parsed and checked (config/vscsi.py), turned into virtio-scsi controllers
and scsi-block/scsi-hd LUNs (qemu/vscsi.py), given to the confined QEMU."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from tests.unit.test_platform_keys import build
from xenia.errors import InvalidConfig, NotFound
from xenia.qemu import vscsi, xldevices


def test_vscsi_entries_parsed() -> None:
    cfg = build('vscsi = ["/dev/sdb, 0:0:0:0", "/srv/d.img,1:0:2:3"]')
    assert cfg.vscsi == [
        {"pdev": "/dev/sdb", "host": 0, "channel": 0, "target": 0, "lun": 0},
        {"pdev": "/srv/d.img", "host": 1, "channel": 0, "target": 2, "lun": 3}]
    assert build('vscsi = ["2:0:0:1, 0:0:1:0"]').vscsi[0]["pdev"] == "2:0:0:1"


@pytest.mark.parametrize(("text", "match"), [
    ('vscsi = ["/dev/sdb"]', "give \"pdev, vdev"),
    ('vscsi = ["sdb, 0:0:0:0"]', "pdev must be an absolute path"),
    ('vscsi = ["/dev/sdb, 0:0:0"]', "vdev must be HOST:CHANNEL:TARGET:LUN"),
    ('vscsi = ["/dev/sdb, 0:1:0:0"]', "channel must be 0"),
    ('vscsi = ["/dev/sdb, 9:0:0:0"]', "host number must be below 4"),
    ('vscsi = ["/dev/sdb, 0:0:256:0"]', "target must be 0-255"),
    ('vscsi = ["/dev/sdb, 0:0:0:0, feature-host"]', "feature-host"),
    ('vscsi = ["/dev/sdb, 0:0:0:0, rw"]', "unknown option 'rw'"),
    ('vscsi = ["/dev/sdb, 0:0:0:0", "/dev/sdc, 0:0:0:0"]', "two vscsi devices have one vdev"),
])
def test_vscsi_refused(text: str, match: str) -> None:
    with pytest.raises(InvalidConfig, match=match):
        build(text)


def test_api_vscsi_values_checked() -> None:
    cfg = build("")
    cfg.vscsi = [{"pdev": "/d", "host": 0, "channel": 0, "target": 0, "lun": 0, "x": 1}]
    with pytest.raises(InvalidConfig, match="bad vscsi entry"):
        xldevices.check(cfg)
    cfg.vscsi = [{"pdev": "/d, 0:0:0:0, x", "host": 0, "channel": 0, "target": 0, "lun": 0}]
    with pytest.raises(InvalidConfig):
        xldevices.check(cfg)


def test_file_becomes_scsi_hd_on_its_hosts_controller(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    img = tmp_path / "d.img"
    img.touch()
    cfg = build(f'vscsi = ["{img}, 1:0:2:3", "{img}, 1:0:0:0"]')
    with caplog.at_level(logging.WARNING):
        args = vscsi.vscsi_args(cfg, {"vscsi1": "rp4"})
    assert args[0] == ("-device", {"driver": "virtio-scsi-pci", "id": "vscsi1", "bus": "rp4"})
    assert args[1] == ("-blockdev", {"driver": "file", "node-name": "vscsi1-2-3",
                                     "filename": str(img)})
    assert args[2] == ("-device", {"driver": "scsi-hd", "id": "vscsi1-2-3-dev",
                                   "bus": "vscsi1.0", "channel": 0, "scsi-id": 2, "lun": 3,
                                   "drive": "vscsi1-2-3"})
    assert len(args) == 5  # one controller for both LUNs
    notices = [r for r in caplog.records if "scsi-hd" in r.getMessage()]
    assert len(notices) == 1, "one notice a domain"


def fake_sys(tmp_path: Path, dev: str, scsi: bool) -> Path:
    """A /sys where the block device `dev` is (or is not) a SCSI LUN with an sg node."""
    st = os.stat(dev)
    node = tmp_path / "sys" / "dev" / "block" / f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    (node / "device").mkdir(parents=True)
    if scsi:
        (node / "device" / "scsi_generic").mkdir()
    return tmp_path / "sys"


def block_device() -> str:
    for name in sorted(os.listdir("/sys/block")):
        if Path(f"/dev/{name}").is_block_device():
            return f"/dev/{name}"
    pytest.fail("this host has no block device in /dev")


def test_scsi_block_only_for_a_device_with_an_sg_node(tmp_path: Path) -> None:
    dev = block_device()
    cfg = build(f'vscsi = ["{dev}, 0:0:0:0"]')
    args = vscsi.vscsi_args(cfg, {}, fake_sys(tmp_path / "a", dev, scsi=True))
    assert args[1][1]["driver"] == "host_device" and args[2][1]["driver"] == "scsi-block"
    args = vscsi.vscsi_args(cfg, {}, fake_sys(tmp_path / "b", dev, scsi=False))
    assert args[1][1]["driver"] == "host_device" and args[2][1]["driver"] == "scsi-hd"


def test_host_hctl_pdev_resolves_to_its_block_device(tmp_path: Path) -> None:
    sys = tmp_path / "sys"
    (sys / "class" / "scsi_device" / "2:0:0:1" / "device" / "block" / "sdc").mkdir(
        parents=True)
    assert vscsi.resolve("2:0:0:1", sys) == "/dev/sdc"
    assert vscsi.resolve("/srv/x", sys) == "/srv/x"
    with pytest.raises(NotFound, match="no block device at that address"):
        vscsi.resolve("3:0:0:0", sys)


def test_pdev_must_exist_and_is_given_to_the_confined_qemu(tmp_path: Path) -> None:
    from xenia.drivers.qemu_confine import QemuConfinement
    from xenia.paths import Paths
    from xenia.store.base import DomainRecord

    img = tmp_path / "d.img"
    cfg = build(f'vscsi = ["{img}, 0:0:0:0"]')
    with pytest.raises(NotFound, match="no such device or file"):
        xldevices.check(cfg)
    img.touch()
    xldevices.check(cfg)
    rec = DomainRecord(uuid="u", name="g", domid=1, config=cfg)
    conf = QemuConfinement(Paths(state=tmp_path / "state", run=tmp_path / "run"))
    write, _ = conf.given_files(rec, None)
    assert str(img) in write


def test_vscsi_pdev_follows_the_path_rule(tmp_path: Path) -> None:
    from xenia.api.pathrule import PathRule
    from xenia.errors import PermissionDenied

    cfg = build('vscsi = ["/dev/sda, 0:0:0:0"]')
    with pytest.raises(PermissionDenied, match="vscsi pdev '/dev/sda'"):
        PathRule([tmp_path], lambda: []).check_config(cfg)


def test_vscsi_controllers_get_root_ports() -> None:
    from xenia.drivers.qemu_devices import QemuDevices
    from xenia.store.base import DomainRecord

    cfg = build('vscsi = ["/a, 0:0:0:0", "/b, 2:0:0:0"]')
    rec = DomainRecord(uuid="u", name="g", domid=1, config=cfg)
    QemuDevices(None, None, None).prepare(rec)  # type: ignore[arg-type]
    slots = rec.runtime["slots"]
    assert "vscsi0" in slots and "vscsi2" in slots
