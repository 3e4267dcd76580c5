"""QEMU arguments for cpuid, nestedhvm, vnuma, soundhw, keymap, usbversion, the USB
controllers and devices of usbctrl/usbdev, and p9's virtio-9p shares (config/xldevices.py
checked the values).

Everything that can be JSON is; -numa, -audiodev and -k carry only numbers and fixed
words; -fsdev has no JSON form, so its path goes through escape_opt. USB controllers and
9p devices sit on PCIe root ports (devices/layout.py), so `usbctrl-attach` and `-detach`
can hot-plug controllers; sound cards are fixed functions on pcie.0.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from xenia.config.model import DomainConfig
from xenia.errors import NotFound, NotSupported
from xenia.qemu import vscsi
from xenia.qemu.opts import escape_opt

# Sound cards' fixed slots on pcie.0 (qemu/platform.py and cmdline.py name the others).
SOUND_ADDRS = {"hda": "0x19", "ac97": "0x18", "es1370": "0x17"}
AUDIODEV = "snd0"
USB_DRIVERS = {1: "piix3-usb-uhci", 2: "usb-ehci", 3: "qemu-xhci"}
USBDEV_DRIVERS = {"tablet": "usb-tablet", "mouse": "usb-mouse", "keyboard": "usb-kbd",
                  "hostdev": "usb-host", "storage": "usb-storage"}
# p9's security models as QEMU names them.
P9_MODELS = {"none": "none", "mapped": "mapped-xattr"}


def _j(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


def host_vendor(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    for line in cpuinfo.read_text(errors="replace").splitlines():
        if line.startswith("vendor_id"):
            return line.split(":", 1)[1].strip()
    return ""


def nested_flag(accel: str, vendor: str) -> str:
    """The CPUID bit of hardware virtualization the guest gets with nestedhvm=1: the
    host's (vmx on Intel, svm on AMD) under KVM; svm under TCG, which emulates AMD's SVM
    and not Intel's VMX."""
    if accel != "kvm":
        return "svm"
    return "vmx" if vendor == "GenuineIntel" else "svm"


def check_nested(cfg: DomainConfig, accel: str, sys: Path = Path("/sys/module")) -> None:
    """Under KVM, nestedhvm=1 needs the host's kvm_intel/kvm_amd loaded with nested=1."""
    if not cfg.nestedhvm or accel != "kvm":
        return
    module = "kvm_intel" if nested_flag(accel, host_vendor()) == "vmx" else "kvm_amd"
    param = sys / module / "parameters" / "nested"
    value = param.read_text().strip() if param.exists() else "N"
    if value not in ("1", "Y"):
        raise NotSupported(f"Failed to create domain '{cfg.name}': nestedhvm=1 needs nested "
                           f"virtualization in the host's KVM ({module} nested={value}); "
                           f"load it with `modprobe {module} nested=1`, or use accel=\"tcg\"")


def cpu_flags(cfg: DomainConfig, accel: str) -> str:
    """What cpuid and nestedhvm add to -cpu (cpuid's settings win over nestedhvm's)."""
    check_nested(cfg, accel)
    flags: list[str] = []
    if cfg.nestedhvm is not None:
        if cfg.nestedhvm:
            flags.append(f"{nested_flag(accel, host_vendor())}=on")
        else:
            flags += ["vmx=off", "svm=off"]
    names = {f.split("=")[0] for f in cfg.cpuid}
    flags = [f for f in flags if f.split("=")[0] not in names] + list(cfg.cpuid)
    return "".join("," + f for f in flags)


