"""cpuid, nestedhvm, vnuma, usbctrl/usbdev/usbversion, soundhw, keymap and pvgrub firmware:
parsed and checked (config/xldevices.py, config/cpuid.py), turned into QEMU arguments
(qemu/xldevices.py, qemu/cmdline.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_platform_keys import argv, build, devices
from xenia.config.cpuid import parse_cpuid
from xenia.devices.layout import Layout
from xenia.errors import BackendError, InvalidConfig, NotFound, NotSupported
from xenia.qemu import xldevices


def cpu_arg(args: list[str]) -> str:
    return args[args.index("-cpu") + 1]


# --- cpuid ---------------------------------------------------------------------------


def test_cpuid_libxl_form_sets_and_clears_qemu_flags() -> None:
    cfg = build('cpuid = "host,aes=1,sse3=0,lahfsahf=0,tm=x,avx=k"')
    assert cfg.cpuid == ["aes=on", "pni=off", "lahf-lm=off"]
    assert cpu_arg(argv(cfg)) == "qemu64,aes=on,pni=off,lahf-lm=off"
    assert cpu_arg(argv(cfg, "kvm")).startswith("host,aes=on,pni=off")


def test_cpuid_xend_list_form() -> None:
    # leaf 1 ecx: bit 25 (aes) set, bit 0 (sse3) cleared; leaf 0x80000001 edx bit 27 set.
    ecx = "x" * 6 + "1" + "x" * 24 + "0"
    cfg = build(f'cpuid = ["0x1:ecx={ecx}", "0x80000001:edx=xxxx1{"x" * 27}"]')
    assert cfg.cpuid == ["aes=on", "pni=off", "rdtscp=on"]


def test_cpuid_unknown_bits_refused_by_name() -> None:
    with pytest.raises(InvalidConfig, match="unknown CPUID bit 'frobnicate'"):
        build('cpuid = "host,frobnicate=1"')
    with pytest.raises(InvalidConfig, match="leaf 0x1 ecx bit 11 is not a bit QEMU"):
        build(f'cpuid = ["0x1:ecx={"x" * 20}1{"x" * 11}"]')
    with pytest.raises(InvalidConfig, match="'aes=2': a value is 1, 0"):
        parse_cpuid("host,aes=2")
    with pytest.raises(InvalidConfig, match="g.cfg:2"):
        build('cpuid = ["0x1:ecx=short"]')


def test_cpuid_last_setting_wins() -> None:
    assert parse_cpuid("aes=1,aes=0") == ["aes=off"]


# --- nestedhvm ----------------------------------------------------------------------


def test_nestedhvm_tcg_gives_svm_and_off_clears_both() -> None:
    assert cpu_arg(argv(build("nestedhvm = 1"))) == "qemu64,svm=on"
    assert cpu_arg(argv(build("nestedhvm = 0"))) == "qemu64,vmx=off,svm=off"
    assert cpu_arg(argv(build("nestedhvm = 1\ncpuid = 'svm=0'"))) == "qemu64,svm=off"
    assert cpu_arg(argv(build(""))) == "qemu64"


def test_nestedhvm_kvm_needs_nested_module(tmp_path: Path) -> None:
    cfg = build("nestedhvm = 1")
    with pytest.raises(NotSupported, match="nested=N.*modprobe kvm_"):
        xldevices.check_nested(cfg, "kvm", sys=tmp_path)
    for module in ("kvm_intel", "kvm_amd"):
        (tmp_path / module / "parameters").mkdir(parents=True)
        (tmp_path / module / "parameters" / "nested").write_text("Y\n")
    xldevices.check_nested(cfg, "kvm", sys=tmp_path)
    assert xldevices.nested_flag("kvm", "GenuineIntel") == "vmx"
    assert xldevices.nested_flag("kvm", "AuthenticAMD") == "svm"


# --- vnuma --------------------------------------------------------------------------

VNUMA = ('memory = 512\nvcpus = 3\nvnuma = [["pnode=0", "size=256", "vcpus=0-1", '
         '"vdistances=10,30"], ["size=256", "vcpus=2", "vdistances=30,10"]]')


def test_vnuma_nodes_memory_cpus_distances() -> None:
    cfg = build(VNUMA)
    assert [n["size"] for n in cfg.vnuma] == [256, 256]
    args = argv(cfg)
    numa = [args[i + 1] for i, a in enumerate(args) if a == "-numa"]
    assert numa == ["node,nodeid=0,memdev=vnode0", "cpu,node-id=0,socket-id=0",
                    "cpu,node-id=0,socket-id=1", "node,nodeid=1,memdev=vnode1",
                    "cpu,node-id=1,socket-id=2", "dist,src=0,dst=1,val=30",
                    "dist,src=1,dst=0,val=30"]
    objs = [json.loads(args[i + 1]) for i, a in enumerate(args) if a == "-object"]
    assert {"qom-type": "memory-backend-ram", "id": "vnode1", "size": 256 << 20} in objs


@pytest.mark.parametrize(("text", "match"), [
    ('memory = 512\nvnuma = [["size=256", "vcpus=0"]]', "add up to 256 MiB, not the"),
    ('vcpus = 2\nmemory = 2\nvnuma = [["size=1", "vcpus=0"], ["size=1", "vcpus=0"]]',
     "each of vCPUs 0-1"),
    ('memory = 2\nvnuma = [["size=1", "vcpus=0", "vdistances=10,20"], ["size=1"]]',
     "node 1 needs size= and vcpus="),
    ('vnuma = [["size=128", "vcpus=0", "vdistances=20"]]', "10 to itself"),
    ('vnuma = [["size=128", "vcpus=0", "colour=red"]]', "bad item 'colour=red'"),
    ('vnuma = ["size=128"]', "a list of nodes"),
])
def test_vnuma_refused(text: str, match: str) -> None:
    with pytest.raises(InvalidConfig, match=match):
        build(text)


# --- USB ----------------------------------------------------------------------------


def test_usbctrl_and_usbdev_placed_on_ports() -> None:
    cfg = build('usbctrl = ["version=3,ports=2", "version=2"]\n'
                'usbdev = ["type=tablet", "type=mouse", "type=keyboard", '
                '"type=hostdev,hostbus=1,hostaddr=0x4,controller=1,port=5"]')
    assert cfg.usbctrl == [{"version": 3, "ports": 2, "devid": 0},
                           {"version": 2, "ports": 6, "devid": 1}]
    assert [(d["controller"], d["port"]) for d in cfg.usbdev] == [(0, 1), (0, 2), (1, 1),
                                                                   (1, 5)]
    layout = Layout(2)
    layout.take("usbctrl0")
    devs = [d for _, d in xldevices.usb_args(cfg, layout.slots)]
    assert devs[0] == {"driver": "qemu-xhci", "id": "usbctrl0", "bus": "rp0", "p2": 2, "p3": 2}
    assert devs[1]["driver"] == "usb-ehci"
    assert devs[-1] == {"driver": "usb-host", "id": "usbdev1-5", "bus": "usbctrl1.0",
                        "port": "5", "hostbus": 1, "hostaddr": 4}


def test_usbdev_alone_gets_a_controller() -> None:
    cfg = build('usbdev = ["type=tablet"]')
    assert cfg.usbctrl == [{"version": 3, "ports": 8, "devid": 0}]


@pytest.mark.parametrize(("text", "match"), [
    ('usbctrl = ["type=qusb"]', "PV USB"),
    ('usbctrl = ["version=2,ports=7"]', "ports= must be a number from 1 to 6"),
    ('usbdev = ["type=hostdev,hostbus=1"]', "needs hostbus= and hostaddr="),
    ('usbdev = ["type=scanner"]', "type= must be one of"),
    ('usbctrl = ["version=1"]\nusbdev = ["type=tablet", "type=mouse", "type=keyboard"]',
     "no free USB port"),
    ('usbdev = ["type=tablet,controller=3"]', "no USB controller 3"),
    ('usbdev = ["type=tablet,port=1", "type=mouse,port=1"]', "two devices on one port"),
])
def test_usb_refused(text: str, match: str) -> None:
    with pytest.raises(InvalidConfig, match=match):
        build(text)


def test_usb_hostdev_must_exist(tmp_path: Path) -> None:
    cfg = build('usbdev = ["type=hostdev,hostbus=2,hostaddr=3"]')
    with pytest.raises(NotFound, match="USB device 2:3.*lsusb"):
        xldevices.check_usb_host(cfg.usbdev, "g", dev_root=tmp_path)
    (tmp_path / "002").mkdir()
    (tmp_path / "002" / "003").touch()
    xldevices.check_usb_host(cfg.usbdev, "g", dev_root=tmp_path)


def test_usbversion_picks_the_emulated_controller() -> None:
    for version, driver in ((1, "piix3-usb-uhci"), (2, "usb-ehci"), (3, "qemu-xhci")):
        cfg = build(f'type = "hvm"\nusb = 1\nusbversion = {version}')
        assert [d["driver"] for d in devices(argv(cfg)) if d["id"] == "usb0"] == [driver]
    with pytest.raises(InvalidConfig, match="from 1 to 3"):
        build("usbversion = 4")


def test_api_config_values_checked() -> None:
    cfg = build("")
    cfg.usbctrl = [{"version": 9, "ports": 1, "devid": 0}]
    with pytest.raises(InvalidConfig, match="version= must be a number from 1 to 3"):
        xldevices.check(cfg)
    cfg = build("")
    cfg.cpuid = ["aes=on,kvm=off"]
    with pytest.raises(InvalidConfig, match="bad cpuid setting"):
        xldevices.check(cfg)
    cfg = build("")
    cfg.keymap = "de,x=1"
    with pytest.raises(InvalidConfig, match="unknown keymap"):
        xldevices.check(cfg)


# --- sound, keymap, pvgrub ----------------------------------------------------------


def test_soundhw_cards_on_a_none_backend() -> None:
    args = argv(build('soundhw = "all"'))
    assert args[args.index("-audiodev") + 1] == "none,id=snd0"
    drivers = [d["driver"] for d in devices(args)]
    for d in ("intel-hda", "hda-duplex", "AC97", "ES1370", "sb16"):
        assert d in drivers
    assert all(d.get("audiodev") == "snd0" for d in devices(args)
               if d["driver"] in ("hda-duplex", "AC97", "ES1370", "sb16"))


def test_soundhw_uses_the_backend_of_device_model_args() -> None:
    args = argv(build('soundhw = "ac97"\ndevice_model_args = ["-audiodev", "pa,id=snd0"]'))
    assert args.count("-audiodev") == 1
    assert args[args.index("-audiodev") + 1] == "pa,id=snd0"
    with pytest.raises(InvalidConfig, match="unknown sound card 'gus'"):
        build('soundhw = "gus"')


def test_keymap() -> None:
    args = argv(build('keymap = "de-ch"'))
    assert args[args.index("-k") + 1] == "de-ch"
    with pytest.raises(InvalidConfig, match="'keymap' must be one of"):
        build('keymap = "klingon"')


def test_pvgrub_firmware_is_pygrub_with_a_notice(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="xenia.config"):
        cfg = build('firmware = "pvgrub64"\ndisk = ["/d.img,raw,xvda,rw"]')
    assert cfg.bootloader == "pygrub" and cfg.firmware is None
    assert any("notice: firmware 'pvgrub64'" in r.getMessage() for r in caplog.records)
    assert build('firmware = "pvgrub32"\nbootloader = "/usr/bin/pygrub"').bootloader == \
        "/usr/bin/pygrub"


def test_new_keys_do_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="xenia.config"):
        build('cpuid = "host"\nnestedhvm = 0\nkeymap = "fr"\nsoundhw = "hda"\n'
              'usbctrl = ["version=2"]\nusbdev = ["type=tablet"]\nusbversion = 3')
    assert caplog.records == []


@pytest.mark.parametrize("text", ['cpuid = "aes=1"', "nestedhvm = 1", 'soundhw = "hda"',
                                  'usbdev = ["type=tablet"]', 'keymap = "de"',
                                  'vnuma = [["size=128", "vcpus=0"]]',
                                  'p9 = ["tag=t,path=/s"]'])
def test_container_refuses_the_vm_keys(text: str) -> None:
    from xenia.containers.spec import check_config

    cfg = build(f'type = "container"\nrootfs = "/r"\n{text}')
    with pytest.raises(InvalidConfig, match="a container cannot have"):
        check_config(cfg)


# --- suspend / resume refusals (a fake QMP: error paths only) --------------------------


class _FakeQmp:
    def __init__(self, status: str) -> None:
        self.status = status

    async def query_status(self) -> str:
        return self.status


def _verbs(text: str, status: str) -> object:
    from xenia.drivers.qemu_xlverbs import XlVerbsMixin
    from xenia.store.base import DomainRecord

    v = XlVerbsMixin()
    v.qmp = _FakeQmp(status)  # type: ignore[assignment]
    v.record = DomainRecord(uuid="u", name="g", domid=1, config=build(text))
    v.console_path = lambda: Path("/nonexistent/console.sock")
    return v


@pytest.mark.parametrize(("text", "status", "match"), [
    ("acpi_s3 = 0", "running", "no S3 sleep state"),
    ("", "paused", "it is paused, not running"),
    ("", "running", "no guest agent to ask.*echo mem"),
])
def test_suspend_refused(text: str, status: str, match: str) -> None:
    import asyncio

    with pytest.raises((NotSupported, InvalidConfig), match=match):
        asyncio.run(_verbs(text, status).suspend())  # type: ignore[attr-defined]


def test_resume_refused_unless_suspended() -> None:
    import asyncio

    with pytest.raises(InvalidConfig, match="it is running, not suspended"):
        asyncio.run(_verbs("", "running").wakeup())  # type: ignore[attr-defined]


# --- p9 and USB storage ---------------------------------------------------------------


def test_p9_share_as_fsdev_and_virtio_9p_on_a_root_port() -> None:
    cfg = build('p9 = ["tag=share0,security_model=none,path=/srv/a", '
                '"tag=s.1,path=/srv/c,security_model=mapped,type=qemu,backend=0"]')
    assert cfg.p9 == [{"tag": "share0", "security_model": "none", "path": "/srv/a"},
                      {"tag": "s.1", "security_model": "mapped", "path": "/srv/c"}]
    layout = Layout(2)
    layout.take(xldevices.p9_id(0))
    args = xldevices.p9_args(cfg, layout.slots)
    assert args[0:2] == ["-fsdev", "local,id=fsdev0,path=/srv/a,security_model=none"]
    assert json.loads(args[3]) == {"driver": "virtio-9p-pci", "id": "p9-0", "fsdev": "fsdev0",
                                   "mount_tag": "share0", "bus": "rp0"}
    assert args[5] == "local,id=fsdev1,path=/srv/c,security_model=mapped-xattr"


def test_p9_path_comma_is_escaped_not_spliced() -> None:
    cfg = build("")
    cfg.p9 = [{"tag": "t", "security_model": "none", "path": "/srv/x,readonly=on"}]
    args = xldevices.p9_args(cfg, {})
    assert args[1] == "local,id=fsdev0,path=/srv/x,,readonly=on,security_model=none"


def test_p9_share_in_the_full_argv_after_its_root_port() -> None:
    from xenia.qemu.cmdline import RunFiles, build_argv

    cfg = build('p9 = ["tag=t,security_model=none,path=/srv/a"]')
    layout = Layout(2)
    layout.take("p9-0")
    args = build_argv(cfg, uuid="00000000-0000-0000-0000-000000000001", accel="tcg",
                      files=RunFiles(Path("/run/x")), layout=layout)
    ids = [d.get("id") for d in devices(args)]
    assert ids.index("rp0") < ids.index("p9-0")
    assert "-fsdev" in args


@pytest.mark.parametrize(("text", "match"), [
    ('p9 = ["tag=t,path=rel"]', "absolute directory"),
    ('p9 = ["path=/srv/a"]', "tag= must be 1 to 31"),
    ('p9 = ["tag=a b,path=/srv/a"]', "tag= must be 1 to 31"),
    ('p9 = ["tag=t,path=/srv/a,security_model=passthrough"]', "passthrough needs QEMU"),
    ('p9 = ["tag=t,path=/srv/a,type=xen_9pfsd"]', "only type=qemu exists on KVM"),
    ('p9 = ["tag=t,path=/srv/a,max-open-files=5"]', "only type=qemu"),
    ('p9 = ["tag=t,path=/srv/a,backend=dd"]', "backend= must be 0"),
    ('p9 = ["tag=t,path=/srv/a", "tag=t,path=/srv/b"]', "two p9 shares have one tag"),
    ('p9 = ["tag=t,path=/srv/a,cache=loose"]', "unknown option 'cache=loose'"),
])
def test_p9_refused(text: str, match: str) -> None:
    with pytest.raises(InvalidConfig, match=match):
        build(text)


def test_p9_directory_must_exist(tmp_path: Path) -> None:
    cfg = build(f'p9 = ["tag=t,security_model=none,path={tmp_path / "gone"}"]')
    with pytest.raises(NotFound, match="not a directory"):
        xldevices.check(cfg)
    (tmp_path / "gone").mkdir()
    xldevices.check(cfg)


def test_usb_storage_blockdevs_and_device(tmp_path: Path) -> None:
    img = tmp_path / "stick.img"
    cfg = build(f'usbdev = ["type=storage,path={img}", '
                f'"type=storage,path={img}.q,format=qcow2,readonly=1"]')
    assert cfg.usbdev[0] == {"type": "storage", "path": str(img), "format": "raw",
                             "readonly": 0, "controller": 0, "port": 1}
    args = xldevices.usb_args(cfg, {})
    assert [o for o, _ in args] == ["-device", "-blockdev", "-blockdev", "-device",
                                    "-blockdev", "-blockdev", "-device"]
    assert args[1][1] == {"driver": "file", "node-name": "usbdisk0-1-file",
                          "filename": str(img), "read-only": False}
    assert args[2][1]["driver"] == "raw" and args[5][1]["driver"] == "qcow2"
    assert args[5][1]["read-only"] is True
    assert args[3][1] == {"driver": "usb-storage", "id": "usbdev0-1", "bus": "usbctrl0.0",
                          "port": "1", "drive": "usbdisk0-1"}
    assert xldevices.usb_storage_files(cfg.usbdev) == ([str(img)], [f"{img}.q"])
    with pytest.raises(NotFound, match="no such image file"):
        xldevices.check(cfg)
    img.touch()
    Path(f"{img}.q").touch()
    xldevices.check(cfg)


@pytest.mark.parametrize(("text", "match"), [
    ('usbdev = ["type=storage"]', "needs path= an absolute path"),
    ('usbdev = ["type=storage,path=/i,format=vmdk"]', "format= must be one of raw, qcow2"),
    ('usbdev = ["type=storage,path=/i,readonly=2"]', "readonly= must be a number from 0"),
    ('usbdev = ["type=tablet,path=/i"]', "are for type=storage"),
])
def test_usb_storage_refused(text: str, match: str) -> None:
    with pytest.raises(InvalidConfig, match=match):
        build(text)


def test_api_p9_values_checked() -> None:
    cfg = build("")
    cfg.p9 = [{"tag": "t", "security_model": "none", "path": "/x", "extra": "1"}]
    with pytest.raises(InvalidConfig, match="unknown option 'extra=1'"):
        xldevices.check(cfg)
    cfg.p9 = [{"tag": "t,x=1", "security_model": "none", "path": "/x"}]
    with pytest.raises(InvalidConfig):
        xldevices.check(cfg)


def test_p9_and_usb_stick_paths_follow_the_path_rule(tmp_path: Path) -> None:
    from xenia.api.pathrule import PathRule, config_paths
    from xenia.errors import PermissionDenied

    cfg = build('p9 = ["tag=t,path=/etc"]\nusbdev = ["type=storage,path=/root/s.img"]')
    assert ("p9 share 't'", "/etc") in config_paths(cfg)
    assert ("usbdev storage", "/root/s.img") in config_paths(cfg)
    with pytest.raises(PermissionDenied, match="p9 share 't' '/etc'"):
        PathRule([tmp_path], lambda: []).check_config(cfg)


def test_confined_qemu_is_given_the_share_and_the_stick(tmp_path: Path) -> None:
    from xenia.drivers.qemu_confine import QemuConfinement
    from xenia.paths import Paths
    from xenia.store.base import DomainRecord

    cfg = build(f'p9 = ["tag=t,path={tmp_path}"]\n'
                f'usbdev = ["type=storage,path=/s.img", "type=storage,path=/r.img,readonly=1"]')
    rec = DomainRecord(uuid="u", name="g", domid=1, config=cfg)
    conf = QemuConfinement(Paths(state=tmp_path / "state", run=tmp_path / "run"))
    write, read = conf.given_files(rec, None)
    assert str(tmp_path) in write and "/s.img" in write and "/r.img" in read


class StickQmp:
    """What QemuHotplug sends over QMP, with device_add failing if told to."""

    def __init__(self, fail_device_add: bool = False) -> None:
        self.sent: list[tuple[str, Any]] = []
        self.fail = fail_device_add

    async def command(self, cmd: str, args: dict[str, Any] | None = None,
                      timeout: float = 30.0) -> Any:
        self.sent.append((cmd, (args or {}).get("node-name") or (args or {}).get("driver")
                          or (args or {}).get("id")))
        if cmd == "device_add" and self.fail:
            raise BackendError("Failed to add a device: scripted")
        return {}


class StickConfinement:
    def __init__(self) -> None:
        self.given: list[str] = []

    def give_files(self, rec: object, write: list[str], read: list[str]) -> list[str]:
        self.given += write + read
        return write + read

    def give_back(self, rec: object, paths: list[str]) -> None:
        self.given = [p for p in self.given if p not in paths]


def stick_hotplug(tmp_path: Path, fail: bool) -> tuple[Any, Any, StickQmp, StickConfinement]:
    from types import SimpleNamespace

    from xenia.drivers.qemu_hotplug import QemuHotplug
    from xenia.qemu.commands import Qmp
    from xenia.store.base import DomainRecord

    rec = DomainRecord(uuid="u", name="g", domid=1, config=build('usbdev = ["type=tablet"]'))
    script, conf = StickQmp(fail), StickConfinement()
    proc = SimpleNamespace(qmp=Qmp(script))
    host = SimpleNamespace(confinement=conf)
    return QemuHotplug(rec, proc, host), rec, script, conf  # type: ignore[arg-type]


def test_usb_storage_hotplug_adds_the_image_then_the_device(tmp_path: Path) -> None:
    import asyncio

    img = tmp_path / "s.img"
    img.touch()
    plug, rec, script, conf = stick_hotplug(tmp_path, fail=False)
    new = asyncio.run(plug.usbdev_attach(rec, {"type": "storage", "path": str(img),
                                                "format": "raw", "readonly": 0}))
    assert (new["controller"], new["port"]) == (0, 2)
    assert script.sent == [("blockdev-add", "usbdisk0-2-file"), ("blockdev-add", "usbdisk0-2"),
                           ("device_add", "usb-storage")]
    assert conf.given == [str(img)] and rec.config.usbdev[-1] == new
    with pytest.raises(NotFound, match="no such image file"):
        asyncio.run(plug.usbdev_attach(rec, {"type": "storage", "path": str(img) + ".x",
                                             "format": "raw", "readonly": 0}))


def test_usb_storage_hotplug_failure_leaves_nothing(tmp_path: Path) -> None:
    import asyncio

    img = tmp_path / "s.img"
    img.touch()
    plug, rec, script, conf = stick_hotplug(tmp_path, fail=True)
    with pytest.raises(BackendError, match="scripted"):
        asyncio.run(plug.usbdev_attach(rec, {"type": "storage", "path": str(img),
                                             "format": "raw", "readonly": 0}))
    # Both nodes deleted again, the image given back, the config as it was.
    assert script.sent[-2:] == [("blockdev-del", "usbdisk0-2"),
                                ("blockdev-del", "usbdisk0-2-file")]
    assert conf.given == [] and len(rec.config.usbdev) == 1
