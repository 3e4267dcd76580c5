"""xl keys for the guest's CPU, NUMA layout, USB, sound and shares: cpuid, nestedhvm,
vnuma, usbctrl, usbdev, usbversion, soundhw, keymap, p9 and vscsi (config/vscsi.py);
the main function is read_devices.

Only the values are checked here (and again by `check_values` for a config from the API,
which no parser saw); qemu/xldevices.py turns them into QEMU arguments.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from xenia.config.cpuid import parse_cpuid, valid_flag
from xenia.config.cpulist import normalize_cpulist
from xenia.config.extras import Reader
from xenia.config.model import DomainConfig
from xenia.config.vscsi import check_vscsi, parse_vscsi
from xenia.errors import InvalidConfig

# QEMU's keyboard layouts (/usr/share/qemu/keymaps), the names xl's keymap= takes.
KEYMAPS = ("ar", "bepo", "cz", "da", "de", "de-ch", "en-gb", "en-us", "es", "et", "fi",
           "fo", "fr", "fr-be", "fr-ca", "fr-ch", "hr", "hu", "is", "it", "ja", "lt", "lv",
           "mk", "nl", "no", "pl", "pt", "pt-br", "ru", "sl", "sv", "th", "tr")
# xl's soundhw names QEMU still has; "hda" is Intel HDA with a duplex codec.
SOUNDHW = ("hda", "ac97", "es1370", "sb16")
USB_VERSIONS = (1, 2, 3)
# Ports a controller of each USB version offers (QEMU's UHCI 2, EHCI 6, xHCI up to 15).
USB_PORTS = {1: 2, 2: 6, 3: 15}
# usbdev types: xl's hostdev (a host USB device), Xenia's emulated input devices and
# Xenia's USB stick (storage: a disk image as QEMU's usb-storage).
USBDEV_TYPES = ("hostdev", "tablet", "mouse", "keyboard", "storage")
USB_STORAGE_FORMATS = ("raw", "qcow2")
# p9's security models: xl's none, and QEMU's mapped (mapped-xattr).
P9_MODELS = ("none", "mapped")
MAX_P9 = 8
# A 9p mount tag: what the guest names in `mount -t 9p TAG`; plain words only.
_TAG_RE = re.compile(r"[A-Za-z0-9_.-]{1,31}\Z")
MAX_USBCTRL = 4
MAX_VNUMA_NODES = 16
log = logging.getLogger("xenia.config")
PVGRUBS = ("pvgrub32", "pvgrub64")
# At most 18 digits: int() refuses a decimal string past 4,300 digits with a ValueError
# (a traceback, not a message), and no count or size here needs more.
_NUM_RE = re.compile(r"(0x[0-9a-fA-F]{1,16}|\d{1,18})\Z")


def _options(spec: str, allowed: tuple[str, ...], what: str) -> dict[str, str]:
    opts: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in allowed:
            raise InvalidConfig(f"Failed to parse {what} '{spec}': unknown option '{part}' "
                                f"({', '.join(k + '=' for k in allowed)})")
        opts[key] = value
    return opts


def _number(spec: str, what: str, key: str, value: str, low: int, high: int) -> int:
    if not _NUM_RE.match(value) or not low <= int(value, 0) <= high:
        raise InvalidConfig(f"Failed to parse {what} '{spec}': {key}= must be a number from "
                            f"{low} to {high}, got '{value}'")
    return int(value, 0)


def parse_usbctrl(spec: str) -> dict[str, int]:
    """xl's usbctrl entry: type=auto|devicemodel|qusb, version=1|2|3, ports=N (the
    controller is always QEMU's: `qusb`, a PV USB backend, does not exist on KVM)."""
    opts = _options(spec, ("type", "version", "ports", "devid"), "usbctrl")
    if opts.get("type", "auto") not in ("auto", "devicemodel"):
        raise InvalidConfig(f"Failed to parse usbctrl '{spec}': type= must be auto or "
                            "devicemodel (Xen's PV USB, qusb/vusb, does not exist on KVM)")
    version = _number(spec, "usbctrl", "version", opts.get("version", "3"), 1, 3)
    ports = _number(spec, "usbctrl", "ports", opts.get("ports", str(USB_PORTS[version])), 1,
                    USB_PORTS[version])
    out = {"version": version, "ports": ports}
    if "devid" in opts:
        out["devid"] = _number(spec, "usbctrl", "devid", opts["devid"], 0, 15)
    return out


