"""Hostile strings in every QEMU option that carries a user's value: commas, '=', quotes
and newlines never add an option or a key (tests/unit/qemuopts.py reads the argv the way
QEMU splits it). The checks of names, paths and addresses upstream are bypassed on
purpose: the command line builder must hold on its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.qemuopts import QemuArgvError, check_argv, parse_argv, split_opts, values
from tests.unit.test_cmdline import FILES, UUID
from xenia.config.model import DiskSpec, DomainConfig, VifSpec
from xenia.devices import display, spice
from xenia.drivers.qemu_devices import QemuDevices, argv_devices
from xenia.errors import InvalidConfig
from xenia.qemu.cmdline import RunFiles, build_argv
from xenia.qemu.opts import escape_opt, machine_arg
from xenia.store.base import DomainRecord

HOSTILE = [
    "a,b",
    "a,,b",
    "x,readonly=on",
    "=x",
    "a=b",
    "a=b,c=d",
    "'quoted',\"double\"",
    "line\nbreak,id=evil",
    "trailing,",
    ",leading",
    "nofoo,bar",
    "-S",
    "{\"driver\":\"x\"}",
]


def argv(cfg: DomainConfig, **kw: object) -> list[str]:
    rec = DomainRecord(uuid=UUID, name=cfg.name, domid=7, config=cfg)
    QemuDevices(None, None, None).prepare(rec)  # type: ignore[arg-type]
    rec.runtime["taps"] = {str(v.devid): f"vif7.{v.devid}" for v in rec.config.vifs}
    layout, devices = argv_devices(rec)
    return build_argv(rec.config, uuid=UUID, accel="tcg", files=kw.pop("files", FILES),
                      layout=layout, devices=devices, **kw)  # type: ignore[arg-type]


def test_the_reader_sees_an_injection() -> None:
    # The reader must catch what the builder must prevent, or these tests prove nothing.
    assert split_opts("q35,acpi=off", "type") == [("type", "q35"), ("acpi", "off")]
    assert split_opts("a=b,x", "type") == [("a", "b"), ("x", "on")]
    assert split_opts("type=a,,b", "type") == [("type", "a,b")]
    with pytest.raises(QemuArgvError, match="did not mean"):
        check_argv(["qemu", "-machine", "q35,memory-backend=m"])
    with pytest.raises(QemuArgvError, match="did not mean"):
        check_argv(["qemu", "-vnc", "0.0.0.0:1,to=99"])
    with pytest.raises(QemuArgvError, match="unknown option"):
        check_argv(["qemu", "-kernel", "/k", "-S", "-hda", "/x"])


@pytest.mark.parametrize("value", HOSTILE)
def test_name(value: str) -> None:
    opts = check_argv(argv(DomainConfig(name=value, kernel="/k")))
    assert values(opts, "-name")[0].keys == {"guest": value, "debug-threads": "on"}


@pytest.mark.parametrize("value", HOSTILE)
def test_machine_is_refused_or_escaped(value: str) -> None:
    # A machine type comes from a domain's record (restore, migration): refused unless
    # it is a machine type name.
    with pytest.raises(InvalidConfig, match="not a QEMU machine type"):
        argv(DomainConfig(name="m", kernel="/k"), machine=value)


def test_machine_keys() -> None:
    opts = check_argv(argv(DomainConfig(name="m", type="hvm", acpi=False,
                                        disks=[DiskSpec(vdev="hda", target="/d")]),
                           machine="pc-q35-10.0"))
    assert values(opts, "-machine")[0].keys == {"type": "pc-q35-10.0", "acpi": "off"}
    # Escaped even where the name check would already refuse it.
    assert split_opts(machine_arg("q35"), "type") == [("type", "q35")]


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("key", ["kernel", "ramdisk", "extra", "cmdline", "root"])
def test_kernel_initrd_append_are_single_values(key: str, value: str) -> None:
    cfg = DomainConfig(name="k", kernel="/boot/k")
    setattr(cfg, key, "/x/" + value if key in ("kernel", "ramdisk") else value)
    opts = check_argv(argv(cfg))
    if key == "kernel":
        assert values(opts, "-kernel")[0].arg == "/x/" + value
    elif key == "ramdisk":
        assert values(opts, "-initrd")[0].arg == "/x/" + value
    else:
        # The kernel's words, re-joined with single spaces: one -append value all the same.
        assert " ".join(value.split()) in (values(opts, "-append")[0].arg or "")


@pytest.mark.parametrize("value", HOSTILE)
def test_disk_paths_are_json(value: str) -> None:
    cfg = DomainConfig(name="d", kernel="/k",
                       disks=[DiskSpec(vdev="xvda", target="/srv/" + value, format="qcow2"),
                              DiskSpec(vdev="sdb", target="/srv/" + value, devtype="cdrom",
                                       access="ro")])
    opts = check_argv(argv(cfg))
    files = [o.json["filename"] for o in values(opts, "-blockdev") if o.json
             and "filename" in o.json]
    assert files == ["/srv/" + value, "/srv/" + value]


@pytest.mark.parametrize("value", HOSTILE)
def test_nic_fields_are_json(value: str) -> None:
    cfg = DomainConfig(name="n", kernel="/k",
                       vifs=[VifSpec(mac="00:16:3e:00:00:01", bridge=value, model="e1000")])
    rec = DomainRecord(uuid=UUID, name="n", domid=7, config=cfg)
    QemuDevices(None, None, None).prepare(rec)  # type: ignore[arg-type]
    rec.runtime["taps"] = {"0": value}  # a tap name is ours, but hold anyway
    layout, devices = argv_devices(rec)
    opts = check_argv(build_argv(cfg, uuid=UUID, accel="tcg", files=FILES, layout=layout,
                                 devices=devices))
    assert [o.json["ifname"] for o in values(opts, "-netdev") if o.json] == [value]


@pytest.mark.parametrize("value", HOSTILE)
def test_firmware_path_is_a_single_value(value: str) -> None:
    cfg = DomainConfig(name="f", type="hvm", disks=[DiskSpec(vdev="hda", target="/d")])
    opts = check_argv(argv(cfg, firmware=["-bios", "/fw/" + value]))
    assert values(opts, "-bios")[0].arg == "/fw/" + value


@pytest.mark.parametrize("value", HOSTILE)
def test_run_dir_paths_in_chardev(value: str) -> None:
    # The run directory comes from XENIA_ROOT: escaped in -chardev's path= and logfile=.
    files = RunFiles(Path("/run/" + value) / UUID)
    opts = check_argv(argv(DomainConfig(name="c", kernel="/k"), files=files))
    chardevs = values(opts, "-chardev")
    assert chardevs[0].keys["path"] == str(files.qmp)
    assert chardevs[1].keys["logfile"] == str(files.console_log)
    assert values(opts, "-pidfile")[0].arg == str(files.pidfile)


def vnc_cfg(listen: str) -> DomainConfig:
    return DomainConfig(name="v", type="hvm", vnc=True, vnclisten=listen, vncpasswd="pw",
                        disks=[DiskSpec(vdev="hda", target="/d")])


@pytest.mark.parametrize("listen,address", [
    ("127.0.0.1", "127.0.0.1:5"),
    ("0.0.0.0:7", "0.0.0.0:5"),
    ("::1", "[::1]:5"),
    ("[::1]:7", "[::1]:5"),
    ("fe80::1%eth0", "[fe80::1%eth0]:5"),
    ("[fe80::1%eth0]:3", "[fe80::1%eth0]:5"),
    ("fe80::1%2", "[fe80::1%2]:5"),
    ("localhost", "localhost:5"),
])
def test_vnc_addresses(listen: str, address: str) -> None:
    opts = check_argv(argv(vnc_cfg(listen), vnc_display=5))
    assert values(opts, "-vnc")[0].keys == {"vnc": address, "password": "on"}


@pytest.mark.parametrize("listen", [
    "fe80::1%eth0,to=99",             # Python's ipaddress takes any scope id
    "[fe80::1%a,password=off]:1",
    "fe80::1%a=b",
    "fe80::1%" + "x" * 16,
    "127.0.0.1,to=99",
    "127.0.0.1:1,to=99",
    "[::1]:1,to=9",
    "a=b",
    "0.0.0.0:99999",
    "host\n.example",
])
def test_vnc_hostile_listen_is_refused(listen: str) -> None:
    with pytest.raises(InvalidConfig, match="VNC"):
        display.vnc_listen(vnc_cfg(listen))
    with pytest.raises(InvalidConfig, match="VNC"):
        argv(vnc_cfg(listen), vnc_display=5)


def spice_cfg(host: str, **keys: object) -> DomainConfig:
    return DomainConfig(name="s", type="hvm", spicepasswd="pw",
                        spice={"port": 5930, "host": host, **keys},
                        disks=[DiskSpec(vdev="hda", target="/d")])


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "fe80::1%eth0", "fe80::1%2"])
def test_spice_addresses(host: str) -> None:
    spice.check_spice(spice_cfg(host))
    opts = check_argv(argv(spice_cfg(host)))
    # The values, not only the key names: an injected disable-ticketing=on is a known key.
    assert values(opts, "-spice")[0].keys == {"port": "5930", "addr": host}


@pytest.mark.parametrize("host", [
    "fe80::1%a,disable-ticketing=on,gl=on",   # the audit's: ipaddress takes any scope id
    "fe80::1%a,disable-ticketing=on",         # known keys only: values must be compared
    "fe80::1%eth0,port=1",
    "fe80::1%a=b",
    "fe80::1%" + "x" * 16,
    "fe80::1%a\nb",
    "127.0.0.1,addr=0.0.0.0",
    "a=b",
    "host\n.example",
])
def test_spice_hostile_host_is_refused(host: str) -> None:
    with pytest.raises(InvalidConfig, match="SPICE"):
        spice.check_spice(spice_cfg(host))
    # The builder holds on its own (a record from a restore skips the check): an address
    # with any scope id stays addr's one value, escaped; anything else is no address.
    if "%" not in host:
        with pytest.raises(ValueError):
            argv(spice_cfg(host))
        return
    opts = parse_argv(argv(spice_cfg(host)))
    assert values(opts, "-spice")[0].keys == {"port": "5930", "addr": host}


def test_nul_is_refused_with_a_message() -> None:
    with pytest.raises(InvalidConfig, match="NUL"):
        escape_opt("a\0b")
    with pytest.raises(InvalidConfig, match="NUL"):
        argv(DomainConfig(name="a\0b", kernel="/k"))
