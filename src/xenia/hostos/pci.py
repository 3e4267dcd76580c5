"""Host PCI passthrough through VFIO: pci-assignable-add/list/remove and the checks that
pci-attach needs. Real passthrough needs an IOMMU; a host without one gets a clear error.

An assignable device is bound to vfio-pci (driver_override + drivers_probe); its previous
driver is remembered in the store so `pci-assignable-remove -r` can give it back.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from xenia.errors import BackendError, InUse, InvalidConfig, NotFound, NotSupported
from xenia.store.base import Store

KIND = "pci-assignable"
SYS = Path("/sys")
_BDF = re.compile(r"(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])\Z")


def normalize_bdf(text: str) -> str:
    """xl's BDF ([DDDD:]BB:DD.F) as the kernel writes it: 0000:03:00.0."""
    m = _BDF.match(text.strip())
    if not m:
        raise InvalidConfig(f"Failed to read PCI address '{text}': write it as "
                            "[DOMAIN:]BUS:DEVICE.FUNCTION, e.g. 0000:03:00.0 or 03:00.0")
    dom, bus, dev, fn = m.groups()
    return f"{(dom or '0000').lower()}:{bus.lower()}:{dev.lower()}.{fn}"


def has_iommu(sys: Path = SYS) -> bool:
    groups = sys / "kernel" / "iommu_groups"
    return groups.is_dir() and any(groups.iterdir())


def require_iommu(doing: str, sys: Path = SYS) -> None:
    if not has_iommu(sys):
        raise NotSupported(
            f"Failed {doing}: this host has no IOMMU (no /sys/kernel/iommu_groups entries), "
            "so devices cannot be passed through safely; enable VT-d/AMD-Vi in the firmware "
            "and boot the host with intel_iommu=on (or amd_iommu=on) iommu=pt"
        )


def device_dir(bdf: str, doing: str, sys: Path = SYS) -> Path:
    d = sys / "bus" / "pci" / "devices" / bdf
    if not d.exists():
        raise NotFound(f"Failed {doing}: the host has no PCI device {bdf} (see lspci -D)")
    return d


def current_driver(d: Path) -> str | None:
    link = d / "driver"
    return link.resolve().name if link.exists() else None


def _write(path: Path, text: str, doing: str) -> None:
    try:
        path.write_text(text)
    except OSError as e:
        raise BackendError(f"Failed {doing}: writing {path}: {e}") from e


class PciAssign:
    def __init__(self, store: Store, sys: Path = SYS) -> None:
        self.store = store
        self.sys = sys

    def add(self, text: str) -> dict[str, Any]:
        bdf = normalize_bdf(text)
        doing = f"to make {bdf} assignable"
        d = device_dir(bdf, doing, self.sys)
        require_iommu(doing, self.sys)
        driver = current_driver(d)
        if driver == "vfio-pci":
            rec = {"bdf": bdf, "driver": None}
        else:
            subprocess.run(["modprobe", "vfio-pci"], check=False, capture_output=True)
            rec = {"bdf": bdf, "driver": driver}
            _write(d / "driver_override", "vfio-pci", doing)
            if driver is not None:
                _write(d / "driver" / "unbind", bdf, doing)
            _write(self.sys / "bus" / "pci" / "drivers_probe", bdf, doing)
            if current_driver(d) != "vfio-pci":
                raise BackendError(f"Failed {doing}: vfio-pci did not take the device (is "
                                   "the vfio-pci module available?)")
        self.store.obj_put(KIND, bdf, rec)
        return rec

    def list(self) -> list[dict[str, Any]]:
        return self.store.obj_list(KIND)

    def remove(self, text: str, rebind: bool, used_by: str | None) -> None:
        bdf = normalize_bdf(text)
        doing = f"to remove {bdf} from the assignable devices"
        rec = self.store.obj_get(KIND, bdf)
        if rec is None:
            raise NotFound(f"Failed {doing}: it is not assignable (see `xenia "
                           "pci-assignable-list`)")
        if used_by:
            raise InUse(f"Failed {doing}: domain '{used_by}' uses it; pci-detach it first")
        d = device_dir(bdf, doing, self.sys)
        _write(d / "driver_override", "\n", doing)
        if current_driver(d) == "vfio-pci":
            _write(d / "driver" / "unbind", bdf, doing)
        if rebind and rec.get("driver"):
            _write(self.sys / "bus" / "pci" / "drivers_probe", bdf, doing)
        self.store.obj_delete(KIND, bdf)

    def check_attachable(self, text: str, domain: str) -> str:
        bdf = normalize_bdf(text)
        doing = f"to attach {bdf} to '{domain}'"
        device_dir(bdf, doing, self.sys)
        require_iommu(doing, self.sys)
        if self.store.obj_get(KIND, bdf) is None:
            raise InvalidConfig(f"Failed {doing}: it is not assignable; run "
                                f"`xenia pci-assignable-add {bdf}` first")
        return bdf
