"""Placement: which cluster member a new (or evacuated) domain goes to. place() is the rule.

Pure: it reads the members' published facts (cluster/facts.py) and the domain's needs
(Needs.of), does no I/O, and is unit-tested on its own. The rule:

- a member in maintenance, fenced, or whose lease is gone takes no placements;
- it must be able to run the domain: enough memory (free as committed, and available
  now), the accelerator the domain asks for (accel = "kvm"), the same CPU model when a KVM
  domain (`-cpu host`) moves between hosts, every disk reachable (a disk in a pool needs
  the same pool at the same location; a disk outside every pool needs the path seen there),
  and every network (bridge) its vifs name;
- of those, the member with the most free memory wins (ties: the name, for repeatability).
  "Free" is total memory minus what the member's domains are given: with shared or
  overcommitted RAM, MemAvailable says little about what a guest will be able to use.

When none fits, one error names every member and why it was rejected.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from xenia.config.model import DomainConfig
from xenia.errors import NotFound, NotSupported

DEFAULT_BRIDGE = "xenbr0"


@dataclass(frozen=True)
class Needs:
    name: str
    memory: int                                   # MiB
    accel: str = "auto"                           # auto, kvm, tcg
    cpu_model: str | None = None                  # a KVM domain moving: the source's model
    pools: tuple[str, ...] = ()                   # "name=location" of pooled disks
    paths: tuple[str, ...] = ()                   # disk paths outside every pool
    bridges: tuple[str, ...] = ()

    @classmethod
    def of(cls, cfg: DomainConfig, pools: Mapping[str, str],
           cpu_model: str | None = None) -> Needs:
        """What `cfg` needs of a host; `pools`: this host's pools (name -> location), to
        tell a pooled disk from a plain path."""
        pooled: list[str] = []
        paths: list[str] = []
        for d in cfg.disks:
            if not d.target or d.format == "empty":
                continue
            pool = _pool_of(d.target, pools)
            if pool is not None:
                pooled.append(f"{pool}={pools[pool]}")
            else:
                paths.append(d.target)
        # The kernel and initrd of a direct boot are read from the host like a disk.
        paths += [p for p in (cfg.kernel, cfg.ramdisk) if p]
        bridges = [v.bridge or DEFAULT_BRIDGE for v in cfg.vifs]
        if cfg.type == "container":
            # A container's network is its vifs too; its rootfs is a path like a disk.
            if cfg.rootfs:
                paths.append(cfg.rootfs)
        return cls(name=cfg.name, memory=max(cfg.memory, 1), accel=cfg.accel,
                   cpu_model=cpu_model, pools=tuple(dict.fromkeys(pooled)),
                   paths=tuple(dict.fromkeys(paths)), bridges=tuple(dict.fromkeys(bridges)))


def _pool_of(path: str, pools: Mapping[str, str]) -> str | None:
    p = PurePosixPath(path)
    best: tuple[int, str] | None = None
    for name, location in pools.items():
        loc = PurePosixPath(location)
        if location and (p == loc or loc in p.parents):
            if best is None or len(loc.parts) > best[0]:
                best = (len(loc.parts), name)
    return best[1] if best else None


@dataclass(frozen=True)
class Candidate:
    """One member as placement sees it: its facts (facts.py) and its cluster state."""

    name: str
    facts: Mapping[str, Any]
    alive: bool = True
    maintenance: bool = False
    fenced: bool = False
    # Paths of Needs.paths this member was asked about and sees (None: not asked).
    sees: frozenset[str] | None = None
    reserved: int = 0  # MiB promised to domains placed here in this same decision

    @property
    def free(self) -> int:
        return int(self.facts.get("free_mib", 0)) - self.reserved

    @property
    def available(self) -> int:
        return int(self.facts.get("available_mib", 0)) - self.reserved


@dataclass
class Decision:
    host: str
    rejected: dict[str, str] = field(default_factory=dict)


def reject_reason(c: Candidate, needs: Needs) -> str | None:
    """Why `c` cannot take the domain, or None when it can."""
    if not c.facts:
        return "it has published no facts (is its xeniad running?)"
    if c.fenced:
        return "it is fenced"
    if not c.alive:
        return "its lease is gone (the host is down or cut off)"
    if c.maintenance:
        return "it is in maintenance"
    if needs.memory > c.free:
        return f"{needs.memory} MiB needed, {max(c.free, 0)} MiB free"
    if needs.memory > c.available:
        return f"{needs.memory} MiB needed, only {max(c.available, 0)} MiB available now"
    accel = str(c.facts.get("accel", ""))
    if needs.accel == "kvm" and accel != "kvm":
        return f"accel=kvm asked for, it runs {accel or 'no accelerator'}"
    if needs.cpu_model and str(c.facts.get("cpu_model", "")) != needs.cpu_model:
        return (f"CPU model {c.facts.get('cpu_model') or 'unknown'} differs from the "
                f"domain's ({needs.cpu_model}; a KVM guest runs with -cpu host)")
    pools = {f"{p.get('name')}={p.get('location')}" for p in c.facts.get("pools", [])}
    missing_pools = [p.replace("=", " at ") for p in needs.pools if p not in pools]
    if missing_pools:
        return f"storage not reachable: no pool {', '.join(missing_pools)}"
    if needs.paths and c.sees is not None:
        unseen = [p for p in needs.paths if p not in c.sees]
        if unseen:
            return f"storage not reachable: {', '.join(unseen)} not found there"
    bridges = set(c.facts.get("bridges", []))
    missing = [b for b in needs.bridges if b not in bridges]
    if missing:
        return f"network {', '.join(missing)} not present"
    return None


def place(needs: Needs, candidates: Iterable[Candidate], wanted: str | None = None
          ) -> Decision:
    """The member for the domain, or NotSupported naming each member's reason
    (NotFound when `wanted` names no member)."""
    members = sorted(candidates, key=lambda c: c.name)
    if wanted is not None:
        picked = [c for c in members if c.name == wanted]
        if not picked:
            known = ", ".join(c.name for c in members) or "none"
            raise NotFound(f"Failed to place '{needs.name}' on host '{wanted}': it is no "
                           f"cluster member (members: {known}; see `xenia cluster status`)")
        members = picked
    rejected: dict[str, str] = {}
    fits: list[Candidate] = []
    for c in members:
        why = reject_reason(c, needs)
        if why is None:
            fits.append(c)
        else:
            rejected[c.name] = why
    if not fits:
        if wanted is not None:
            raise NotSupported(f"Failed to place '{needs.name}' on host '{wanted}': "
                               f"{rejected[wanted]}")
        detail = "; ".join(f"{n}: {why}" for n, why in rejected.items()) or "no members"
        raise NotSupported(f"Failed to place '{needs.name}': no cluster member can run it "
                           f"({detail}); free memory, end maintenance (`xenia host "
                           "maintenance H off`) or change the domain's needs")
    # max() keeps the first of equals: `members` is sorted, so ties go to the first name.
    best = max(fits, key=lambda c: c.free)
    return Decision(best.name, rejected)
