"""QEMU command line builder: DomainConfig -> argv.

Every device, block node and netdev is passed in QEMU's JSON form, so no user string is
ever spliced into a comma-separated option. The few legacy options left (-chardev, -name,
-mon, -machine, -vnc) only ever carry paths under our own run directory, validated names
and addresses; those are escaped anyway (QEMU doubles a comma to escape it), and always
under an explicit key (`type=`, `guest=`, `vnc=`): the first item of an option without a
key is taken as `key=value` when it holds a '=', so an implied value is never safe to
escape. Options whose whole argument is one value (-kernel, -initrd, -append, -bios,
-pidfile, -D, -incoming) are not split by QEMU at all. See qemu/opts.py.

Machine profile (see docs/decisions.md): q35 with a bank of pcie-root-ports, because disks,
NICs and vCPUs are hot-plugged and microvm has no PCI hotplug. Every virtio device sits on
a root port of its own (devices/layout.py) so it can be unplugged again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xenia.config.extras import translate_xen_names
from xenia.config.model import DomainConfig
from xenia.devices import cpu, display, spice
from xenia.devices.layout import SPARE_ROOT_PORTS, Layout
from xenia.qemu import platform, xldevices
from xenia.qemu.opts import escape_opt, machine_arg

# Fixed integrated devices on pcie.0: 0x1c rng, 0x1e balloon (0x1d is kept for a USB
# controller, 0x1f is q35's LPC/SATA/SMBus; slot 1 for VGA on HVM; root ports from slot 2).
# Addresses are explicit so both ends of a migration build the same machine.
CONSOLE_CHARDEV = "console0"
QMP_CHARDEV = "qmp0"

# Added to a direct-kernel-boot guest's command line under TCG, each unless the line sets
# its key already (docs/decisions.md, "Early boot on a busy TCG host"). On a busy host a
# TCG vCPU can be off the host CPU for longer than the kernel's early timer check waits:
# without no_timer_check 6 of 30 guests created at once panicked ("IO-APIC + timer doesn't
# work!"). Under KVM nothing is added.
TCG_KERNEL_PARAMS: tuple[str, ...] = ("no_timer_check",)


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

    @property
    def stderr(self) -> Path:
        """QEMU's stderr when the jail daemonizes it (its errors at start)."""
        return self.dir / "qemu.err"


def cpu_model(accel: str) -> str:
    # KVM: the host's CPU. TCG: qemu64, a stable model that migrates between any two
    # QEMUs; "max" would emulate more extensions and slow TCG down for nothing.
    return "host" if accel == "kvm" else "qemu64"


def _split_cmdline(line: str) -> tuple[list[str], list[str]]:
    """(kernel words, init words) as the kernel splits a command line: on blanks except
    inside double quotes; words after a lone `--` are init's."""
    words = re.findall(r'(?:[^\s"]|"[^"]*"?)+', line)
    cut = words.index("--") if "--" in words else len(words)
    return words[:cut], words[cut:]


def _param_key(word: str) -> str:
    # The kernel takes - and _ in a parameter's name as the same character.
    return word.split("=", 1)[0].replace("-", "_")


def tcg_params_added(cfg: DomainConfig, accel: str) -> list[str]:
    """The TCG_KERNEL_PARAMS this domain gets: none under KVM or without a kernel, and
    none whose key the config's own cmdline/extra sets (the user's value wins)."""
    if accel != "tcg" or not cfg.kernel:
        return []
    have = {_param_key(w) for w in _split_cmdline(cfg.effective_cmdline())[0]}
    return [p for p in TCG_KERNEL_PARAMS if _param_key(p) not in have]


def kernel_cmdline(cfg: DomainConfig, added: Sequence[str] = ()) -> str:
    """The -append line: the config's (Xen's device names translated), plus console=ttyS0
    if it names no console, plus `added` (tcg_params_added); both go before a `--`, after
    which words are init's."""
    kernel, init = _split_cmdline(cfg.effective_cmdline())
    kernel = translate_xen_names(kernel, cfg)
    # The guest's console is the first serial port. A Xen PV config names hvc0 or nothing;
    # with no console= at all, point the kernel at ttyS0 so `xenia console` shows the boot.
    if not any(w.startswith("console=") for w in kernel):
        kernel.append("console=ttyS0")
    return " ".join(kernel + list(added) + init)