def vnuma_args(cfg: DomainConfig) -> list[str]:
    """One memory backend and -numa node a vnuma node; its vCPUs by socket (one socket a
    vCPU, devices/cpu.py), and the distances."""
    from xenia.config.xldevices import vnuma_cpus

    argv: list[str] = []
    for i, node in enumerate(cfg.vnuma):
        argv += ["-object", _j({"qom-type": "memory-backend-ram", "id": f"vnode{i}",
                                "size": int(node["size"]) << 20}),
                 "-numa", f"node,nodeid={i},memdev=vnode{i}"]
        for cpu in vnuma_cpus(str(node["vcpus"])):
            argv += ["-numa", f"cpu,node-id={i},socket-id={int(cpu)}"]
    for i, node in enumerate(cfg.vnuma):
        for j, dist in enumerate(node["distances"]):
            if i != j:
                argv += ["-numa", f"dist,src={i},dst={j},val={int(dist)}"]
    return argv


def _audiodev_given(cfg: DomainConfig, own: list[str]) -> bool:
    """True if device_model_args define the audio backend `snd0` themselves."""
    return any(a == "-audiodev" and f"id={AUDIODEV}" in b.split(",")
               for a, b in zip(own, own[1:], strict=False))


def sound_args(cfg: DomainConfig, dm_args: list[str]) -> list[str]:
    """The sound cards, all on one audio backend: `none` (the guest plays into nothing)
    unless device_model_args define `-audiodev ...,id=snd0`."""
    if not cfg.soundhw:
        return []
    argv = [] if _audiodev_given(cfg, dm_args) else ["-audiodev", f"none,id={AUDIODEV}"]
    for card in cfg.soundhw:
        if card == "hda":
            argv += ["-device", _j({"driver": "intel-hda", "id": "sound-hda", "bus": "pcie.0",
                                    "addr": SOUND_ADDRS["hda"]}),
                     "-device", _j({"driver": "hda-duplex", "id": "sound-hda-codec",
                                    "bus": "sound-hda.0", "audiodev": AUDIODEV})]
        elif card == "sb16":
            argv += ["-device", _j({"driver": "sb16", "id": "sound-sb16",
                                    "audiodev": AUDIODEV})]
        else:
            argv += ["-device", _j({"driver": "AC97" if card == "ac97" else "ES1370",
                                    "id": f"sound-{card}", "bus": "pcie.0",
                                    "addr": SOUND_ADDRS[card], "audiodev": AUDIODEV})]
    return argv


def keymap_args(cfg: DomainConfig) -> list[str]:
    """The VNC server's keyboard layout (only VNC and SDL use it)."""
    return ["-k", cfg.keymap] if cfg.keymap else []


def usbctrl_id(devid: int) -> str:
    return f"usbctrl{int(devid)}"


def usbdev_id(dev: dict[str, Any]) -> str:
    return f"usbdev{int(dev['controller'])}-{int(dev['port'])}"


def usbctrl_device(ctrl: dict[str, Any], bus: str) -> dict[str, Any]:
    version, ports = int(ctrl["version"]), int(ctrl["ports"])
    dev: dict[str, Any] = {"driver": USB_DRIVERS[version], "id": usbctrl_id(ctrl["devid"]),
                           "bus": bus}
    if version == 3:
        dev.update({"p2": ports, "p3": ports})
    return dev


def usbdev_device(dev: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"driver": USBDEV_DRIVERS[dev["type"]], "id": usbdev_id(dev),
                           "bus": f"{usbctrl_id(dev['controller'])}.0",
                           "port": str(int(dev["port"]))}
    if dev["type"] == "hostdev":
        out.update({"hostbus": int(dev["hostbus"]), "hostaddr": int(dev["hostaddr"])})
    elif dev["type"] == "storage":
        out["drive"] = usb_storage_node(dev)
    return out


def usb_storage_node(dev: dict[str, Any]) -> str:
    return f"usbdisk{int(dev['controller'])}-{int(dev['port'])}"


def usb_storage_blockdevs(dev: dict[str, Any]) -> list[dict[str, Any]]:
    """The image of a type=storage usbdev: its file, then its format on top."""
    node, ro = usb_storage_node(dev), bool(dev.get("readonly"))
    return [{"driver": "file", "node-name": f"{node}-file", "filename": str(dev["path"]),
             "read-only": ro},
            {"driver": str(dev["format"]), "node-name": node, "file": f"{node}-file",
             "read-only": ro}]