def parse_usbdev(spec: str) -> dict[str, Any]:
    """xl's usbdev entry: type=hostdev,hostbus=B,hostaddr=A[,controller=C][,port=P]; Xenia
    adds type=tablet|mouse|keyboard (emulated devices, as usbdevice= has) and
    type=storage,path=IMAGE[,format=raw|qcow2][,readonly=0|1] (a USB stick)."""
    opts = _options(spec, ("type", "hostbus", "hostaddr", "controller", "port", "devtype",
                           "path", "format", "readonly"), "usbdev")
    kind = opts.get("type", opts.get("devtype", "hostdev"))
    if kind not in USBDEV_TYPES:
        raise InvalidConfig(f"Failed to parse usbdev '{spec}': type= must be one of "
                            f"{', '.join(USBDEV_TYPES)}")
    out: dict[str, Any] = {"type": kind}
    if kind == "hostdev":
        if "hostbus" not in opts or "hostaddr" not in opts:
            raise InvalidConfig(f"Failed to parse usbdev '{spec}': type=hostdev needs "
                                "hostbus= and hostaddr= (see lsusb)")
        out["hostbus"] = _number(spec, "usbdev", "hostbus", opts["hostbus"], 1, 255)
        out["hostaddr"] = _number(spec, "usbdev", "hostaddr", opts["hostaddr"], 1, 127)
    if kind == "storage":
        out.update(_usb_storage(spec, opts))
    elif {"path", "format", "readonly"} & set(opts):
        raise InvalidConfig(f"Failed to parse usbdev '{spec}': path=, format= and readonly= "
                            "are for type=storage")
    for key in ("controller", "port"):
        if key in opts:
            out[key] = _number(spec, "usbdev", key, opts[key], 0 if key == "controller" else 1,
                               15)
    return out


def _path(spec: str, what: str, path: str, hint: str) -> str:
    if not path.startswith("/") or "\0" in path:
        raise InvalidConfig(f"Failed to parse {what} '{spec}': {hint}")
    return path


def _one_of(spec: str, what: str, key: str, value: str, choices: tuple[str, ...],
            why: str = "") -> str:
    if value not in choices:
        raise InvalidConfig(f"Failed to parse {what} '{spec}': {key}= must be one of "
                            f"{', '.join(choices)}{why}")
    return value


def _usb_storage(spec: str, opts: dict[str, str]) -> dict[str, Any]:
    path = _path(spec, "usbdev", opts.get("path", ""),
                 "type=storage needs path= an absolute path of a disk image")
    fmt = _one_of(spec, "usbdev", "format", opts.get("format", "raw"), USB_STORAGE_FORMATS)
    readonly = _number(spec, "usbdev", "readonly", opts.get("readonly", "0"), 0, 1)
    return {"path": path, "format": fmt, "readonly": readonly}


def parse_p9(spec: str) -> dict[str, str]:
    """xl's p9 entry: tag=T,security_model=none,path=DIR[,type=qemu][,backend=0]. Xen's
    own 9p daemon (type=xen_9pfsd, max-files=, max-open-files=) does not exist on KVM."""
    opts = _options(spec, ("tag", "security_model", "path", "type", "backend", "max-files",
                           "max-open-files"), "p9")
    if opts.get("type", "qemu") != "qemu" or {"max-files", "max-open-files"} & set(opts):
        raise InvalidConfig(f"Failed to parse p9 '{spec}': only type=qemu exists on KVM "
                            "(Xen's xen_9pfsd and its max-files=/max-open-files= do not)")
    if opts.get("backend", "0") not in ("0", "Domain-0"):
        raise InvalidConfig(f"Failed to parse p9 '{spec}': backend= must be 0 (the host); "
                            "driver domains do not serve 9p")
    tag = opts.get("tag", "")
    if not _TAG_RE.match(tag):
        raise InvalidConfig(f"Failed to parse p9 '{spec}': tag= must be 1 to 31 letters, "
                            "digits, '_', '.' or '-'")
    model = _one_of(spec, "p9", "security_model", opts.get("security_model", "none"),
                    P9_MODELS, " (passthrough needs QEMU as root)")
    path = _path(spec, "p9", opts.get("path", ""), "path= must be an absolute directory")
    return {"tag": tag, "security_model": model, "path": path}