def build_argv(
    cfg: DomainConfig,
    *,
    uuid: str,
    accel: str,
    files: RunFiles,
    qemu: str = "qemu-system-x86_64",
    layout: Layout | None = None,
    devices: Sequence[tuple[str, dict[str, Any]]] = (),
    incoming: str | None = None,
    machine: str = "q35",
    firmware: Sequence[str] = (),
    vnc_display: int | None = None,
    kernel_params: Sequence[str] = (),
    tpm: Sequence[str] = (),
    host_fds: Mapping[str, int] | None = None,
    spice_tls: str | None = None,
) -> list[str]:
    """The full QEMU argv for a domain, started paused (-S) and daemonized.

    `devices` are (option, JSON) pairs for disks, NICs and controllers, already placed on
    the root ports of `layout`. HVM: `firmware` are the firmware's arguments (OVMF flash),
    `vnc_display` the VNC display chosen for it. `kernel_params` are added to a direct
    kernel boot's command line (tcg_params_added). `host_fds` are the fds xeniad opened
    for QEMU (qemu/hostfds.py), inherited by it. `spice_tls` is xeniad's SPICE
    certificate directory, for spicetls_port.
    """
    layout = layout or Layout(SPARE_ROOT_PORTS)
    argv: list[str] = [
        qemu,
        "-name", f"guest={escape_opt(cfg.name)},debug-threads=on",
        "-uuid", uuid,
        "-machine", machine_arg(machine, acpi=cfg.type != "hvm" or cfg.acpi),
        "-accel", "kvm" if accel == "kvm" else "tcg",
        "-cpu", cpu_model(accel) + platform.cpu_flags(cfg, accel)
        + xldevices.cpu_flags(cfg, accel),
        "-m", f"size={cfg.effective_maxmem}M",
        "-smp", cpu.smp(cfg.effective_maxvcpus),
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
    argv += xldevices.vnuma_args(cfg)
    argv += list(firmware)
    argv += display.graphics_argv(cfg, vnc_display)
    argv += display.usb_argv(cfg)
    argv += xldevices.sound_args(cfg, platform.dm_args(cfg)) + xldevices.keymap_args(cfg)
    argv += platform.platform_argv(cfg, files.dir, host_fds)
    # After the channels' controller (its vdagent port).
    argv += spice.spice_argv(cfg, spice_tls)
    argv += list(tpm)  # the vTPM's backend and device (qemu/vtpm.py)
    if cfg.kernel:
        argv += ["-kernel", cfg.kernel]
        if cfg.ramdisk:
            argv += ["-initrd", cfg.ramdisk]
        argv += ["-append", kernel_cmdline(cfg, kernel_params)]
    # vCPU 0 comes from -smp; the others are devices so that each can be unplugged.
    for i in range(1, cfg.vcpus):
        argv += ["-device", jarg(cpu.device(i, accel))]
    for dev in layout.port_devices():
        argv += ["-device", jarg(dev)]
    argv += xldevices.p9_args(cfg, layout.slots)  # after the root ports they sit on
    argv += spice.usbredir_args(cfg, layout.slots)
    argv += [
        "-device",
        jarg({"driver": "virtio-balloon-pci", "id": "balloon0", "bus": "pcie.0", "addr": "0x1e"}),
        "-object", jarg({"qom-type": "rng-random", "id": "rng0", "filename": "/dev/urandom"}),
        "-device",
        jarg({"driver": "virtio-rng-pci", "id": "rng0dev", "rng": "rng0", "bus": "pcie.0",
              "addr": "0x1c"}),
    ]
    for opt, obj in devices:
        argv += [opt, jarg(obj)]
    if incoming:
        argv += ["-incoming", incoming]
    # The admin's own arguments (device_model_args), after Xenia's devices and before the
    # process options, which must stay Xenia's.
    argv += platform.dm_args(cfg)
    argv += [
        "-pidfile", str(files.pidfile),
        "-D", str(files.qemu_log),
        "-S",
        "-daemonize",
    ]
    return argv
