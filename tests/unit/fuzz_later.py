"""Strategies for the xl keys added after the fuzz campaign began (tests/unit/test_fuzz.py):
spice*, smbios, channel, serial `file:`, p9, usbctrl/usbdev, vscsi, vtpm, keymap,
soundhw, vnuma, cpuid, viridian, rtc and watchdog.

Each GROUPS entry makes the xl keys of one feature, mostly plausible (so that many
configs validate and reach the QEMU argv) with hostile strings where a user's string
goes. The host files they name live under ROOT, made by `make_root` with names that
hold commas and '=' (a path is the one user string that must reach QEMU as it is).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from xenia.config.cpuid import FLAGS
from xenia.config.extras import SMBIOS_FIELDS
from xenia.config.xldevices import KEYMAPS, SOUNDHW

ROOT = Path(tempfile.gettempdir()) / f"xenia-fuzz-{os.getpid()}"
# Directory and file names under ROOT: plain, and hostile to QemuOpts.
NAMES = ["plain", "a,b", "x,readonly=on", "=x", "id=evil,,", "sp ace=on"]
# The specs that split at commas (p9, usbdev, vscsi) cannot name a path with one.
SPEC_NAMES = [n for n in NAMES if "," not in n]
SPICE_TLS = ROOT / "spice-tls"
SPICE_TLS_FILES = ("ca-cert.pem", "server-cert.pem", "server-key.pem")
# The features a later-keys config may have; the fuzz asserts each reaches a valid argv.
FEATURES = ("spice", "smbios", "channel", "serial", "p9", "usb", "vscsi", "vtpm", "keymap",
            "soundhw", "vnuma", "cpuid", "viridian", "rtc", "watchdog")


def make_root() -> None:
    for name in NAMES:
        (ROOT / "dirs" / name).mkdir(parents=True, exist_ok=True)
        (ROOT / "files" / name).mkdir(parents=True, exist_ok=True)
        (ROOT / "files" / name / "img").write_bytes(b"\0" * 512)
    (ROOT / "sockets").mkdir(exist_ok=True)
    SPICE_TLS.mkdir(exist_ok=True)
    for f in SPICE_TLS_FILES:
        (SPICE_TLS / f).write_text("x")


def remove_root() -> None:
    shutil.rmtree(ROOT, ignore_errors=True)


def _hostile() -> st.SearchStrategy[str]:
    return st.text(alphabet=st.sampled_from(list(",=;:%[]'\"\\\n -./@^") + ["\x00", "a", "1"]),
                   max_size=12)


def _maybe(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the plausible value, sometimes a hostile string."""
    return st.one_of(plausible, plausible, plausible, _hostile())


# A user's string as a config's author writes one: commas, '=', quotes, no NUL.
_text = st.text(alphabet=st.sampled_from(list(",=:%'\" -./@^") + ["a", "B", "1", "é"]),
                min_size=1, max_size=12)
_name = st.sampled_from(NAMES)
_dir = st.sampled_from(SPEC_NAMES).map(lambda n: str(ROOT / "dirs" / n))
_file = st.sampled_from(SPEC_NAMES).map(lambda n: str(ROOT / "files" / n / "img"))
_socket = st.tuples(_name, st.integers(0, 9)).map(
    lambda t: str(ROOT / "sockets" / f"{t[0]}{t[1]}"))
_flag = st.integers(0, 1)

_spice = st.fixed_dictionaries(
    {"spice": st.just(1), "spiceport": _maybe(st.integers(5900, 5999)),
     "spicedisable_ticketing": st.sampled_from([1, 1, 0]), "spicepasswd": _text},
    optional={
        "spicehost": _maybe(st.sampled_from([
            "127.0.0.1", "0.0.0.0", "::1", "fe80::1%lo", "fe80::1%2",
            "fe80::1%a,disable-ticketing=on,gl=on", "fe80::1%a=b", "1.2.3.4,gl=on"])),
        "spicetls_port": st.integers(6000, 6010),
        "spiceagent_mouse": _flag, "spicevdagent": _flag, "spice_clipboard_sharing": _flag,
        "spice_image_compression": st.sampled_from(
            ["auto_glz", "auto_lz", "quic", "glz", "lz", "off", "jpeg", "quic,gl=on"]),
        "spice_streaming_video": st.sampled_from(["filter", "all", "off", "x"]),
        "spiceusbredirection": st.integers(0, 16),
    })
_smbios_item = st.tuples(st.sampled_from([*SMBIOS_FIELDS, "battery_x", "type"]),
                         _text).map(lambda t: f"{t[0]}={t[1]}")