def check_p9(shares: list[dict[str, str]], fail: str) -> None:
    if len(shares) > MAX_P9:
        raise InvalidConfig(f"{fail}: at most {MAX_P9} p9 shares")
    tags = [s["tag"] for s in shares]
    if len(set(tags)) != len(tags):
        raise InvalidConfig(f"{fail}: two p9 shares have one tag; give each its own tag=")


def place_usb(ctrls: list[dict[str, int]], devs: list[dict[str, Any]],
              who: str) -> None:
    """Gives each controller its devid and each device its controller and port (the first
    free port of the first controller with one, as xl does); InvalidConfig if none is free
    or two devices want one port."""
    for c in ctrls:
        if "devid" not in c:
            c["devid"] = next(i for i in range(16) if i not in {x.get("devid") for x in ctrls})
    if len({c["devid"] for c in ctrls}) != len(ctrls):
        raise InvalidConfig(f"Failed to place USB controllers of '{who}': two have one devid")
    by_id = {c["devid"]: c for c in ctrls}
    for d in devs:
        if "port" in d and "controller" not in d and by_id:
            d["controller"] = min(by_id)
    taken = {(d["controller"], d["port"]) for d in devs if "port" in d and "controller" in d}
    for d in devs:
        ids = [d["controller"]] if "controller" in d else sorted(by_id)
        for cid in ids:
            if cid not in by_id:
                raise InvalidConfig(f"Failed to place usbdev of '{who}': it has no USB "
                                    f"controller {cid} (see usbctrl=, `xenia usb-list`)")
            if "port" in d and d.get("controller") == cid:
                if d["port"] > by_id[cid]["ports"]:
                    raise InvalidConfig(f"Failed to place usbdev of '{who}': controller {cid} "
                                        f"has {by_id[cid]['ports']} ports, not {d['port']}")
                break
            free = [p for p in range(1, by_id[cid]["ports"] + 1) if (cid, p) not in taken]
            if free and "port" not in d:
                d["controller"], d["port"] = cid, free[0]
                taken.add((cid, free[0]))
                break
        else:
            raise InvalidConfig(f"Failed to place usbdev of '{who}': no free USB port (add "
                                "a controller with usbctrl= or ports=)")
    if len(taken) != len(devs):
        raise InvalidConfig(f"Failed to place usbdev of '{who}': two devices on one port")


