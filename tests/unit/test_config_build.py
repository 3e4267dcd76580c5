"""From parsed values to DomainConfig: xenia.config.build."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xenia.config.build import build_config, load_config
from xenia.config.cpulist import normalize_cpulist, union_cpulists
from xenia.config.model import DomainConfig, RateLimit
from xenia.config.xlcfg import Value, parse_config
from xenia.errors import ConfigSyntaxError, InvalidConfig, NotFound


def build(text: str) -> DomainConfig:
    return build_config(parse_config(text, "g.cfg"), "g.cfg")


def build_error(text: str) -> str:
    with pytest.raises(InvalidConfig) as info:
        build(text)
    return str(info.value)


def test_minimal_config_gets_xl_defaults() -> None:
    cfg = build('name = "g"')
    assert cfg == DomainConfig(name="g", source="g.cfg")
    assert (cfg.type, cfg.memory, cfg.vcpus, cfg.on_reboot) == ("pv", 128, 1, "restart")


def test_full_config() -> None:
    cfg = build("""
name = "web1"
type = "hvm"
uuid = "0C2B5E3B-8C1E-4E5A-9E0D-0123456789AB"
memory = 512
maxmem = 1024
vcpus = 2
maxvcpus = 4
cpus = "0-3,^1"
cpus_soft = "all"
cpu_weight = 512
cap = 100
kernel = "/boot/vmlinuz"
ramdisk = "/boot/initrd.img"
cmdline = "console=ttyS0"
on_poweroff = "preserve"
on_reboot = "rename-restart"
on_crash = "coredump-restart"
on_watchdog = "restart"
on_soft_reset = "destroy"
disk = [ "/srv/web1.qcow2,qcow2,xvda,rw", ",,hdc:cdrom,r" ]
vif = [ "mac=00:16:3e:00:00:01,bridge=br0,rate=1MB/s", "" ]
pci = [ "01:05.1" ]
firmware = "ovmf"
boot = "dc"
acpi = 0
serial = "pty"
vnc = 1
vnclisten = "0.0.0.0"
vncdisplay = 3
vncunused = 0
vncpasswd = "secret"
sdl = 0
nographic = 1
usb = 1
usbdevice = [ "tablet" ]
accel = "tcg"
machine = "q35"
""")
    assert cfg.uuid == "0c2b5e3b-8c1e-4e5a-9e0d-0123456789ab"
    assert (cfg.type, cfg.memory, cfg.maxmem, cfg.vcpus, cfg.maxvcpus) == (
        "hvm", 512, 1024, 2, 4)
    assert (cfg.cpus, cfg.cpus_soft, cfg.cpus_per_vcpu) == ("0-3,^1", "all", None)
    assert (cfg.cpu_weight, cfg.cap) == (512, 100)
    assert (cfg.kernel, cfg.ramdisk, cfg.effective_cmdline()) == (
        "/boot/vmlinuz", "/boot/initrd.img", "console=ttyS0")
    assert (cfg.on_poweroff, cfg.on_reboot, cfg.on_crash, cfg.on_watchdog,
            cfg.on_soft_reset) == ("preserve", "rename-restart", "coredump-restart",
                                   "restart", "destroy")
    assert [(d.vdev, d.format, d.devtype, d.target) for d in cfg.disks] == [
        ("xvda", "qcow2", "disk", "/srv/web1.qcow2"), ("hdc", "empty", "cdrom", None)]
    assert cfg.vifs[0].rate == RateLimit(50000, 50000) and cfg.vifs[1].mac is None
    assert cfg.pci == ["01:05.1"]
    assert (cfg.firmware, cfg.boot, cfg.acpi, cfg.serial) == ("ovmf", "dc", False, ["pty"])
    assert (cfg.vnc, cfg.vnclisten, cfg.vncdisplay, cfg.vncunused, cfg.vncpasswd) == (
        True, "0.0.0.0", 3, False, "secret")
    assert (cfg.sdl, cfg.nographic, cfg.usb, cfg.usbdevice) == (False, True, True, ["tablet"])
    assert (cfg.accel, cfg.machine) == ("tcg", "q35")
    assert DomainConfig.from_dict(cfg.to_dict()) == cfg


def test_xm_era_file(tmp_path: Path) -> None:
    path = tmp_path / "xmexample1"
    path.write_text("""\