_smbios = st.lists(st.one_of(_smbios_item, _smbios_item, _smbios_item, _smbios_item,
                             _hostile()), min_size=1, max_size=2).map(lambda v: {"smbios": v})
_channel_one = st.one_of(
    st.tuples(st.sampled_from(["org.qemu.guest_agent.0", "a", "b-1"]),
              st.sampled_from(["pty", "socket", "x"])).map(
        lambda t: f"name={t[0]},connection={t[1]}"),
    st.tuples(st.sampled_from(["org.x.0", "c"]), _socket).map(
        lambda t: f"name={t[0]},connection=socket,path={t[1]}"),
    _hostile())
_channel_good = st.tuples(st.sampled_from(["org.qemu.guest_agent.0", "a", "b-1"]),
                          st.one_of(st.just(None), _socket)).map(
    lambda t: [f"name={t[0]},connection=" + (f"socket,path={t[1]}" if t[1] else "pty")])
_channel = st.one_of(_channel_good, _channel_good, st.lists(_channel_one, min_size=1,
                                                             max_size=2)).map(
    lambda v: {"channel": v})
_serial = st.lists(st.one_of(
    st.sampled_from(["pty", "null", "none", "tcp:1.2.3.4:5"]),
    st.tuples(_name, st.integers(0, 3)).map(
        lambda t: f"file:{ROOT / 'files' / t[0]}/s{t[1]}.log"),
    _hostile().map(lambda s: "file:" + s)), min_size=1, max_size=3).map(
    lambda v: {"serial": ["pty", *v]})
_p9_one = st.one_of(
    st.tuples(st.sampled_from(["t", "share.1", "a b"]), _dir,
              st.sampled_from(["", ",security_model=none", ",security_model=mapped",
                               ",security_model=passthrough"])).map(
        lambda t: f"tag={t[0]},path={t[1]}{t[2]}"),
    _hostile())
_p9_good = st.tuples(st.sampled_from(["t", "share.1"]), _dir).map(
    lambda t: [f"tag={t[0]},path={t[1]}"])
_p9 = st.one_of(_p9_good, _p9_good, st.lists(_p9_one, min_size=1, max_size=2)).map(
    lambda v: {"p9": v})
_usbctrl = st.lists(st.one_of(
    st.tuples(st.sampled_from([1, 2, 3]), st.integers(1, 16)).map(
        lambda t: f"version={t[0]},ports={t[1]}"),
    _hostile()), max_size=2)
_usbdev = st.lists(st.one_of(
    st.sampled_from(["type=tablet", "type=mouse", "type=keyboard", "type=scanner",
                     "type=hostdev,hostbus=1,hostaddr=2", "type=tablet,port=1"]),
    st.tuples(_file, st.sampled_from(["", ",readonly=1", ",format=qcow2", ",format=x"])).map(
        lambda t: f"type=storage,path={t[0]}{t[1]}"),
    _hostile()), min_size=1, max_size=3)
_usbdev_good = st.lists(st.one_of(
    st.sampled_from(["type=tablet", "type=mouse", "type=keyboard"]),
    _file.map(lambda f: f"type=storage,path={f}")), min_size=1, max_size=2)
_usb = st.tuples(st.one_of(st.just([]), _usbctrl),
                 st.one_of(_usbdev_good, _usbdev_good, _usbdev)).map(
    lambda t: {"usbdev": t[1], **({"usbctrl": t[0]} if t[0] else {})})
_vscsi_good = st.tuples(_file, st.integers(0, 3), st.integers(0, 255),
                        st.integers(0, 16383)).map(lambda t: [f"{t[0]}, {t[1]}:0:{t[2]}:{t[3]}"])
_vscsi_any = st.lists(st.one_of(
    st.tuples(st.one_of(_file, st.just("/dev/null"), _hostile()), st.integers(0, 3),
              st.integers(0, 1), st.integers(0, 300), st.integers(0, 20000),
              st.sampled_from(["", ", rw", ", feature-host"])).map(
        lambda t: f"{t[0]}, {t[1]}:{t[2]}:{t[3]}:{t[4]}{t[5]}"),
    _hostile()), min_size=1, max_size=2)
_vscsi = st.one_of(_vscsi_good, _vscsi_good, _vscsi_any).map(lambda v: {"vscsi": v})
_vtpm_good = st.one_of(st.just("backend=0"), st.uuids().map(lambda u: f"backend=0,uuid={u}"))
_vtpm = _maybe(st.one_of(_vtpm_good, _vtpm_good, st.sampled_from(["backend=1", "uuid=x", ""]))
               ).map(lambda s: {"vtpm": [s]})
