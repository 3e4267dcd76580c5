"""The xl platform keys: parsed and checked (config/extras.py), turned into QEMU
arguments (qemu/platform.py), and their security rules (api/access.py)."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

import pytest

from xenia.api.access import Access
from xenia.config.build import build_config
from xenia.config.extras import parse_channel
from xenia.config.model import DiskSpec, DomainConfig
from xenia.config.xlcfg import parse_config
from xenia.errors import InvalidConfig, NotFound, PermissionDenied
from xenia.migration.preflight import check_source
from xenia.peers.scopes import Grant
from xenia.qemu import platform, vtpm
from xenia.qemu.cmdline import RunFiles, build_argv, kernel_cmdline


def build(text: str) -> DomainConfig:
    return build_config(parse_config('name = "g"\n' + text, "g.cfg"), "g.cfg")


def argv(cfg: DomainConfig, accel: str = "tcg") -> list[str]:
    return build_argv(cfg, uuid="00000000-0000-0000-0000-000000000001", accel=accel,
                      files=RunFiles(Path("/run/x")))


def devices(args: list[str]) -> list[dict[str, object]]:
    return [json.loads(args[i + 1]) for i, a in enumerate(args) if a == "-device"]


def test_rtc_localtime_and_offset() -> None:
    assert platform.rtc_arg(build("localtime = 1")) == ["-rtc", "base=localtime"]
    cfg = build('rtc_timeoffset = "-3600"')
    now = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
    assert platform.rtc_arg(cfg, now) == ["-rtc", "base=2026-01-01T11:00:00"]
    assert platform.rtc_arg(build("rtc_timeoffset = 60"), now) == \
        ["-rtc", "base=2026-01-01T12:01:00"]
    assert platform.rtc_arg(build("")) == []
    with pytest.raises(InvalidConfig, match="rtc_timeoffset"):
        build('rtc_timeoffset = "soon"')


def test_viridian_groups_become_hv_flags_under_kvm_only() -> None:
    cfg = build("viridian = 1")
    assert cfg.viridian == ["base", "freq", "time_ref_count", "apic_assist", "crash_ctl"]
    flags = platform.cpu_flags(cfg, "kvm")
    assert ",hv-relaxed=on" in flags and ",hv-crash=on" in flags
    assert ",hv-spinlocks=0x1fff" in flags
    assert platform.cpu_flags(cfg, "tcg") == ""
    assert build('viridian = ["defaults", "!crash_ctl", "stimer"]').viridian == \
        ["base", "freq", "time_ref_count", "apic_assist", "stimer"]
    assert build("viridian = 0").viridian == []
    with pytest.raises(InvalidConfig, match="unknown viridian group 'bogus'"):
        build('viridian = ["bogus"]')
    assert argv(cfg, "kvm")[argv(cfg, "kvm").index("-cpu") + 1].startswith("host,hv-")


def test_vga_stdvga_videoram() -> None:
    def card(text: str) -> list[dict[str, object]]:
        return [d for d in devices(argv(build('type = "hvm"\nkernel = "/k"\n' + text)))
                if d.get("id") == "video0"]

    assert card("")[0]["driver"] == "VGA"
    assert card("stdvga = 0")[0]["driver"] == "cirrus-vga"
    assert card('vga = "qxl"\nvideoram = 32')[0] == {
        "driver": "qxl-vga", "id": "video0", "bus": "pcie.0", "addr": "0x1", "vgamem_mb": 32}
    assert card('vga = "none"') == []
    with pytest.raises(InvalidConfig):
        build('vga = "hercules"')


def test_smbios_escapes_commas_and_refuses_battery() -> None:
    cfg = build('smbios = ["system_manufacturer=Xen, Inc.", "bios_vendor=X", "oem=a"]')
    assert platform.smbios_args(cfg) == [
        "-smbios", "type=0,vendor=X",
        "-smbios", "type=1,manufacturer=Xen,, Inc.",
        "-smbios", "type=11,value=a",
    ]
    with pytest.raises(InvalidConfig, match="battery"):
        build('smbios = ["battery_manufacturer=x"]')
    with pytest.raises(InvalidConfig, match="unknown smbios entry"):
        build('smbios = ["system_manufacturer"]')


def test_acpi_sleep_states() -> None:
    assert platform.acpi_args(build("")) == []
    assert platform.acpi_args(build("acpi_s3 = 0\nacpi_s4 = 0")) == [
        "-global", "ICH9-LPC.disable_s3=1", "-global", "ICH9-LPC.disable_s4=1"]


def test_tsc_mode() -> None:
    assert platform.cpu_flags(build('tsc_mode = "native"'), "kvm") == ",invtsc=on"
    assert build("tsc_mode = 0").tsc_mode == "default"
    with pytest.raises(InvalidConfig, match="not possible on KVM"):
        build('tsc_mode = "always_emulate"')


def test_watchdog_device_follows_on_watchdog() -> None:
    assert build("").watchdog is None
    cfg = build('on_watchdog = "preserve"')
    assert cfg.watchdog == "i6300esb"
    args = argv(cfg)
    assert {"driver": "i6300esb", "id": "watchdog0", "bus": "pcie.0",
            "addr": platform.WATCHDOG_ADDR} in devices(args)
    assert "watchdog=pause" in args
    assert platform.watchdog_args(build('watchdog = "ib700"'))[1] == \
        '{"driver":"ib700","id":"watchdog0"}'
    assert build('on_watchdog = "restart"\nwatchdog = "none"').watchdog is None


def test_channels_and_serial_ports() -> None:
    cfg = build('channel = ["name=org.x.a,connection=pty", '
                '"name=b,connection=socket,path=/srv/b.sock"]\n'
                'serial = ["pty", "file:/var/log/s,1", "null"]')
    args = argv(cfg)
    assert "socket,id=channel0,path=/run/x/channel0.sock,server=on,wait=off" in args
    assert "socket,id=channel1,path=/srv/b.sock,server=on,wait=off" in args
    names = [d["name"] for d in devices(args) if d["driver"] == "virtserialport"]
    assert names == ["org.x.a", "b"]
    # A comma in a path is doubled, so it cannot add an option.
    assert "file,id=serial1,path=/var/log/s,,1,append=on" in args and "null,id=serial2" in args
    assert {"driver": "isa-serial", "id": "serial2dev", "chardev": "serial2", "index": 2} \
        in devices(args)
    for bad in ('"name=a"', '"name=a b,connection=pty"', '"name=a,connection=socket"',
                '"name=a,connection=pty", "name=a,connection=pty"', '"name=a,backend=dom1"'):
        with pytest.raises(InvalidConfig):
            build(f"channel = [{bad}]")
    with pytest.raises(InvalidConfig, match="not supported"):
        platform.check(build('serial = ["pty", "tcp:1.2.3.4:5"]'))
    with pytest.raises(InvalidConfig, match="at most 4 serial ports"):
        build('serial = ["pty", "null", "null", "null", "null"]')
    assert parse_channel("name=n,connection=pty").path is None


def test_device_model_args_go_last_before_process_options() -> None:
    cfg = build('type = "hvm"\nkernel = "/k"\ndevice_model_args = ["-no-hpet"]\n'
                'device_model_args_hvm = ["-boot", "menu=on"]\n'
                'device_model_args_pv = ["-pv-only"]')
    args = argv(cfg)
    assert args[args.index("-no-hpet"):args.index("-pidfile")] == ["-no-hpet", "-boot",
                                                                    "menu=on"]
    assert "-pv-only" not in args


def test_device_model_args_need_admin_over_tcp() -> None:
    cfg = build('device_model_args = ["-chardev", "file,id=x,path=/etc/shadow"]')
    Access().check_config(cfg, "create")  # the UNIX socket: root
    Access(Grant("t", frozenset({"create", "admin"}))).check_config(cfg, "create")
    with pytest.raises(PermissionDenied, match="'admin' scope"):
        Access(Grant("t", frozenset({"create"}))).check_config(cfg, "create")
    Access(Grant("t", frozenset({"create"}))).check_config(build(""), "create")


def test_nomigrate_refuses_migration() -> None:
    cfg = build("nomigrate = 1")
    assert any("nomigrate" in p for p in check_source(cfg, "running", "kvm", "10.0.2", True))
    assert check_source(build(""), "running", "kvm", "10.0.2", True) == []


def test_xen_device_names_translated_with_a_notice(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="xenia.config"):
        cfg = build('kernel = "/k"\nroot = "/dev/xvda1 ro"\nextra = "console=hvc0"\n'
                    'disk = ["/d0,raw,xvda,rw", "/d1,raw,xvdb,rw"]')
    assert kernel_cmdline(cfg) == "root=/dev/vda1 ro console=ttyS0"
    assert any("notice: Xen device names translated" in r.getMessage()
               and "root=/dev/xvda1 -> root=/dev/vda1" in r.getMessage()
               for r in caplog.records)
    cfg.disks = [DiskSpec(vdev="xvdb")]
    cfg.root = "/dev/xvdb"
    assert kernel_cmdline(cfg).startswith("root=/dev/vda ")


def test_host_paths_qemu_would_clobber_are_refused(tmp_path: Path) -> None:
    victim = tmp_path / "important"
    victim.write_text("keep me")
    with pytest.raises(InvalidConfig, match="is not a socket"):
        platform.check(build(f'channel = ["name=a,connection=socket,path={victim}"]'))
    with pytest.raises(InvalidConfig, match="does not exist"):
        platform.check(build(f'channel = ["name=a,connection=socket,path={tmp_path}/no/s"]'))
    with pytest.raises(InvalidConfig, match="must be a file"):
        platform.check(build(f'serial = ["pty", "file:{tmp_path}"]'))
    platform.check(build(f'serial = ["pty", "file:{victim}"]\n'
                         f'channel = ["name=a,connection=socket,path={tmp_path}/s"]'))
    assert victim.read_text() == "keep me"


def test_vtpm_spec_and_qemu_arguments() -> None:
    assert build('vtpm = ["backend=0,uuid=7d0ab1d4-5a3f-4b8c-9d2e-1f2a3b4c5d6e"]').vtpm
    with pytest.raises(InvalidConfig, match="one vTPM"):
        build('vtpm = ["", ""]')
    with pytest.raises(InvalidConfig, match="always the host"):
        build('vtpm = ["backend=dom1"]')
    args = build_argv(build('vtpm = [""]'), uuid="u", accel="tcg",
                      files=RunFiles(Path("/run/x")), tpm=vtpm.tpm_args(Path("/run/x/s,1")))
    assert "socket,id=chrtpm,path=/run/x/s,,1" in args
    assert "emulator,id=tpm0,chardev=chrtpm" in args
    assert {"driver": "tpm-crb", "id": "vtpm0", "tpmdev": "tpm0"} in devices(args)


def test_pygrub_boot_config_keeps_extra_and_translates(tmp_path: Path) -> None:
    from tests.unit.test_pygrub import FILES, GRUB_CFG, disk_with
    from xenia.drivers import qemu_boot
    from xenia.store.base import DomainRecord

    disk = disk_with(tmp_path, GRUB_CFG, FILES)
    cfg = build(f'bootloader = "pygrub"\nextra = "xenia.x=1"\ndisk = ["{disk},raw,xvda,rw"]')
    qemu_boot.check_bootloader(cfg)
    rec = DomainRecord(uuid="u", name="g", domid=1, config=cfg)
    boot = qemu_boot.boot_config(rec, tmp_path / "run")
    assert rec.runtime["bootloader_entry"] == "New kernel" and rec.config.kernel is None
    assert kernel_cmdline(boot) == "root=/dev/vda1 console=ttyS0 quiet xenia.x=1"
    with pytest.raises(InvalidConfig, match="has none"):
        qemu_boot.check_bootloader(build('bootloader = "pygrub"'))


def test_spice_keys_become_one_checked_spice_option() -> None:
    from xenia.devices import spice

    cfg = build('type = "hvm"\nkernel = "/k"\nspice = 1\nspiceport = 5930\n'
                'spicedisable_ticketing = 1\nspiceagent_mouse = 0\nspicevdagent = 1\n'
                'spice_image_compression = "quic"\nspice_clipboard_sharing = 1')
    spice.check_spice(cfg)
    args = argv(cfg)
    assert args[args.index("-spice") + 1] == (
        "port=5930,addr=127.0.0.1,disable-ticketing=on,agent-mouse=off,"
        "disable-copy-paste=off,image-compression=quic")
    assert {"driver": "virtserialport", "id": "vdagent0port", "bus": "vser0.0",
            "chardev": "vdagent0", "name": "com.redhat.spice.0"} in devices(args)
    assert any(d["driver"] == "virtio-serial-pci" for d in devices(args))
    # The password is never on the command line.
    with_pw = build('type = "hvm"\nspice = 1\nspiceport = 5930\nspicepasswd = "s3cret"')
    spice.check_spice(with_pw)
    assert not any("s3cret" in a for a in argv(with_pw))
    for bad, match in (('spiceport = 5930\nspicehost = "example.com"', "not an IP"),
                       ("spiceport = 5930", "spicepasswd"),
                       ("spicetls_port = 5931\nspicedisable_ticketing = 1",
                        "has no ca-cert.pem"),
                       ("", "spiceport")):
        with pytest.raises((InvalidConfig, NotFound), match=match):
            spice.check_spice(build(f'type = "hvm"\nspice = 1\n{bad}'))
    with pytest.raises(InvalidConfig, match="image_compression"):
        build('spice_image_compression = "jpeg"')
    assert build("spiceport = 5930").spice == {}  # spice = 0: off, keys still known


def test_api_configs_with_unparsed_platform_values_are_refused() -> None:
    from xenia.devices import spice

    good = build('type = "hvm"\nkernel = "/k"')
    for field, value in (("vga", "hercules"), ("viridian", ["bogus"]),
                         ("smbios", ["system_manufacturer"]), ("watchdog", "x"),
                         ("tsc_mode", "always_emulate"), ("videoram", 4096)):
        cfg = DomainConfig.from_dict({**good.to_dict(), field: value})
        with pytest.raises(InvalidConfig, match="unknown or bad"):
            platform.check_values(cfg)
    cfg = DomainConfig.from_dict({**good.to_dict(), "spice": {
        "enabled": True, "port": 5930, "disable_ticketing": True,
        "image_compression": "quic,addr=0.0.0.0"}})
    with pytest.raises(InvalidConfig, match="image_compression"):
        spice.check_spice(cfg)
    with pytest.raises(ValueError, match="spice"):
        DomainConfig.from_dict({**good.to_dict(), "spice": None})


@pytest.mark.parametrize("arg", ["", "-x\0y"])
def test_device_model_args_refuse_words_that_are_no_argument(arg: str) -> None:
    # Found by the fuzz campaign: [''] reached QEMU's argv as an empty word.
    from xenia.host.validate import check_config
    cfg = DomainConfig(name="dm", kernel="/bin/true", device_model_args=["-S", arg])
    with pytest.raises(InvalidConfig, match="device_model_args holds"):
        check_config(cfg)
    check_config(DomainConfig(name="dm", kernel="/bin/true", device_model_args=["-S"]))


def test_a_replicated_disk_is_refused_by_the_migration_preflight() -> None:
    from xenia.migration.preflight import replicated_disks

    cfg = build('disk = ["/pool/a.qcow2,qcow2,xvda,rw", "/pool/b.qcow2,qcow2,xvdb,rw"]')
    hosts = {"/pool/b.qcow2": "h2"}
    problems = replicated_disks(cfg, hosts.get)
    assert len(problems) == 1
    assert "xvdb" in problems[0] and "'h2'" in problems[0] and "not supported" in problems[0]
    assert replicated_disks(build(""), hosts.get) == []
