"""Guest NICs from xl vif specs: model, MAC, tap name, and QEMU -netdev/-device JSON.

The host side (tap on a bridge, MTU, rate) is the NetworkManager's; QEMU only opens the
existing tap by name (`script=no`), so QEMU never runs a script and never needs CAP_NET_ADMIN
for the bridge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xenia.config.model import VifSpec
from xenia.errors import InvalidConfig

# xl model names -> QEMU devices. virtio for pv/pvh (the paravirtual front end); hvm
# defaults to rtl8139 as xl does.
MODELS = {
    "virtio": "virtio-net-pci",
    "virtio-net": "virtio-net-pci",
    "e1000": "e1000",
    "e1000e": "e1000e",
    "rtl8139": "rtl8139",
}


def model_of(vif: VifSpec, dtype: str) -> str:
    model = vif.model or ("rtl8139" if dtype == "hvm" else "virtio")
    if model not in MODELS:
        raise InvalidConfig(
            f"Failed to add vif: model '{model}' is not supported "
            f"(use one of {', '.join(sorted(MODELS))})"
        )
    return model


@dataclass
class NicPlan:
    vif: VifSpec
    devid: int
    tap: str
    netdev: dict[str, Any]
    device: dict[str, Any]


def qdev_id(devid: int) -> str:
    return f"nic{devid}"


def plan(vif: VifSpec, devid: int, tap: str, dtype: str, port: str,
         bootindex: int | None = None) -> NicPlan:
    assert vif.mac is not None, "the MAC is chosen before planning"
    model = model_of(vif, dtype)
    netdev = {"type": "tap", "id": f"net{devid}", "ifname": tap, "script": "no",
              "downscript": "no", "vhost": False}
    if model == "virtio":
        netdev["vnet_hdr"] = True  # checksum/segmentation offload to the host side
    device: dict[str, Any] = {"driver": MODELS[model], "id": qdev_id(devid),
                              "netdev": f"net{devid}", "mac": vif.mac, "bus": port}
    if model == "virtio" and vif.mtu:
        device["host_mtu"] = vif.mtu
    if bootindex is not None:
        device["bootindex"] = bootindex
    return NicPlan(vif, devid, tap, netdev, device)
