"""Which PCIe root port each hot-pluggable device sits on: the domain's slot map.

Kept in the domain record (runtime["slots"], runtime["root_ports"]) so a restart, an
adopting xeniad, or a migration destination puts every device exactly where it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from xenia.errors import XeniaError

# Root ports beyond the cold-plugged devices, free for hotplug.
SPARE_ROOT_PORTS = 8


def port_id(i: int) -> str:
    return f"rp{i}"


@dataclass
class Layout:
    root_ports: int
    slots: dict[str, str] = field(default_factory=dict)  # qdev id -> root port id

    @classmethod
    def from_runtime(cls, runtime: dict[str, Any]) -> Layout:
        return cls(int(runtime.get("root_ports", SPARE_ROOT_PORTS)),
                   dict(runtime.get("slots", {})))

    def save(self, runtime: dict[str, Any]) -> None:
        runtime["root_ports"] = self.root_ports
        runtime["slots"] = dict(self.slots)

    def take(self, qdev: str) -> str:
        if qdev in self.slots:
            return self.slots[qdev]
        used = set(self.slots.values())
        for i in range(self.root_ports):
            if port_id(i) not in used:
                self.slots[qdev] = port_id(i)
                return port_id(i)
        raise XeniaError(
            f"Failed to place {qdev}: all {self.root_ports} PCIe root ports of the domain are "
            "in use; detach a device first"
        )

    def release(self, qdev: str) -> None:
        self.slots.pop(qdev, None)

    def port_devices(self, first_slot: int = 2) -> list[dict[str, Any]]:
        """The pcie-root-port devices, eight to a slot as functions of one device."""
        devs = []
        for i in range(self.root_ports):
            slot, fn = first_slot + i // 8, i % 8
            dev: dict[str, Any] = {"driver": "pcie-root-port", "id": port_id(i),
                                   "bus": "pcie.0", "chassis": i + 1, "port": 0x10 + i,
                                   "addr": f"0x{slot:x}.{fn}"}
            if fn == 0:
                dev["multifunction"] = True
            devs.append(dev)
        return devs
