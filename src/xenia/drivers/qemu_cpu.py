"""Where a QEMU domain's vCPUs run: thread pinning (cpus=, vcpu-pin) and its cgroup
(cpu_weight/cap, sched-credit). vcpu-list's rows.

Hard affinity is each vCPU thread's sched_setaffinity; Linux has no soft affinity, so
cpus_soft is kept and shown but not enforced (docs/xl-compat.md). Weight and cap apply to
the whole QEMU process through a cgroup `xenia/<uuid>` (v1 cpu.shares/cfs_quota, v2
cpu.weight/cpu.max).
"""

from __future__ import annotations

import logging
from typing import Any

from xenia.errors import InvalidConfig, NotSupported, XeniaError
from xenia.hostos import affinity
from xenia.hostos.cgroups import DomainCgroup
from xenia.hostos.procfs import thread_stats
from xenia.store.base import DomainRecord
from xenia.store.state import PAUSED

log = logging.getLogger(__name__)

DEFAULT_WEIGHT = 256


def hard_affinity_text(rec: DomainRecord, vcpu: int) -> str | None:
    """The cpulist a vCPU is pinned to: vcpu-pin's, else cpus= (list or single form)."""
    pins = rec.runtime.get("pins", {})
    if str(vcpu) in pins:
        return str(pins[str(vcpu)])
    per = rec.config.cpus_per_vcpu
    if per:
        return per[vcpu] if vcpu < len(per) else None
    return rec.config.cpus


def pin_threads(rec: DomainRecord, threads: dict[int, int]) -> None:
    """Apply each vCPU's hard affinity to its thread (at start, and for hot-added vCPUs),
    inside the CPUs of the domain's cpupool if it is in one (host/cpupools.py)."""
    pool_list = rec.runtime.get("cpupool_cpus")
    pool = set(pool_list) if pool_list is not None else None
    for vcpu, tid in threads.items():
        text = hard_affinity_text(rec, vcpu)
        if text is None and pool is None:
            continue
        cpus = (affinity.resolve_cpulist(text, doing=f"apply cpus= of '{rec.name}'")
                if text is not None else set(pool or ()))
        if pool is not None:
            cpus &= pool
            if not cpus:
                raise InvalidConfig(f"Failed to pin vCPU {vcpu} of '{rec.name}': cpus= "
                                    f"'{text}' has no CPU in its cpupool "
                                    f"{rec.runtime.get('cpupool')} ({affinity.ranges(pool)})")
        affinity.set_thread_affinity(tid, cpus)


def pin(rec: DomainRecord, threads: dict[int, int], vcpu: str, hard: str) -> None:
    """vcpu-pin: VCPU is a number or "all"; HARD a CPULIST ("all" unpins)."""
    targets = sorted(threads) if vcpu == "all" else [int(vcpu)]
    for v in targets:
        if v not in threads:
            raise XeniaError(f"Failed to pin vCPU {v} of '{rec.name}': it has vCPUs "
                             f"{affinity.format_cpulist(threads, None) if threads else 'none'}")
    cpus = affinity.resolve_cpulist(hard, doing=f"pin vCPU {vcpu} of '{rec.name}'")
    for v in targets:
        affinity.set_thread_affinity(threads[v], cpus)
        rec.runtime.setdefault("pins", {})[str(v)] = hard


def vcpu_rows(rec: DomainRecord, pid: int, threads: dict[int, int]) -> list[dict[str, Any]]:
    rows = []
    for vcpu, tid in sorted(threads.items()):
        st = thread_stats(pid, tid)
        if rec.state == PAUSED:
            state = "--p"
        else:
            state = "r--" if st.state == "R" else "-b-"
        rows.append({
            "name": rec.name, "domid": rec.domid, "vcpu": vcpu, "cpu": st.last_cpu,
            "state": state, "time": st.cpu_time,
            "hard": affinity.format_cpulist(affinity.get_thread_affinity(tid)),
            "soft": rec.config.cpus_soft or "all",
        })
    return rows


# -- cgroup ------------------------------------------------------------------------------
def cgroup_for(rec: DomainRecord) -> DomainCgroup:
    return DomainCgroup(rec.uuid, name=rec.name)


def setup_cgroup(rec: DomainRecord, pid: int) -> None:
    """Put the domain's QEMU in its cgroup and apply cpu_weight/cap from the config.

    A host without the cpu controller still runs domains; only asking for a weight or cap
    there is an error.
    """
    wants = rec.config.cpu_weight is not None or rec.config.cap is not None
    try:
        cg = DomainCgroup.create(rec.uuid, name=rec.name)
        cg.attach(pid)
        if rec.config.cpu_weight is not None:
            cg.set_weight(rec.config.cpu_weight)
        if rec.config.cap is not None:
            cg.set_cap(rec.config.cap)
    except NotSupported:
        if wants:
            raise
        log.warning("domain %s: no cgroup for it on this host; weight/cap unavailable",
                    rec.name)
        return
    rec.runtime["cgroup"] = True


def remove_cgroup(rec: DomainRecord) -> None:
    if not rec.runtime.get("cgroup"):
        return
    try:
        cgroup_for(rec).remove(timeout=5.0, evict=True)
    except XeniaError as e:
        log.warning("domain %s: removing its cgroup failed: %s", rec.name, e)


def sched_get(rec: DomainRecord) -> dict[str, int]:
    if not rec.runtime.get("cgroup"):
        return {"weight": rec.config.cpu_weight or DEFAULT_WEIGHT, "cap": rec.config.cap or 0}
    return cgroup_for(rec).get()


def sched_set(rec: DomainRecord, weight: int | None, cap: int | None) -> None:
    if not rec.runtime.get("cgroup"):
        raise NotSupported(f"Failed to set the scheduling of '{rec.name}': it runs without a "
                           "cgroup (the host's cgroups lack the cpu controller)")
    cg = cgroup_for(rec)
    if weight is not None:
        cg.set_weight(weight)
        rec.config.cpu_weight = weight
    if cap is not None:
        cg.set_cap(cap)
        rec.config.cap = cap
