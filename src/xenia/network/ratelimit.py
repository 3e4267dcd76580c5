"""`rate=` of a vif as tc token-bucket filters on the host side of the NIC.

Xen's netback gives a guest `bytes_per_interval` bytes of credit every `interval_us` and
holds back (does not drop) what the guest sends beyond that; it limits only the guest's
*transmit*. Here both directions are limited with the same rate:

- guest transmit = what the host device *receives* (its ingress). tc cannot queue on
  ingress, so an ingress qdisc redirects every frame (u32 match-all + mirred) to an IFB
  device of its own whose egress has the token bucket (tbf). IFB + tbf rather than an
  ingress policer: tbf queues like netback holds back, where a policer drops and TCP
  then saws; and act_police is not built into every kernel (this project's CI kernel
  lacks it), while ifb, mirred, u32 and tbf are in every Debian/Ubuntu kernel.
- guest receive = what the host device *transmits* (its egress): a tbf as its root qdisc.

The bucket holds one interval's credit (Xen's burst), at least one full frame. Works for
any device (tap or veth), so tests measure the same code on a veth pair.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from xenia.config.model import RateLimit
from xenia.errors import InvalidConfig

# Ethernet header plus one VLAN tag: tbf counts whole frames.
FRAME_OVERHEAD = 18
# tbf's bucket size goes to the kernel as time in psched ticks (64 ns) in a u32, its rate
# as bytes/s in a u32 (pyroute2 does not send the 64-bit TCA_TBF_RATE64).
PSCHED_TICKS_PER_SEC = 1_000_000_000 // 64
U32_MAX = 2**32 - 1
MAX_BUCKET_SECONDS = U32_MAX / PSCHED_TICKS_PER_SEC  # ~274 s
# How long a full queue may take to drain, beyond the bucket: tc's usual 50 ms.
QUEUE_LATENCY_S = 0.05

ROOT_HANDLE = 0x10000  # 1:
INGRESS_HANDLE = 0xFFFF0000  # ffff:
ETH_P_ALL = 0x0003
# The IFB of one device: named after the device's ifindex, which is unique while the
# device lives and fits IFNAMSIZ where "<15-char tap name>-ifb" would not.
IFB_PREFIX = "xifb"
IFB_ALIAS = "xenia: rate limit of "
_IFB_RE = re.compile(rf"{IFB_PREFIX}(\d+)\Z")


@dataclass(frozen=True)
class TbfPlan:
    """One token bucket: `rate` bytes/s, a bucket of `burst` bytes, `limit` bytes queued."""

    rate: int
    burst: int
    limit: int


def plan_rate(rate: RateLimit, mtu: int, doing: str = "to apply the vif rate") -> TbfPlan:
    """The tbf parameters for `rate` on a device with `mtu`; InvalidConfig if tc can't."""
    bps = rate.bytes_per_second
    frame = mtu + FRAME_OVERHEAD
    if bps <= 0 or rate.bytes_per_interval <= 0:
        raise InvalidConfig(f"Failed {doing}: rate of {rate.bytes_per_interval} bytes every "
                            f"{rate.interval_us}us is less than a byte; give a larger rate")
    if bps > U32_MAX:
        raise InvalidConfig(f"Failed {doing}: rate {bps * 8 / 1e9:.1f} Gbit/s is above what "
                            "tc's tbf takes (34 Gbit/s); leave rate= out for no limit")
    if frame / bps > MAX_BUCKET_SECONDS:
        raise InvalidConfig(f"Failed {doing}: rate {bps} B/s is too low to pass one "
                            f"{frame}-byte frame within tbf's {MAX_BUCKET_SECONDS:.0f} s bucket")
    # Xen's credit per interval is the burst; never below one frame or nothing passes.
    # A huge interval (rate=1KB/s@1h) would overflow the kernel's u32s (bucket time,
    # queue bytes): clamp, keeping the average rate.
    burst = min(max(rate.bytes_per_interval, frame), int(bps * MAX_BUCKET_SECONDS),
                U32_MAX // 2)
    limit = min(burst + max(int(bps * QUEUE_LATENCY_S), 2 * frame), U32_MAX)
    return TbfPlan(rate=bps, burst=burst, limit=limit)


def ifb_name(ifindex: int) -> str:
    return f"{IFB_PREFIX}{ifindex}"


def ifb_owner(ifname: str) -> int | None:
    """The ifindex an IFB of ours serves, from its name; None if not one of ours."""
    m = _IFB_RE.match(ifname)
    return int(m.group(1)) if m else None


def _tbf(ipr: Any, index: int, plan: TbfPlan) -> None:
    ipr.tc("add", "tbf", index, handle=ROOT_HANDLE, rate=plan.rate, burst=plan.burst,
           limit=plan.limit)


def apply_rate(ipr: Any, index: int, ifname: str, rate: RateLimit, mtu: int, *,
               guest_tx: bool = True, guest_rx: bool = True) -> TbfPlan:
    """Limit device `index` (a guest NIC's host side) to `rate` in the chosen directions.

    `ipr` is an open pyroute2 IPRoute. On failure, what was set up stays: the caller
    deletes the device (and clear_rate the IFB), as plug() does on rollback.
    """
    plan = plan_rate(rate, mtu)
    if guest_rx:
        _tbf(ipr, index, plan)
    if guest_tx:
        ifb = ifb_name(index)
        ipr.link("add", ifname=ifb, kind="ifb")
        (ifb_index,) = ipr.link_lookup(ifname=ifb)
        ipr.link("set", index=ifb_index, ifalias=IFB_ALIAS + ifname, state="up")
        _tbf(ipr, ifb_index, plan)
        ipr.tc("add", "ingress", index, INGRESS_HANDLE)
        ipr.tc("add-filter", "u32", index, parent=INGRESS_HANDLE, protocol=ETH_P_ALL,
               prio=1, keys=["0x0/0x0+0"], target=ROOT_HANDLE,
               action={"kind": "mirred", "direction": "egress", "action": "redirect",
                       "ifindex": ifb_index})
    return plan


def clear_rate(ipr: Any, index: int) -> None:
    """Remove the IFB serving device `index`, if any (its qdiscs go with the device)."""
    found = ipr.link_lookup(ifname=ifb_name(index))
    for i in found:
        ipr.link("del", index=i)
