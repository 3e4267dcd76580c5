"""Golden files of generated QEMU argv (tests/unit/goldens.py; regenerate with
XENIA_UPDATE_GOLDEN=1 and review): pv, pvh, and hvm with SeaBIOS, OVMF, VNC, a cdrom and
a USB tablet. Every input is fixed: uuid, paths, MACs, tap names, the VNC display and the
firmware files (the driver finds those on the host)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.unit.goldens import compare
from xenia.config.model import DiskSpec, DomainConfig, VifSpec
from xenia.devices import display
from xenia.drivers.qemu_devices import QemuDevices, argv_devices
from xenia.images.hvm import ovmf_qemu_args
from xenia.qemu.cmdline import (
    TCG_KERNEL_PARAMS,
    RunFiles,
    build_argv,
    escape_opt,
    kernel_cmdline,
    tcg_params_added,
)
from xenia.store.base import DomainRecord

UUID = "6f1d3b9e-2c4a-4e8b-9a51-0c7d2e3f4a5b"
FILES = RunFiles(Path("/run/xenia/domains") / UUID)
# What QemuDriver would find on a Debian host, fixed here.
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
NVRAM = Path("/var/lib/xenia/nvram") / f"{UUID}_VARS.fd"
VNC_DISPLAY = 3
VNC_PASSWORD = "s3cret-pw"

CASES = {
    "pv-basic": DomainConfig(name="tiny", kernel="/boot/vmlinuz", ramdisk="/boot/initrd.img",
                             extra="console=ttyS0 quiet", memory=256, vcpus=2),
    "pv-balloon-hotplug": DomainConfig(name="big", kernel="/boot/vmlinuz", root="/dev/vda1 ro",
                                       memory=256, maxmem=1024, vcpus=1, maxvcpus=4),
    "pvh-kvm": DomainConfig(name="p", type="pvh", kernel="/boot/vmlinux", cmdline="quiet"),
}


CASES["pv-devices"] = DomainConfig(
    name="dev", kernel="/boot/vmlinuz", memory=512, vcpus=3, maxvcpus=4,
    disks=[DiskSpec(vdev="xvda", target="/var/lib/xenia/pools/default/root.qcow2",
                    format="qcow2"),
           DiskSpec(vdev="xvdb", target="/srv/data,with,commas.img", access="ro"),
           DiskSpec(vdev="sdc", target=None, format="empty", devtype="cdrom"),
           DiskSpec(vdev="hdd", target="/srv/legacy.img")],
    vifs=[VifSpec(mac="00:16:3e:12:34:56", bridge="xenbr0", mtu=9000),
          VifSpec(mac="00:16:3e:12:34:57", bridge="natbr", model="e1000", devid=3)],
)


def hvm(name: str, cdrom: bool = False, **keys: Any) -> DomainConfig:
    """An hvm domain with one AHCI disk (and a cdrom) and one NIC of xl's default model."""
    disks = [DiskSpec(vdev="hda", target="/var/lib/xenia/pools/default/win.qcow2",
                      format="qcow2")]
    if cdrom:
        disks.append(DiskSpec(vdev="hdc", target="/srv/iso/debian-12.iso", format="raw",
                              access="ro", devtype="cdrom"))
    return DomainConfig(name=name, type="hvm", memory=512, disks=disks,
                        vifs=[VifSpec(mac="00:16:3e:5a:0b:01", bridge="xenbr0")], **keys)


CASES["hvm-seabios"] = hvm("bios", boot="cd")
CASES["hvm-ovmf"] = hvm("uefi", firmware="ovmf")
CASES["hvm-vnc"] = hvm("desk", vnc=True, vnclisten="0.0.0.0", vncpasswd=VNC_PASSWORD)
CASES["hvm-cdrom"] = hvm("inst", cdrom=True, boot="dc")
CASES["hvm-usb-tablet"] = hvm("tab", usb=True, usbdevice=["tablet"])


def firmware_for(cfg: DomainConfig) -> list[str]:
    """The firmware arguments QemuDriver adds (its _hvm_extras), with fixed files."""
    if cfg.type != "hvm":
        return []
    kind = display.firmware_kind(cfg)
    if kind == "ovmf":
        return ovmf_qemu_args(NVRAM, OVMF_CODE)
    return ["-bios", str(cfg.firmware)] if kind == "path" else []


def argv_for(case: str) -> list[str]:
    accel = "kvm" if case.endswith("kvm") else "tcg"
    rec = DomainRecord(uuid=UUID, name=CASES[case].name, domid=7, config=CASES[case])
    QemuDevices(None, None, None).prepare(rec)  # type: ignore[arg-type]
    rec.runtime["taps"] = {str(v.devid): f"vif7.{v.devid}" for v in rec.config.vifs}
    layout, devices = argv_devices(rec)
    vnc = VNC_DISPLAY if rec.config.vnc else None
    return build_argv(rec.config, uuid=UUID, accel=accel, files=FILES, layout=layout,
                      devices=devices, firmware=firmware_for(rec.config), vnc_display=vnc,
                      kernel_params=tcg_params_added(rec.config, accel))


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_argv(case: str) -> None:
    compare(f"{case}.argv", "\n".join(argv_for(case)) + "\n")


def test_vnc_password_is_not_on_the_command_line() -> None:
    argv = argv_for("hvm-vnc")
    assert not any(VNC_PASSWORD in a for a in argv)
    assert argv[argv.index("-vnc") + 1] == f"vnc=0.0.0.0:{VNC_DISPLAY},password=on"


def test_every_device_is_json() -> None:
    argv = argv_for("pv-devices")
    for opt, val in zip(argv, argv[1:], strict=False):
        if opt in ("-device", "-blockdev", "-netdev", "-object"):
            assert isinstance(json.loads(val), dict)


