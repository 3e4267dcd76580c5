"""QEMU command line builder: DomainConfig -> argv.

Every device, block node and netdev is passed in QEMU's JSON form, so no user string is
ever spliced into a comma-separated option. The few legacy options left (-chardev, -name,
-mon) only ever carry paths under our own run directory and validated names; those are
escaped anyway (QEMU doubles a comma to escape it).

Machine profile (see docs/decisions.md): q35 with a bank of pcie-root-ports, because the
devices issue hot-plugs disks, NICs and vCPUs and microvm has no PCI hotplug. Every virtio
device sits on a root port of its own so it can be unplugged again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xenia.config.model import DomainConfig

# Root ports beyond the cold-plugged devices, free for hotplug.
SPARE_ROOT_PORTS = 8
# Root ports are packed eight to a slot as functions of a multifunction device,
# starting at slot 2 (slot 0 is the host bridge, slot 1 is left for VGA on HVM).
# Fixed integrated devices: 0x1c rng, 0x1e balloon (0x1d is kept for a USB controller,
# 0x1f is q35's LPC/SATA/SMBus). Addresses are explicit so both ends of a migration
# build the same machine.
FIRST_PORT_SLOT = 2
CONSOLE_CHARDEV = "console0"
QMP_CHARDEV = "qmp0"


def escape_opt(value: str) -> str:
    """Escape a value for a legacy comma-separated QEMU option (a comma is doubled)."""
    return value.replace(",", ",,")


def jarg(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=False)


@dataclass(frozen=True)
class RunFiles:
    """The files of one running domain, all in its run directory."""

    dir: Path

    @property
    def qmp(self) -> Path:
        return self.dir / "qmp.sock"

    @property
    def console(self) -> Path:
        return self.dir / "console.sock"

    @property
    def console_log(self) -> Path:
        return self.dir / "console.log"

    @property
    def qemu_log(self) -> Path:
        return self.dir / "qemu.log"

    @property
    def pidfile(self) -> Path:
        return self.dir / "qemu.pid"


@dataclass
class PortAllocator:
    """Hands out pcie-root-ports by id; ports are created up front, `count` of them."""

    count: int
    used: list[str] = field(default_factory=list)

    def ids(self) -> list[str]:
        return [f"rp{i}" for i in range(self.count)]

    def take(self) -> str:
        for rid in self.ids():
            if rid not in self.used:
                self.used.append(rid)
                return rid
        raise RuntimeError("no free pcie-root-port")

    def devices(self) -> list[dict[str, Any]]:
        devs = []
        for i, rid in enumerate(self.ids()):
            slot, fn = FIRST_PORT_SLOT + i // 8, i % 8
            dev: dict[str, Any] = {
                "driver": "pcie-root-port",
                "id": rid,
                "bus": "pcie.0",
                "chassis": i + 1,
                "port": 0x10 + i,
                "addr": f"0x{slot:x}.{fn}",
            }
            if fn == 0:
                dev["multifunction"] = True
            devs.append(dev)
        return devs


def cpu_model(accel: str) -> str:
    # KVM: the host's CPU. TCG: qemu64, a stable model that migrates between any two
    # QEMUs; "max" would emulate more extensions and slow TCG down for nothing.
    return "host" if accel == "kvm" else "qemu64"


def kernel_cmdline(cfg: DomainConfig) -> str:
    line = cfg.effective_cmdline()
    # The guest's console is the first serial port. A Xen PV config names hvc0 or nothing;
    # with no console= at all, point the kernel at ttyS0 so `xenia console` shows the boot.
    if "console=" not in line:
        line = (line + " console=ttyS0").strip()
    return line


def build_argv(
    cfg: DomainConfig,
    *,
    uuid: str,
    accel: str,
    files: RunFiles,
    qemu: str = "qemu-system-x86_64",
    incoming: str | None = None,
) -> list[str]:
    """The full QEMU argv for a domain, started paused (-S) and daemonized."""
    ports = PortAllocator(SPARE_ROOT_PORTS)
    argv: list[str] = [
        qemu,
        "-name", f"guest={escape_opt(cfg.name)},debug-threads=on",
        "-uuid", uuid,
        "-machine", "q35",
        "-accel", "kvm" if accel == "kvm" else "tcg",
        "-cpu", cpu_model(accel),
        "-m", f"size={cfg.effective_maxmem}M",
        "-smp", f"cpus={cfg.vcpus},maxcpus={cfg.effective_maxvcpus}",
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-msg", "timestamp=on",
        # Reboot, poweroff and panic all stop the guest and wait for xeniad, which
        # applies on_reboot / on_poweroff / on_crash as xl does.
        "-action", "reboot=shutdown,shutdown=pause,panic=pause",
        "-chardev",
        f"socket,id={QMP_CHARDEV},path={escape_opt(str(files.qmp))},server=on,wait=off",
        "-mon", f"chardev={QMP_CHARDEV},mode=control",
        "-chardev",
        f"socket,id={CONSOLE_CHARDEV},path={escape_opt(str(files.console))},"
        f"server=on,wait=off,logfile={escape_opt(str(files.console_log))},logappend=on",
        "-device", jarg({"driver": "isa-serial", "id": "serial0", "chardev": CONSOLE_CHARDEV}),
        "-device", jarg({"driver": "pvpanic", "id": "pvpanic0"}),
    ]
    if cfg.kernel:
        argv += ["-kernel", cfg.kernel]
        if cfg.ramdisk:
            argv += ["-initrd", cfg.ramdisk]
        argv += ["-append", kernel_cmdline(cfg)]
    for dev in ports.devices():
        argv += ["-device", jarg(dev)]
    argv += [
        "-device",
        jarg({"driver": "virtio-balloon-pci", "id": "balloon0", "bus": "pcie.0", "addr": "0x1e"}),
        "-object", jarg({"qom-type": "rng-random", "id": "rng0", "filename": "/dev/urandom"}),
        "-device",
        jarg({"driver": "virtio-rng-pci", "id": "rng0dev", "rng": "rng0", "bus": "pcie.0",
              "addr": "0x1c"}),
    ]
    if incoming:
        argv += ["-incoming", incoming]
    argv += [
        "-pidfile", str(files.pidfile),
        "-D", str(files.qemu_log),
        "-S",
        "-daemonize",
    ]
    return argv
