"""Disk specs: every vector of Xen's tools/xl/check-xl-disk-parse, and more."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xenia.config.diskspec import parse_disk_args, parse_disk_spec
from xenia.config.model import DiskSpec
from xenia.config.vdev import vdev_number
from xenia.errors import InvalidConfig

# The expected results as check-xl-disk-parse prints them (libxl's JSON).
GUEST_VOLUME = {"pdev_path": "/dev/vg/guest-volume", "vdev": "hda", "format": "raw",
                "readwrite": 1}
IMAGE_ISO = {"pdev_path": "/root/image.iso", "vdev": "hdc", "format": "raw",
             "removable": 1, "is_cdrom": 1}
PHY_XVDB = {"pdev_path": "/dev/vg/guest-volume", "vdev": "xvdb", "backend": "phy",
            "format": "raw", "readwrite": 1}
EMPTY_CDROM = {"pdev_path": "", "vdev": "hdc", "format": "empty", "removable": 1,
               "is_cdrom": 1}
EMPTY_CDROM_NO_PATH = {"vdev": "hdc", "format": "empty", "removable": 1, "is_cdrom": 1}
ISCSI = {"pdev_path": "iqn.2001-05.com.equallogic:0-8a0906-23fe93404-c82797962054a96d-"
                      "examplehost",
         "vdev": "xvda", "format": "raw", "script": "block-iscsi", "readwrite": 1}
DRBD = {"pdev_path": "app01", "vdev": "hda", "format": "raw", "script": "block-drbd",
        "readwrite": 1}
DISCARD = {"pdev_path": "/some/disk/image.raw", "vdev": "hda", "format": "raw",
           "readwrite": 1, "discard_enable": "True"}
NO_DISCARD_CDROM = {"pdev_path": "/some/disk/image.iso", "vdev": "hda", "format": "raw",
                    "removable": 1, "is_cdrom": 1, "discard_enable": "False"}
TRUSTED = {"pdev_path": "/some/disk/image.raw", "vdev": "hda", "format": "raw",
           "readwrite": 1, "trusted": "True"}
UNTRUSTED = {"pdev_path": "/some/disk/image.raw", "vdev": "hda", "format": "raw",
             "readwrite": 1, "trusted": "False"}

# (arguments of `xl block-attach 0 ...`, expected JSON or None for a failure), in the
# script's order; each shell word is one argument.
XEN_VECTORS: list[tuple[list[str], dict[str, Any] | None]] = [
    (["foo"], None),
    (["/dev/vg/guest-volume,,hda"], GUEST_VOLUME),
    (["/dev/vg/guest-volume,raw,hda,rw"], GUEST_VOLUME),
    (["format=raw, vdev=hda, access=rw, target=/dev/vg/guest-volume"], GUEST_VOLUME),
    (["format=raw", "vdev=hda", "access=rw", "target=/dev/vg/guest-volume"], GUEST_VOLUME),
    (["raw:/dev/vg/guest-volume,hda,w"], GUEST_VOLUME),
    (["/root/image.iso,,hdc,cdrom"], IMAGE_ISO),
    (["/root/image.iso,,hdc,,cdrom"], IMAGE_ISO),
    (["/root/image.iso,raw,hdc,devtype=cdrom"], IMAGE_ISO),
    (["format=raw, vdev=hdc, access=ro, devtype=cdrom, target=/root/image.iso"], IMAGE_ISO),
    (["format=raw", "vdev=hdc", "access=ro", "devtype=cdrom", "target=/root/image.iso"],
     IMAGE_ISO),
    (["raw:/root/image.iso,hdc:cdrom,ro"], IMAGE_ISO),
    (["backendtype=phy,vdev=xvdb,access=w,target=/dev/vg/guest-volume"], PHY_XVDB),
    (["devtype=cdrom,,,hdc"], EMPTY_CDROM),
    ([",,hdc:cdrom,r"], EMPTY_CDROM),
    ([",hdc:cdrom,r"], EMPTY_CDROM),
    (["vdev=hdc,access=r,devtype=cdrom,target="], EMPTY_CDROM),
    ([",empty,hdc:cdrom,r"], EMPTY_CDROM),
    (["vdev=hdc,access=r,devtype=cdrom,format=empty"], EMPTY_CDROM_NO_PATH),
    (["vdev=hdc,access=r,devtype=cdrom"], EMPTY_CDROM_NO_PATH),
    (["iscsi:iqn.2001-05.com.equallogic:0-8a0906-23fe93404-c82797962054a96d-examplehost,"
      "xvda,w"], ISCSI),
    (["vdev=xvda,access=w,script=block-iscsi,target=iqn.2001-05.com.equallogic:"
      "0-8a0906-23fe93404-c82797962054a96d-examplehost"], ISCSI),
    (["drbd:app01,hda,w"], DRBD),
    (["discard", "vdev=hda", "target=/some/disk/image.raw"], DISCARD),
    (["discard", "vdev=hda", "target=/some/disk/image.raw"], DISCARD),
    (["cdrom", "no-discard", "vdev=hda", "target=/some/disk/image.iso"], NO_DISCARD_CDROM),
    (["trusted", "vdev=hda", "target=/some/disk/image.raw"], TRUSTED),
    (["untrusted", "vdev=hda", "target=/some/disk/image.raw"], UNTRUSTED),
]


def from_xl(xl: dict[str, Any]) -> dict[str, Any]:
    """The DiskSpec fields that libxl's JSON `xl` describes.

    libxl keeps "" and no target apart for an empty cdrom; Xenia has None for both.
    """
    flags = {"True": True, "False": False, None: None}
    return {
        "vdev": xl["vdev"],
        "target": xl.get("pdev_path") or None,
        "format": xl["format"],
        "access": "rw" if xl.get("readwrite") else "ro",
        "devtype": "cdrom" if xl.get("is_cdrom") else "disk",
        "backendtype": xl.get("backend"),
        "script": xl.get("script"),
        "direct_io_safe": False,
        "discard": flags[xl.get("discard_enable")],
        "trusted": flags[xl.get("trusted")],
        "backend": None,
        "specification": None,
    }


def fields(disk: DiskSpec) -> dict[str, Any]:
    result = dict(vars(disk))
    del result["spec"]
    return result


@pytest.mark.parametrize(("args", "expected"), XEN_VECTORS,
                         ids=[" ".join(a) for a, _ in XEN_VECTORS])
def test_xen_vectors(args: list[str], expected: dict[str, Any] | None) -> None:
    if expected is None:
        with pytest.raises(InvalidConfig):
            parse_disk_args(args)
        return
    disk = parse_disk_spec(args[0]) if len(args) == 1 else parse_disk_args(args)
    assert fields(disk) == from_xl(expected)
    assert disk.is_cdrom == bool(expected.get("is_cdrom"))
    assert disk.readonly == (not expected.get("readwrite"))


@pytest.mark.parametrize(("args", "expected"),
                         [(a, e) for a, e in XEN_VECTORS if len(a) > 1 and e])
def test_separate_arguments_equal_one_comma_joined_spec(
        args: list[str], expected: dict[str, Any]) -> None:
    assert fields(parse_disk_spec(",".join(args))) == from_xl(expected)


def test_spec_is_kept() -> None:
    assert parse_disk_spec("/x,,xvda").spec == "/x,,xvda"
    assert parse_disk_args(["vdev=xvda", "target=/x"]).spec == "vdev=xvda,target=/x"


@pytest.mark.parametrize(
    ("spec", "target", "fmt"),
    [
        ("phy:/dev/sda,xvda,w", "/dev/sda", "raw"),
        ("file:/img.raw,xvda,w", "/img.raw", "raw"),
        ("tap:aio:/img.raw,xvda,w", "/img.raw", "raw"),
        ("tap:qcow2:/img.qcow2,xvda,w", "/img.qcow2", "qcow2"),
        ("tap2:vhd:/img.vhd,xvda,w", "/img.vhd", "vhd"),
        ("tapdisk:aio:/img,xvda,w", "/img", "raw"),
        ("qcow2:/img.qcow2,xvda,w", "/img.qcow2", "qcow2"),
        ("qcow:/img.qcow,xvda,w", "/img.qcow", "qcow"),
        ("ioemu:/img,xvda,w", "/img", "raw"),
        ("aio:/img,xvda,w", "/img", "raw"),
        ("phy:hda1,hda1,w", "hda1", "raw"),  # xmexample1
        ("/img.qcow2,qcow2,xvda", "/img.qcow2", "qcow2"),
        ("/img,qed,xvda", "/img", "qed"),
        ("format=vhd,vdev=xvda,target=/img", "/img", "vhd"),
    ],
)
def test_deprecated_prefixes_and_formats(spec: str, target: str, fmt: str) -> None:
    disk = parse_disk_spec(spec)
    assert (disk.target, disk.format) == (target, fmt)


@pytest.mark.parametrize(
    ("spec", "script"),
    [("nbd:host:1234,xvda,w", "block-nbd"), ("enbd:x,xvda,w", "block-enbd"),
     ("drbd:r0,xvda,w", "block-drbd"), ("iscsi:iqn.x,xvda,w", "block-iscsi")],
)
def test_script_prefixes(spec: str, script: str) -> None:
    assert parse_disk_spec(spec).script == script


def test_target_takes_the_rest_commas_and_all() -> None:
    disk = parse_disk_spec("vdev=xvda, access=ro, target=/srv/a,b:c=d ")
    assert disk.target == "/srv/a,b:c=d "
    assert disk.access == "ro"


def test_target_may_follow_an_empty_positional_target() -> None:
    assert parse_disk_spec(",raw,xvda,rw,target=/x").target == "/x"


@pytest.mark.parametrize(
    ("spec", "attr", "value"),
    [
        ("/x,,xvda,direct-io-safe", "direct_io_safe", True),
        ("/x,,xvda,discard", "discard", True),
        ("/x,,xvda,no-discard", "discard", False),
        ("/x,,xvda,trusted", "trusted", True),
        ("/x,,xvda,untrusted", "trusted", False),
        ("/x,,xvda,backendtype=qdisk", "backendtype", "qdisk"),
        ("/x,,xvda,backendtype=standalone", "backendtype", "standalone"),
        ("/x,,xvda,backend=driverdom", "backend", "driverdom"),
        ("/x,,xvda,specification=virtio", "specification", "virtio"),
        ("/x,,xvda,script=block-foo", "script", "block-foo"),
        ("/x,,xvda,r", "access", "ro"),
        ("/x,,xvda,ro", "access", "ro"),
        ("/x,,xvda,w", "access", "rw"),
        ("/x,,xvda,", "access", "rw"),
        ("/x,,xvda,devtype=disk", "devtype", "disk"),
        ("/x,,hdc:disk,r", "devtype", "disk"),
        ("/x,,hdc,w,cdrom", "access", "ro"),  # cdroms are read-only
        ("  /x,,  xvda", "vdev", "xvda"),  # blanks before a parameter are ignored
        ("/x,,xvda,format=raw", "format", "raw"),  # same value again is fine
    ],
)
def test_parameters(spec: str, attr: str, value: object) -> None:
    assert getattr(parse_disk_spec(spec), attr) == value


@pytest.mark.parametrize(
    ("spec", "cause"),
    [
        ("", "no vdev specified"),
        ("/x", "no vdev specified"),
        ("vdev=xvda", "no target specified"),
        (",,xvda", "no target specified"),
        ("/x,raw,xvda,rw,extra", "too many positional parameters: 'extra'"),
        ("/x,xvda,w", "unknown value for format: 'xvda'"),
        ("/x,raw,xvda,rx", "unknown value for access: 'rx'"),
        ("/x,,xvda,format=qcow3", "unknown value for format: 'qcow3'"),
        ("/x,qcow2,xvda,format=raw", "format respecified"),
        ("/x,,xvda,backendtype=nbd", "unknown value for backendtype: 'nbd'"),
        ("/x,,xvda,specification=vmbus", "unknown value for specification"),
        ("/x,,xvda,devtype=floppy", "unknown value for devtype: 'devtype=floppy'"),
        ("/x,,hdc:floppy", "unknown deprecated type: 'floppy'"),
        ("/x,,xvda,vdev=xvdb", "vdev respecified"),
        ("/x,,xvda,target=/y", "target respecified"),
        ("script=a,script=b,/x,,xvda", "script respecified"),
        ("vdev=xvda,colour=red,target=/x", "unknown parameter 'colour'"),
        ("floppy:/x,xvda", "unknown deprecated disk prefix: 'floppy:'"),
        ("/a=b,,xvda", "bad disk syntax near '=b,,xvda'"),
        ("/x,,xvda0", "invalid vdev 'xvda0'"),
        ("/x,,hde", "invalid vdev 'hde'"),
        ("/x,,vda", "invalid vdev 'vda'"),
        ("/x,,xvda ", "invalid vdev 'xvda '"),
        ("/x,empty,xvda", "format 'empty' with a target"),
    ],
)
def test_errors(spec: str, cause: str) -> None:
    with pytest.raises(InvalidConfig) as info:
        parse_disk_spec(spec)
    assert str(info.value).startswith(f"Failed to parse disk spec '{spec}': ")
    assert cause in str(info.value)


def test_colo_parameters_are_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="xenia.config"):
        disk = parse_disk_spec("/x,,xvda,colo,colo-host=h,colo-port=1,grant_usage=1")
    assert disk.vdev == "xvda"
    assert "colo" in caplog.text and "grant_usage" in caplog.text


@pytest.mark.parametrize(
    ("vdev", "number"),
    [
        ("xvda", 202 << 8),
        ("xvdb", (202 << 8) | 16),
        ("xvda1", (202 << 8) | 1),
        ("xvdp15", (202 << 8) | (15 << 4) | 15),
        ("xvdq", (1 << 28) | (16 << 8)),
        ("xvda16", (1 << 28) | 16),
        ("xvdaa", (1 << 28) | (26 << 8)),
        ("xvda255", (1 << 28) | 255),
        ("d0p0", 202 << 8),
        ("d0p1", (202 << 8) | 1),
        ("d16p0", (1 << 28) | (16 << 8)),
        ("hda", 3 << 8),
        ("hdb", (3 << 8) | 64),
        ("hdc", 22 << 8),
        ("hdd1", (22 << 8) | 64 | 1),
        ("hda63", (3 << 8) | 63),
        ("sda", 8 << 8),
        ("sdb2", (8 << 8) | 16 | 2),
        ("sdp15", (8 << 8) | (15 << 4) | 15),
        ("51712", 51712),
        ("0xca00", 51712),
    ],
)
def test_vdev_numbers(vdev: str, number: int) -> None:
    assert vdev_number(vdev) == number


@pytest.mark.parametrize(
    "vdev",
    ["", "xvd", "xvdA", "xvda0", "xvda01", "xvda256", "xvd-a", "hd", "hde", "hda64",
     "sdq", "sda16", "vda", "d0", "d2000000p0", "d0p256", "xvda1x", "4294967296", "sda +1",
     "xvd" + "z" * 10],
)
def test_bad_vdevs(vdev: str) -> None:
    assert vdev_number(vdev) is None


@settings(max_examples=400)
@given(st.text(alphabet="abcdhprswxv0129:,=/ -\n", max_size=40) | st.text(max_size=40))
def test_any_spec_parses_or_raises_invalid_config(spec: str) -> None:
    try:
        disk = parse_disk_spec(spec)
    except InvalidConfig as e:
        assert str(e).startswith("Failed to parse disk spec ")
    else:
        assert vdev_number(disk.vdev) is not None
        assert disk.target or disk.is_cdrom