kernel = "/boot/vmlinuz-2.6-xenU"
memory = 64
name = "ExampleDomain"
#vcpus = 1
vif = [ '' ]
disk = [ 'phy:hda1,hda1,w' ]
root = "/dev/hda1 ro"
extra = "4"
""")
    cfg = load_config(path)
    assert (cfg.name, cfg.type, cfg.memory, cfg.kernel) == (
        "ExampleDomain", "pv", 64, "/boot/vmlinuz-2.6-xenU")
    assert cfg.effective_cmdline() == "root=/dev/hda1 ro 4"
    assert [(d.target, d.vdev, d.access) for d in cfg.disks] == [("hda1", "hda1", "rw")]
    assert len(cfg.vifs) == 1 and cfg.vifs[0].spec == ""
    assert cfg.source == str(path)


# --- name ---------------------------------------------------------------------------


def test_name_is_required() -> None:
    msg = build_error("memory = 64")
    assert "g.cfg" in msg and "'name'" in msg


@pytest.mark.parametrize("name", ["a", "web-1", "db_2.example", "x" * 64, "0", "ok-", "Web.1"])
def test_good_names(name: str) -> None:
    assert build(f"name = '{name}'").name == name


@pytest.mark.parametrize("name", ["", "x" * 65, "-web", "Domain-0", "a b", "a/b", "ü", "a:b"])
def test_bad_names(name: str) -> None:
    msg = build_error(f"name = '{name}'")
    assert msg.startswith("Failed to load domain config: g.cfg:1:1: invalid domain name")


def test_number_as_name_is_its_text() -> None:
    assert build("name = 123").name == "123"


# --- type and builder ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "dtype"),
    [("h", "hvm"), ("hv", "hvm"), ("hvm", "hvm"), ("p", "pv"), ("pv", "pv"),
     ("pvh", "pvh"), ("c", "container"), ("container", "container")],
)
def test_type_prefixes(value: str, dtype: str) -> None:
    assert build(f"name='g'\ntype='{value}'").type == dtype


@pytest.mark.parametrize("value", ["", "x", "pvhx", "HVM", "hvm "])
def test_bad_types(value: str) -> None:
    assert "invalid domain type" in build_error(f"name='g'\ntype='{value}'")


@pytest.mark.parametrize(
    ("builder", "dtype"), [("hvm", "hvm"), ("generic", "pv"), ("linux", "pv"), ("h", "hvm")],
)
def test_builder(builder: str, dtype: str) -> None:
    assert build(f"name='g'\nbuilder='{builder}'").type == dtype


def test_builder_and_type() -> None:
    assert build("name='g'\ntype='hvm'\nbuilder='hvm'").type == "hvm"
    assert "contradicts" in build_error("name='g'\ntype='pv'\nbuilder='hvm'")
    assert "invalid builder" in build_error("name='g'\nbuilder='vmx'")


# --- numbers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "memory"), [("256", 256), ("'256'", 256), ("'0x100'", 256), ("0400", 256),
                          ("' 256 '", 256)],
)
def test_memory_numbers_as_xl_reads_them(value: str, memory: int) -> None:
    assert build(f"name='g'\nmemory = {value}").memory == memory


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("memory = 'abc'", "g.cfg:2:1: 'memory' must be an integer (MiB), "
                           "got the string 'abc'"),
        ("memory = ''", "'memory' must be an integer (MiB)"),
        ("memory = [1]", "'memory' must be an integer (MiB), got a list"),
        ("memory = 0", "'memory' must be at least 1, got 0"),
        ("memory = 256\nmaxmem = 128", "g.cfg:3:1: maxmem (128) is below memory (256)"),
        ("vcpus = 0", "'vcpus' must be from 1 to 255"),
        ("maxvcpus = 256", "'maxvcpus' must be from 1 to 255, got 256"),
        ("vcpus = '2x'", "'vcpus' must be an integer"),
        ("vcpus = 4\nmaxvcpus = 2", "maxvcpus (2) is below vcpus (4)"),
        ("cpu_weight = 0", "'cpu_weight' must be from 1 to 65535"),
        ("vncdisplay = 'x'", "'vncdisplay' must be an integer"),
        ("acpi = 'yes'", "'acpi' must be a boolean (0 or 1), got the string 'yes'"),
        ("kernel = ['a']", "'kernel' must be a string, got a list"),
        ("disk = 'a,,xvda'", "'disk' must be a list of strings, got the string"),
        ("disk = [['a,,xvda']]", "'disk' must be a list of strings, got a list"),
        ("serial = [['pty']]", "'serial' must be a list of strings or a string"),
    ],
)
def test_type_and_range_errors(text: str, fragment: str) -> None:
    msg = build_error("name = 'g'\n" + text)
    assert msg.startswith("Failed to load domain config: g.cfg:")
    assert fragment in msg


def test_maxmem_and_maxvcpus_default() -> None:
    cfg = build("name='g'\nmemory=300\nvcpus=3")
    assert (cfg.maxmem, cfg.effective_maxmem, cfg.effective_maxvcpus) == (None, 300, 3)


@pytest.mark.parametrize(("value", "flag"), [("0", False), ("1", True), ("2", True),
                                             ("'1'", True), ("'0'", False)])
def test_booleans_are_numbers(value: str, flag: bool) -> None:
    assert build(f"name='g'\nvnc = {value}").vnc is flag


# --- uuid, actions, accel, boot -------------------------------------------------------


@pytest.mark.parametrize("uuid", ["", "0c2b5e3b8c1e4e5a9e0d0123456789ab",
                                  "0c2b5e3b-8c1e-4e5a-9e0d-0123456789a",
                                  "0c2b5e3b-8c1e-4e5a-9e0d-0123456789ag",
                                  "{0c2b5e3b-8c1e-4e5a-9e0d-0123456789ab}"])
def test_bad_uuids(uuid: str) -> None:
    assert "invalid uuid" in build_error(f"name='g'\nuuid='{uuid}'")


@pytest.mark.parametrize("key", ["on_poweroff", "on_reboot", "on_crash", "on_watchdog",
                                 "on_soft_reset"])
def test_bad_actions(key: str) -> None:
    msg = build_error(f"name='g'\n{key} = 'reboot'")
    assert f"'{key}' must be one of destroy, restart, rename-restart" in msg


@pytest.mark.parametrize("accel", ["auto", "kvm", "tcg"])
def test_accel(accel: str) -> None:
    assert build(f"name='g'\naccel='{accel}'").accel == accel


def test_boot_watchdog() -> None:
    assert build("name='g'").boot_watchdog is None  # the daemon's default
    assert build("name='g'\nboot_watchdog = 120").boot_watchdog == 120
    assert build("name='g'\nboot_watchdog = '0'").boot_watchdog == 0
    assert "'boot_watchdog' must be from 0 to 86400" in build_error(
        "name='g'\nboot_watchdog = 90000")
    assert "'boot_watchdog' must be a number of seconds" in build_error(
        "name='g'\nboot_watchdog = 'long'")


def test_bad_accel_and_boot() -> None:
    assert "'accel' must be one of auto, kvm, tcg" in build_error("name='g'\naccel='xen'")
    assert "'boot' must be letters" in build_error("name='g'\nboot='cx'")


def test_serial_and_usbdevice_string_or_list() -> None:
    cfg = build("name='g'\nserial=['pty', 'file:/tmp/s']\nusbdevice='tablet'")
    assert (cfg.serial, cfg.usbdevice) == (["pty", "file:/tmp/s"], ["tablet"])


# --- cpus ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "cpus"),
    [("'all'", "all"), ("'0-3,5,^1'", "0-3,5,^1"), ("'nodes:0-3,^node:2'",
                                                      "nodes:0-3,^node:2"),
     ("' 1 , 2 ,,'", "1,2"), ("3", "3"), ("'all,^7'", "all,^7")],
)
def test_cpus_string(value: str, cpus: str) -> None:
    cfg = build(f"name='g'\ncpus = {value}\ncpus_soft = {value}")
    assert (cfg.cpus, cfg.cpus_per_vcpu, cfg.cpus_soft) == (cpus, None, cpus)


def test_cpus_list_pins_each_vcpu() -> None:
    cfg = build("name='g'\nvcpus=2\ncpus = ['2', '3-8,^5']")
    assert cfg.cpus_per_vcpu == ["2", "3-8,^5"]
    assert cfg.cpus == "2-4,6-8"


def test_cpus_list_of_numbers_and_extra_entries_ignored() -> None:
    cfg = build("name='g'\nvcpus=2\ncpus = [0, 1, 2]")
    assert (cfg.cpus_per_vcpu, cfg.cpus) == (["0", "1"], "0-1")


def test_cpus_list_with_nodes_covers_all() -> None:
    cfg = build("name='g'\nvcpus=2\ncpus_soft = ['node:0', '1']")
    assert (cfg.cpus_soft_per_vcpu, cfg.cpus_soft) == (["node:0", "1"], "all")


@pytest.mark.parametrize(
    ("value", "problem"),
    [("'0-'", "invalid CPU list term '0-'"), ("'^all'", "can't combine"),
     ("'3-1'", "end before start"), ("''", "empty CPU list"), ("'1,^1'", "selects no CPU"),
     ("'70000'", "above 65535"), ("'a'", "invalid CPU list term"), ("[]", "empty list"),
     ("'1-2-3'", "invalid CPU list term")],
)
def test_bad_cpus(value: str, problem: str) -> None:
    msg = build_error(f"name='g'\ncpus = {value}")
    assert "g.cfg:2:1: invalid 'cpus'" in msg and problem in msg


def test_cpulist_helpers() -> None:
    assert normalize_cpulist("0-3, 5") == "0-3,5"
    assert union_cpulists(["5", "3-8,^5"]) == "3-8"
    assert union_cpulists(["0", "2", "4-5"]) == "0,2,4-5"


# --- devices ------------------------------------------------------------------------


def test_bad_disk_names_spec_and_location() -> None:
    msg = build_error("name='g'\n\ndisk = ['/x,,xvda', 'foo']")
    assert msg == ("Failed to parse disk spec 'foo': no vdev specified "
                   "(in g.cfg:3:1, 'disk')")


def test_bad_vif_names_spec_and_location() -> None:
    msg = build_error("name='g'\nvif = ['mac=nope']")
    assert msg.startswith("Failed to parse vif spec 'mac=nope': invalid mac")
    assert "(in g.cfg:2:1, 'vif')" in msg


def test_same_vdev_twice() -> None:
    msg = build_error("name='g'\ndisk = ['/a,,xvda', '/b,,d0p0']")
    assert "same vdev" in msg


def test_unknown_vif_key_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="xenia.config"):
        cfg = build("name='g'\nvif = ['bridge=br0,colour=red']")
    assert cfg.vifs[0].bridge == "br0"
    assert "unknown parameter 'colour'" in caplog.text


# --- unknown keys -------------------------------------------------------------------


def test_unknown_and_unsupported_keys_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="xenia.config"):
        cfg = build("name='g'\nmemroy = 256\nvpmu = 1\n")
    assert cfg.memory == 128
    messages = [r.getMessage() for r in caplog.records]
    assert "g.cfg:2:1: unknown setting 'memroy' (did you mean 'memory'?); ignored" in messages
    assert any(m.startswith("g.cfg:3:1: 'vpmu' is a Xen setting with no meaning on KVM")
               for m in messages), messages


def test_known_keys_do_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="xenia.config"):
        build("name='g'\ntype='hvm'\nbuilder='hvm'\nmemory=1\nvnc=1\ncpus_soft='1'\n"
              "on_crash='preserve'\nserial='pty'\ndisk=[]\nvif=[]\npci=[]\nrootfs='/r'")
    assert caplog.records == []


# --- a plain mapping ---------------------------------------------------------------


def test_build_from_a_plain_mapping() -> None:
    values: dict[str, Value] = {"name": "g", "memory": "x"}
    with pytest.raises(InvalidConfig, match=r"^Failed to load domain config: api: 'memory'"):
        build_config(values, "api")
    assert build_config({"name": "g", "vcpus": 2}, "api").vcpus == 2


# --- load_config and overrides -------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "g.cfg"
    path.write_text(text)
    return path


def test_load_config_with_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "name = 'g'\nmemory = 64\ndisk = ['/a,,xvda']\n")
    cfg = load_config(path, ["memory=256", "name=web2", "disk+=['/b,,xvdb']", "cpus=0-1"])
    assert (cfg.name, cfg.memory, cfg.cpus) == ("web2", 256, "0-1")
    assert [d.vdev for d in cfg.disks] == ["xvda", "xvdb"]


def test_override_errors_name_the_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "name = 'g'\n")
    with pytest.raises(InvalidConfig) as info:
        load_config(path, ["vcpus=2", "memory=lots"])
    assert str(info.value) == ("Failed to load domain config: <overrides>:2:1: 'memory' must "
                               "be an integer (MiB), got the string 'lots'")


def test_load_config_from_dev_null_with_overrides() -> None:
    cfg = load_config("/dev/null", ["name=x", "memory=32"])
    assert (cfg.name, cfg.memory, cfg.source) == ("x", 32, "/dev/null")


def test_load_config_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path, "name = 'g'\nmemory = 64 MB\n")
    with pytest.raises(ConfigSyntaxError) as info:
        load_config(path)
    assert (info.value.source, info.value.line, info.value.column) == (str(path), 2, 13)


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        load_config(tmp_path / "missing.cfg")


# --- property: any values build or fail with InvalidConfig ---------------------------

KNOWN_KEYS = ["name", "type", "builder", "uuid", "memory", "maxmem", "vcpus", "maxvcpus",
              "cpus", "cpus_soft", "cpu_weight", "cap", "on_crash", "disk", "vif", "pci",
              "serial", "vnc", "vncdisplay", "boot", "accel", "kernel", "unknown_key"]
ATOMS = (st.integers(min_value=0, max_value=2**63 - 1)
         | st.text(alphabet="0123456789abcdefhpvx,:=^-_/@ MBs", max_size=12))
VALUES: st.SearchStrategy[Value] = st.recursive(
    ATOMS, lambda children: st.lists(children, max_size=3), max_leaves=6)


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from(KNOWN_KEYS), VALUES))
def test_any_values_build_or_raise_invalid_config(values: dict[str, Value]) -> None:
    values.setdefault("name", "g")
    try:
        build_config(values, "fuzz")
    except InvalidConfig:
        pass