_keymap = _maybe(st.sampled_from([*KEYMAPS, "klingon", "de,x=1", "../x"])).map(
    lambda k: {"keymap": k})
_soundhw = _maybe(st.one_of(
    st.lists(st.sampled_from(SOUNDHW), min_size=1, max_size=4, unique=True).map(",".join),
    st.sampled_from(["all", "gus", "hda,,x=1"]))).map(lambda s: {"soundhw": s})
_vnuma_node = st.lists(st.one_of(
    st.sampled_from(["size=128", "memory=128", "size=64", "pnode=0", "vdistances=10,20",
                     "vdistances=20,10", "colour=red", "vcpus=0", "vcpus=1", "vcpus=0-1"]),
    _hostile()), min_size=1, max_size=4)
# Two nodes that fit BASE (256 MiB, 2 vCPUs): sizes, vCPUs and distances varied.
_vnuma_good = st.tuples(st.sampled_from([64, 128, 192]), st.integers(0, 1),
                        st.integers(11, 255), st.booleans()).map(lambda t: [
    [f"size={t[0]}", f"vcpus={t[1]}"] + ([f"vdistances=10,{t[2]}"] if t[3] else []),
    [f"memory={256 - t[0]}", f"vcpus={1 - t[1]}"] + ([f"vdistances={t[2]},10"] if t[3] else [])])
_vnuma = st.one_of(_vnuma_good, _vnuma_good, st.lists(_vnuma_node, min_size=1, max_size=2)
                   ).map(lambda v: {"vnuma": v})
_cpuid_good = st.lists(st.tuples(st.sampled_from(sorted(FLAGS)), st.sampled_from("01")),
                       min_size=1, max_size=4).map(
    lambda fs: "host," + ",".join(f"{n}={v}" for n, v in fs))
_cpuid = st.one_of(
    _cpuid_good, _cpuid_good,
    _maybe(st.sampled_from(["host,frobnicate=1", "host,aes=1,avx=k", "svm=0", "host"])),
    st.lists(st.sampled_from(["0x1:ecx=" + "x" * 31 + "1", "0x1:ecx=short",
                              "0x80000001:edx=" + "x" * 27 + "1" + "x" * 4, "aes=on,kvm=off"]),
             min_size=1, max_size=2)).map(lambda c: {"cpuid": c})
_viridian = st.one_of(
    _flag, st.lists(st.sampled_from(["defaults", "!crash_ctl", "stimer", "base", "freq",
                                     "bogus"]), min_size=1, max_size=3)).map(
    lambda v: {"viridian": v})
_rtc = st.fixed_dictionaries({}, optional={
    # A string: xl.cfg has no negative numbers ("-3600", as xl's own examples write it).
    "rtc_timeoffset": _maybe(st.integers(-10**10, 10**10).map(str)),
    "localtime": _flag}).filter(bool)
_watchdog = st.fixed_dictionaries(
    {"watchdog": _maybe(st.sampled_from(["i6300esb", "ib700", "x"]))},
    optional={"on_watchdog": st.sampled_from(["destroy", "restart", "preserve", "x"])})

GROUPS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "spice": _spice, "smbios": _smbios, "channel": _channel, "serial": _serial, "p9": _p9,
    "usb": _usb, "vscsi": _vscsi, "vtpm": _vtpm, "keymap": _keymap, "soundhw": _soundhw,
    "vnuma": _vnuma, "cpuid": _cpuid, "viridian": _viridian, "rtc": _rtc,
    "watchdog": _watchdog,
}
assert tuple(GROUPS) == FEATURES

# An hvm domain that validates (2 vCPUs, 256 MiB: vnuma's two nodes fit it).
BASE = {"name": "later", "type": "hvm", "kernel": "/bin/true", "memory": 256, "vcpus": 2,
        "disk": ["/srv/a.img,raw,hda,rw"]}


def _merge(groups: list[tuple[str, dict[str, Any]]]) -> tuple[list[str], dict[str, Any]]:
    out = dict(BASE)
    for _, keys in groups:
        out.update(keys)
    return [name for name, _ in groups], out


# One to three features on the base config: (their names, the xl keys).
later_configs = st.lists(
    st.sampled_from(FEATURES).flatmap(lambda f: GROUPS[f].map(lambda keys: (f, keys))),
    min_size=1, max_size=3, unique_by=lambda t: t[0]).map(_merge)