def parse_vnuma(value: Any, vcpus: int, memory: int) -> list[dict[str, Any]]:
    """xl's vnuma: a list of nodes, each a list of "pnode=N", "size=MiB", "vcpus=CPULIST",
    "vdistances=D0,D1,...". The nodes' sizes add up to the domain's maxmem, each vCPU is
    in exactly one node, each node has a distance to every node (10 to itself)."""
    if not isinstance(value, list) or not value or not all(isinstance(n, list) for n in value):
        raise InvalidConfig("Failed to parse vnuma: it is a list of nodes, each a list of "
                            "strings (such as [[\"size=512\", \"vcpus=0\", "
                            "\"vdistances=10,20\"], [...]])")
    if len(value) > MAX_VNUMA_NODES:
        raise InvalidConfig(f"Failed to parse vnuma: at most {MAX_VNUMA_NODES} nodes")
    nodes: list[dict[str, Any]] = []
    for i, items in enumerate(value):
        node: dict[str, Any] = {"pnode": None}
        for item in items:
            key, sep, text = str(item).partition("=")
            key, text = key.strip(), text.strip()
            if key == "pnode" and _NUM_RE.match(text):
                node["pnode"] = int(text, 0)
            elif key in ("size", "memory") and _NUM_RE.match(text) and int(text, 0) > 0:
                node["size"] = int(text, 0)
            elif key in ("vcpus", "cpus"):
                try:
                    node["vcpus"] = normalize_cpulist(text)
                except ValueError as e:
                    raise InvalidConfig(f"Failed to parse vnuma node {i}: vcpus '{text}': "
                                        f"{e}") from None
            elif key == "vdistances" and all(_NUM_RE.match(d.strip())
                                             for d in text.split(",")):
                node["distances"] = [int(d, 0) for d in text.split(",")]
            else:
                raise InvalidConfig(f"Failed to parse vnuma node {i}: bad item '{item}' "
                                    "(pnode=N, size=MiB, vcpus=CPULIST, vdistances=D,...)")
        nodes.append(node)
    check_vnuma(nodes, vcpus, memory, "Failed to parse vnuma")
    return nodes


def vnuma_cpus(text: str) -> list[int]:
    cpus: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus += range(int(lo), int(hi or lo) + 1)
    return cpus


def check_vnuma(nodes: list[dict[str, Any]], vcpus: int, memory: int, fail: str) -> None:
    if not nodes:
        return
    seen: list[int] = []
    for i, n in enumerate(nodes):
        if not isinstance(n, dict) or not isinstance(n.get("size"), int) or not isinstance(
                n.get("vcpus"), str):
            raise InvalidConfig(f"{fail}: node {i} needs size= and vcpus=")
        try:
            cpus = vnuma_cpus(normalize_cpulist(n["vcpus"]))
        except ValueError as e:
            raise InvalidConfig(f"{fail}: node {i}'s vcpus '{n['vcpus']}': {e}") from None
        seen += cpus
        dist = n.get("distances") or [10 if j == i else 20 for j in range(len(nodes))]
        if (not isinstance(dist, list) or len(dist) != len(nodes)
                or not all(isinstance(d, int) and 10 <= d <= 255 for d in dist)
                or dist[i] != 10):
            raise InvalidConfig(f"{fail}: node {i}'s vdistances must be {len(nodes)} numbers "
                                "from 10 to 255, 10 to itself")
        n["distances"] = dist
        if n.get("pnode") is not None and not isinstance(n["pnode"], int):
            raise InvalidConfig(f"{fail}: node {i}'s pnode must be a number")
    if sorted(seen) != list(range(vcpus)):
        raise InvalidConfig(f"{fail}: the nodes' vcpus must name each of vCPUs 0-{vcpus - 1} "
                            "(maxvcpus) exactly once")
    total = sum(n["size"] for n in nodes)
    if total != memory:
        raise InvalidConfig(f"{fail}: the nodes' sizes add up to {total} MiB, not the "
                            f"domain's {memory} MiB (maxmem)")