def usb_storage_files(devs: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(written, read) image files of the type=storage usbdevs, for the confined QEMU."""
    write: list[str] = []
    read: list[str] = []
    for d in devs:
        if d["type"] == "storage":
            (read if d.get("readonly") else write).append(str(d["path"]))
    return write, read


def p9_id(index: int) -> str:
    return f"p9-{int(index)}"


def p9_args(cfg: DomainConfig, slots: dict[str, str]) -> list[str]:
    """One -fsdev (QEMU's local backend on the share's directory) and one virtio-9p-pci
    on its root port in `slots` a p9 share; the guest mounts it by its tag."""
    argv: list[str] = []
    for i, share in enumerate(cfg.p9):
        fsdev = f"fsdev{i}"
        argv += ["-fsdev", f"local,id={fsdev},path={escape_opt(str(share['path']))},"
                           f"security_model={P9_MODELS[share['security_model']]}",
                 "-device", _j({"driver": "virtio-9p-pci", "id": p9_id(i), "fsdev": fsdev,
                                "mount_tag": str(share["tag"]),
                                "bus": slots.get(p9_id(i), "pcie.0")})]
    return argv


def p9_dirs(cfg: DomainConfig) -> list[str]:
    """The shared directories: the confined QEMU owns each while the domain runs (it
    creates the guest's files in it; files already inside keep their owner and mode)."""
    return [str(s["path"]) for s in cfg.p9]


def check_p9_dirs(cfg: DomainConfig) -> None:
    for share in cfg.p9:
        if not Path(share["path"]).is_dir():
            raise NotFound(f"Failed to share '{share['path']}' with '{cfg.name}' as 9p tag "
                           f"'{share['tag']}': it is not a directory; create it or fix "
                           "path= in p9")


def check_usb_images(devs: list[dict[str, Any]], name: str) -> None:
    for d in devs:
        if d["type"] == "storage" and not Path(d["path"]).is_file():
            raise NotFound(f"Failed to give USB storage '{d['path']}' to '{name}': no such "
                           "image file; create it (qemu-img create) or fix path= in usbdev")


def check(cfg: DomainConfig) -> None:
    """Before anything starts: the values (a config from the API was not parsed) and the
    host USB devices."""
    from xenia.config.xldevices import check_values

    check_values(cfg)
    check_usb_host(cfg.usbdev, cfg.name)
    check_usb_images(cfg.usbdev, cfg.name)
    check_p9_dirs(cfg)
    vscsi.check(cfg)


def check_usb_host(devs: list[dict[str, Any]], name: str,
                   dev_root: Path = Path("/dev/bus/usb")) -> None:
    """A hostdev usbdev names a USB device the host has (lsusb's bus and device)."""
    for dev in devs:
        if dev["type"] != "hostdev":
            continue
        node = dev_root / f"{int(dev['hostbus']):03d}" / f"{int(dev['hostaddr']):03d}"
        if not node.exists():
            raise NotFound(f"Failed to give USB device {dev['hostbus']}:{dev['hostaddr']} to "
                           f"'{name}': the host has none there ({node}; see lsusb)")


def usb_args(cfg: DomainConfig, slots: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """The usbctrl controllers (on their root ports in `slots`) and the usbdev devices."""
    out: list[tuple[str, dict[str, Any]]] = []
    for ctrl in cfg.usbctrl:
        out.append(("-device", usbctrl_device(ctrl, slots.get(usbctrl_id(ctrl["devid"]),
                                                              "pcie.0"))))
    for d in cfg.usbdev:
        if d["type"] == "storage":
            out += [("-blockdev", b) for b in usb_storage_blockdevs(d)]
        out.append(("-device", usbdev_device(d)))
    return out
