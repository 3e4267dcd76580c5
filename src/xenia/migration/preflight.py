"""Pre-flight checks of a live migration, each with a message that says what to do.

Users of every migrating toolstack complain about opaque failures; so everything that can
be known before a single page is sent is checked first, on both ends, and reported
together.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from xenia.config.model import DomainConfig
from xenia.devices import disk as diskdev
from xenia.hostos import hostinfo
from xenia.store.state import LIVE, DomainState

# QEMU 7.x corrupts live-migrated TCG guests (../shared/notes/qemu-facts.md).
MIN_TCG_LIVE_QEMU = (8, 0, 0)


def version_tuple(text: str | None) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in str(text).split(".")[:3])
    except ValueError:
        return (0,)


def source_facts(record: dict[str, Any], accel: str, qemu_version: str) -> dict[str, Any]:
    return {"accel": accel, "qemu_version": qemu_version,
            "cpu_flags": sorted(hostinfo.cpu_flags()) if accel == "kvm" else [],
            "machine": record.get("runtime", {}).get("machine")}


def check_source(cfg: DomainConfig, state: DomainState, accel: str, qemu_version: str,
                 live: bool) -> list[str]:
    problems = []
    if state not in LIVE:
        problems.append(f"the domain is {state}; only running or paused domains migrate")
    if live and accel == "tcg" and version_tuple(qemu_version) < MIN_TCG_LIVE_QEMU:
        problems.append(
            f"QEMU {qemu_version} corrupts live-migrated TCG guests; install QEMU >= 8 "
            "(Debian 12: bookworm-backports) on both hosts"
        )
    if cfg.pci:
        problems.append("the domain has host PCI devices passed through; pci-detach them")
    if cfg.nomigrate:
        problems.append("the domain's config sets nomigrate = 1; it may not migrate (save and "
                        "restore it instead, or create it without nomigrate)")
    return problems


def replicated_disks(cfg: DomainConfig, replica_host_of: Callable[[str], str | None]
                     ) -> list[str]:
    """A replicated disk's copy is kept in step by the source QEMU's mirror job, which a
    live migration would leave behind: refused, with the ways that do move it."""
    problems = []
    for disk in cfg.disks:
        host = replica_host_of(disk.target) if disk.target else None
        if host is not None:
            problems.append(
                f"disk {disk.vdev} is a replicated volume (its copy is on '{host}'); live "
                "migration of replicated disks is not supported: with `ha = 1` the domain "
                f"fails over to '{host}', or shut it down and move the volume")
    return problems


def check_destination(cfg: DomainConfig, facts: dict[str, Any], *, my_accel: str,
                      my_qemu: str, my_machines: set[str], names: set[str],
                      uuids: set[str], uuid: str, copy_storage: bool,
                      bridge_problem: Any) -> list[str]:
    """Everything this host (the destination) can tell before the domain comes."""
    problems: list[str] = []
    if cfg.name in names:
        problems.append(f"a domain named '{cfg.name}' exists here already")
    if uuid in uuids:
        problems.append(f"a domain with UUID {uuid} exists here already")
    src_q = str(facts.get("qemu_version"))
    if version_tuple(my_qemu) < version_tuple(src_q):
        problems.append(f"QEMU here is {my_qemu}, older than the source's {src_q}; "
                        "migrating to an older QEMU is not supported — upgrade it")
    if my_accel == "tcg" and version_tuple(my_qemu) < MIN_TCG_LIVE_QEMU:
        problems.append(f"QEMU {my_qemu} here corrupts live-migrated TCG guests; install "
                        "QEMU >= 8")
    machine = facts.get("machine")
    if machine and machine not in my_machines:
        problems.append(f"QEMU here does not know machine type {machine}")
    if facts.get("accel") != my_accel:
        problems.append(f"the source runs the domain with {facts.get('accel')}, this host "
                        f"would use {my_accel}: the CPU models differ")
    if my_accel == "kvm":
        missing = set(facts.get("cpu_flags") or []) - hostinfo.cpu_flags()
        if missing:
            problems.append("this host's CPU lacks features the guest may use: "
                            + " ".join(sorted(missing)[:12]))
    free = hostinfo.available_mib()
    if cfg.effective_maxmem > free:
        problems.append(f"the domain needs {cfg.effective_maxmem} MiB, only {free} MiB "
                        "are free here")
    for spec in cfg.disks:
        if diskdev.is_remote(spec):
            problems.append(f"disk {spec.vdev} is served by driver domain '{spec.backend}' "
                            "of the source host; it cannot move")
            continue
        if diskdev.is_empty(spec):
            continue
        path = diskdev.target_path(spec)
        if copy_storage:
            if path.exists():
                problems.append(f"disk {spec.vdev}: {path} exists here already; "
                                "--copy-storage will not overwrite it")
            elif not path.parent.is_dir():
                problems.append(f"disk {spec.vdev}: directory {path.parent} does not exist "
                                "here")
        elif not path.exists():
            problems.append(f"disk {spec.vdev}: {path} is not visible here (no shared "
                            "storage at that path); use --copy-storage to copy it")
        elif not os.access(path, os.R_OK | os.W_OK):
            problems.append(f"disk {spec.vdev}: {path} is not writable here")
    for vif in cfg.vifs:
        msg = bridge_problem(vif)
        if msg:
            problems.append(msg)
    return problems