def read_devices(r: Reader, cfg: DomainConfig) -> None:
    """Reads cpuid, nestedhvm, vnuma, usbctrl, usbdev, usbversion, soundhw, keymap, p9,
    vscsi."""
    raw = r.get("cpuid")
    if raw is not None:
        value = raw if isinstance(raw, list) else r.string("cpuid") or ""
        cfg.cpuid = _at(r, "cpuid", lambda: parse_cpuid(
            [str(v) for v in value] if isinstance(value, list) else value))
    cfg.nestedhvm = r.boolean("nestedhvm")
    raw = r.get("vnuma")
    if raw is not None:
        cfg.vnuma = _at(r, "vnuma", lambda: parse_vnuma(raw, cfg.effective_maxvcpus,
                                                        cfg.effective_maxmem))
    ctrls = r.each("usbctrl", parse_usbctrl)
    devs = r.each("usbdev", parse_usbdev)
    if len(ctrls) > MAX_USBCTRL:
        raise r.fail("usbctrl", f"at most {MAX_USBCTRL} USB controllers")
    if devs and not ctrls:
        ctrls = [{"version": 3, "ports": 8}]  # as xl: usbdev alone makes a controller
    _at(r, "usbdev", lambda: place_usb(ctrls, devs, cfg.name))
    cfg.usbctrl, cfg.usbdev = ctrls, devs
    version = r.integer("usbversion", 1, 3)
    if version is not None:
        cfg.usbversion = version
    sound = r.items("soundhw", single_ok=True) or []
    cfg.soundhw = [s.strip() for item in sound for s in item.split(",") if s.strip()]
    if cfg.soundhw == ["all"]:
        cfg.soundhw = list(SOUNDHW)
    for name in cfg.soundhw:
        if name not in SOUNDHW:
            raise r.fail("soundhw", f"unknown sound card '{name}' (one of "
                                    f"{', '.join(SOUNDHW)}, or all)")
    cfg.keymap = r.choice("keymap", KEYMAPS)
    cfg.p9 = r.each("p9", parse_p9)
    _at(r, "p9", lambda: check_p9(cfg.p9, "Failed to parse p9"))
    cfg.vscsi = r.each("vscsi", parse_vscsi)
    _at(r, "vscsi", lambda: check_vscsi(cfg.vscsi, "Failed to parse vscsi"))
    if cfg.firmware in PVGRUBS and cfg.type != "container":
        # Xen's PV-GRUB runs GRUB inside the guest; Xenia reads the same grub config on
        # the guest's disk from the host, as for bootloader = "pygrub".
        log.warning("%s: notice: firmware '%s' boots the kernel the grub config on the "
                    "guest's first disk names, read by the host as pygrub does", cfg.source,
                    cfg.firmware)
        cfg.firmware = None
        cfg.bootloader = cfg.bootloader or "pygrub"


def _at(r: Reader, key: str, parse: Any) -> Any:
    """parse(), with the key's location added to its InvalidConfig."""
    try:
        return parse()
    except InvalidConfig as e:
        raise r.fail(key, e.message) from None


def check_values(cfg: DomainConfig) -> None:
    """The values above in a config from the API, which no parser checked."""
    fail = f"Failed to create domain '{cfg.name}'"
    bad = [f for f in cfg.cpuid if not valid_flag(f)]
    if bad:
        raise InvalidConfig(f"{fail}: bad cpuid setting '{bad[0]}' (FLAG=on|off)")
    check_vnuma(cfg.vnuma, cfg.effective_maxvcpus, cfg.effective_maxmem, fail)
    for name in cfg.soundhw:
        if name not in SOUNDHW:
            raise InvalidConfig(f"{fail}: unknown sound card '{name}'")
    if cfg.keymap is not None and cfg.keymap not in KEYMAPS:
        raise InvalidConfig(f"{fail}: unknown keymap '{cfg.keymap}'")
    if cfg.usbversion not in (None, *USB_VERSIONS):
        raise InvalidConfig(f"{fail}: usbversion must be 1, 2 or 3")
    for c in cfg.usbctrl:
        spec = ",".join(f"{k}={v}" for k, v in c.items()) if isinstance(c, dict) else "?"
        if not isinstance(c, dict) or parse_usbctrl(spec) != c:
            raise InvalidConfig(f"{fail}: bad usbctrl entry {c!r}")
    for d in cfg.usbdev:
        spec = ",".join(f"{k}={v}" for k, v in d.items()) if isinstance(d, dict) else "?"
        if not isinstance(d, dict) or parse_usbdev(spec) != d:
            raise InvalidConfig(f"{fail}: bad usbdev entry {d!r}")
    place_usb(cfg.usbctrl, cfg.usbdev, cfg.name)
    for p in cfg.p9:
        spec = ",".join(f"{k}={v}" for k, v in p.items()) if isinstance(p, dict) else "?"
        if not isinstance(p, dict) or parse_p9(spec) != p:
            raise InvalidConfig(f"{fail}: bad p9 entry {p!r}")
    check_p9(cfg.p9, fail)
    check_vscsi(cfg.vscsi, fail)
