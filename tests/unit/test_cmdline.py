"""Golden files of generated QEMU argv. Regenerate with XENIA_UPDATE_GOLDEN=1 and review."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from xenia.config.model import DomainConfig
from xenia.qemu.cmdline import RunFiles, build_argv, escape_opt, kernel_cmdline

GOLDEN = Path(__file__).parent / "golden"
UUID = "6f1d3b9e-2c4a-4e8b-9a51-0c7d2e3f4a5b"
FILES = RunFiles(Path("/run/xenia/domains") / UUID)

CASES = {
    "pv-basic": DomainConfig(name="tiny", kernel="/boot/vmlinuz", ramdisk="/boot/initrd.img",
                             extra="console=ttyS0 quiet", memory=256, vcpus=2),
    "pv-balloon-hotplug": DomainConfig(name="big", kernel="/boot/vmlinuz", root="/dev/vda1 ro",
                                       memory=256, maxmem=1024, vcpus=1, maxvcpus=4),
    "pvh-kvm": DomainConfig(name="p", type="pvh", kernel="/boot/vmlinux", cmdline="quiet"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_argv(case: str) -> None:
    accel = "kvm" if case.endswith("kvm") else "tcg"
    argv = build_argv(CASES[case], uuid=UUID, accel=accel, files=FILES)
    text = "\n".join(argv) + "\n"
    path = GOLDEN / f"{case}.argv"
    if os.environ.get("XENIA_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def test_every_device_is_json() -> None:
    argv = build_argv(CASES["pv-basic"], uuid=UUID, accel="tcg", files=FILES)
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
    assert kernel_cmdline(DomainConfig(name="x", extra="console=hvc0")) == "console=hvc0"
    assert kernel_cmdline(DomainConfig(name="x", cmdline="a b", extra="c")) == "a b console=ttyS0"


def test_memory_and_cpus_for_hotplug() -> None:
    argv = build_argv(CASES["pv-balloon-hotplug"], uuid=UUID, accel="tcg", files=FILES)
    assert argv[argv.index("-m") + 1] == "size=1024M"
    assert argv[argv.index("-smp") + 1] == "cpus=1,maxcpus=4"
    ports = [json.loads(v) for o, v in zip(argv, argv[1:], strict=False)
             if o == "-device" and "pcie-root-port" in v]
    assert len(ports) >= 8
    assert len({p["addr"] for p in ports}) == len(ports)