def test_hostile_name_cannot_add_options() -> None:
    # Names are validated upstream; the builder escapes anyway.
    cfg = DomainConfig(name="a,debug-threads=off,x", kernel="/k")
    argv = build_argv(cfg, uuid=UUID, accel="tcg", files=FILES)
    assert argv[argv.index("-name") + 1] == "guest=a,,debug-threads=off,,x,debug-threads=on"
    assert escape_opt("/tmp/a,b") == "/tmp/a,,b"


def test_console_defaults_to_serial() -> None:
    assert kernel_cmdline(DomainConfig(name="x", root="/dev/vda")) == "root=/dev/vda console=ttyS0"
    # Xen PV configs name hvc0; here the console is the first serial port (translated).
    assert kernel_cmdline(DomainConfig(name="x", extra="console=hvc0")) == "console=ttyS0"
    assert kernel_cmdline(DomainConfig(name="x", cmdline="a b", extra="c")) == "a b console=ttyS0"


def test_console_and_added_params_go_before_init_arguments() -> None:
    cfg = DomainConfig(name="x", kernel="/k", extra="quiet -- console=x single")
    assert kernel_cmdline(cfg, ["no_timer_check"]) == \
        "quiet console=ttyS0 no_timer_check -- console=x single"
    quoted = DomainConfig(name="x", kernel="/k", extra='a="b c"  console=ttyS1')
    assert kernel_cmdline(quoted, ["p"]) == 'a="b c" console=ttyS1 p'


def test_tcg_params_added_under_tcg_only() -> None:
    cfg = DomainConfig(name="x", kernel="/k", extra="console=ttyS0")
    assert tcg_params_added(cfg, "tcg") == list(TCG_KERNEL_PARAMS)
    assert "no_timer_check" in TCG_KERNEL_PARAMS
    assert tcg_params_added(cfg, "kvm") == []
    assert tcg_params_added(DomainConfig(name="x", type="hvm"), "tcg") == []  # no kernel
    line = build_argv(cfg, uuid=UUID, accel="tcg", files=FILES,
                      kernel_params=tcg_params_added(cfg, "tcg"))
    assert line[line.index("-append") + 1].split() == ["console=ttyS0", *TCG_KERNEL_PARAMS]
    kvm = build_argv(cfg, uuid=UUID, accel="kvm", files=FILES,
                     kernel_params=tcg_params_added(cfg, "kvm"))
    assert kvm[kvm.index("-append") + 1] == "console=ttyS0"


@pytest.mark.parametrize("param", TCG_KERNEL_PARAMS)
def test_a_key_the_user_sets_wins(param: str) -> None:
    key = param.split("=", 1)[0]
    for own in (f"{key}=mine", key, key.replace("_", "-")):
        for cfg in (DomainConfig(name="x", kernel="/k", extra=f"quiet {own}"),
                    DomainConfig(name="x", kernel="/k", cmdline=own, extra="ignored")):
            added = tcg_params_added(cfg, "tcg")
            assert param not in added and added == [p for p in TCG_KERNEL_PARAMS if p != param]
            assert kernel_cmdline(cfg, added).split().count(own) == 1
    # A word after `--` is init's, not the kernel's: the parameter is still added.
    cfg = DomainConfig(name="x", kernel="/k", extra=f"quiet -- {key}=mine")
    assert param in tcg_params_added(cfg, "tcg")


def devices_of(argv: list[str]) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(v) for o, v in zip(argv, argv[1:], strict=False) if o == "-device"]


def test_memory_and_cpus_for_hotplug() -> None:
    argv = argv_for("pv-balloon-hotplug")
    assert argv[argv.index("-m") + 1] == "size=1024M"
    assert argv[argv.index("-smp") + 1] == "cpus=1,sockets=4,cores=1,threads=1,maxcpus=4"
    ports = [d for d in devices_of(argv) if d["driver"] == "pcie-root-port"]
    assert len(ports) == 8  # nothing cold-plugged: all spare
    assert len({p["addr"] for p in ports}) == len(ports)


def test_devices_each_on_its_own_port() -> None:
    devs = devices_of(argv_for("pv-devices"))
    ports = {d["id"] for d in devs if d["driver"] == "pcie-root-port"}
    on_ports = [d for d in devs if d.get("bus") in ports]
    # xvda, xvdb, the SCSI controller (sdc, hdd) and two NICs; plus 8 spare ports.
    assert sorted(d["id"] for d in on_ports) == ["disk-xvda", "disk-xvdb", "nic0", "nic3",
                                                  "scsi0"]
    assert len({d["bus"] for d in on_ports}) == 5 and len(ports) == 5 + 8
    cpus = [d for d in devs if d["driver"] == "qemu64-x86_64-cpu"]
    assert [c["socket-id"] for c in cpus] == [1, 2]  # vCPU 0 comes from -smp
    scsi = {d["id"]: d for d in devs if d.get("bus") == "scsi0.0"}
    assert scsi["disk-sdc"]["driver"] == "scsi-cd" and "drive" not in scsi["disk-sdc"]
    assert scsi["disk-hdd"]["scsi-id"] != scsi["disk-sdc"]["scsi-id"]


def test_hostile_paths_stay_inside_json() -> None:
    argv = argv_for("pv-devices")
    blockdevs = [json.loads(v) for o, v in zip(argv, argv[1:], strict=False)
                 if o == "-blockdev"]
    files = {b["filename"] for b in blockdevs if "filename" in b}
    assert "/srv/data,with,commas.img" in files
    ro = [b for b in blockdevs if b["node-name"].endswith("xvdb")]
    assert all(b["read-only"] for b in ro)
