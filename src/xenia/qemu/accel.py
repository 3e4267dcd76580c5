"""Accelerator probe: KVM only where /dev/kvm is backed by hardware virtualization.

A /dev/kvm node alone proves nothing: nested setups such as kvm_pvm (paravirtual nested
KVM) expose /dev/kvm but run unmodified guest kernels by instruction emulation, which is
far slower than TCG. So `auto` needs all of: the vmx/svm CPU flag, the kvm_intel/kvm_amd
module, and a /dev/kvm we can open. Otherwise TCG, with the reason said once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from xenia.config.model import ACCELS
from xenia.errors import InvalidConfig, NotSupported
from xenia.hostos.hostinfo import cpu_flags


@dataclass(frozen=True)
class AccelChoice:
    name: str  # "kvm" or "tcg"
    reason: str


def probe(
    dev_kvm: Path = Path("/dev/kvm"),
    cpuinfo: Path = Path("/proc/cpuinfo"),
    sys_module: Path = Path("/sys/module"),
) -> AccelChoice:
    """Decide between KVM and TCG for this host."""
    if not dev_kvm.exists():
        return AccelChoice("tcg", "no /dev/kvm on this host")
    flags = cpu_flags(cpuinfo)
    if not flags & {"vmx", "svm"}:
        others = sorted(
            p.name for p in sys_module.glob("kvm_*") if p.name not in ("kvm_intel", "kvm_amd")
        ) if sys_module.is_dir() else []
        via = f" (provided by {', '.join(others)})" if others else ""
        return AccelChoice(
            "tcg",
            f"/dev/kvm{via} is not backed by hardware virtualization (no vmx/svm CPU flag); "
            "unmodified guests would run by emulation there",
        )
    if not ((sys_module / "kvm_intel").exists() or (sys_module / "kvm_amd").exists()):
        return AccelChoice("tcg", "neither kvm_intel nor kvm_amd is loaded")
    if not os.access(dev_kvm, os.R_OK | os.W_OK):
        return AccelChoice("tcg", "/dev/kvm is not accessible read-write")
    return AccelChoice("kvm", "hardware virtualization available")


def resolve(requested: str, host_default: str = "auto") -> AccelChoice:
    """The accelerator for one domain: its own `accel`, else the host's, else the probe."""
    if requested not in ACCELS:
        raise InvalidConfig(
            f"Failed to choose accelerator: unknown accel '{requested}' (use auto, kvm or tcg)"
        )
    choice = requested if requested != "auto" else host_default
    if choice == "tcg":
        return AccelChoice("tcg", "forced by configuration")
    found = probe()
    if choice == "kvm" and found.name != "kvm":
        if not Path("/dev/kvm").exists():
            raise NotSupported(
                "Failed to choose accelerator: accel=kvm was asked for but this host has no "
                "/dev/kvm; use accel='auto' or 'tcg'"
            )
        # Forced KVM on a host the probe distrusts: the user asked for it, honour it.
        return AccelChoice("kvm", f"forced by configuration (probe said: {found.reason})")
    return found
