"""candidates() and choose(): placement.py's rule fed with the cluster's live state.

This host's facts are computed afresh (a create right after another must see the memory
the first one took); the other members' come from hosts/<host>, which they refresh every
few seconds and after each change. Liveness: while members hold leases (alive/<host>),
a member without one is down; before any lease exists (HA not running), a member whose
facts are older than STALE seconds is taken as down. Disk paths outside every pool are
checked on each candidate (POST /v1/cluster/paths), in parallel.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xenia.cluster import keys
from xenia.cluster.facts import host_facts
from xenia.cluster.placement import Candidate, Decision, Needs, place
from xenia.config.model import DomainConfig
from xenia.errors import XeniaError

if TYPE_CHECKING:
    from xenia.cluster.node import ClusterNode

STALE = 15.0


def _read(node: ClusterNode) -> list[Candidate]:
    client = node.client()
    cfg = node.cfg
    assert cfg is not None

    def rng(prefix: str) -> dict[str, dict[str, Any]]:
        kvs, _ = client.range(prefix)
        return {keys.host_of(kv.key, prefix): keys.decode(kv) for kv in kvs}

    members, facts = rng(keys.MEMBERS), rng(keys.HOSTS)
    alive, maint, fenced = rng(keys.ALIVE), rng(keys.MAINTENANCE), rng(keys.FENCED)
    facts[cfg.name] = host_facts(node.engine, cfg.name, cfg.address, cfg.api)
    now = time.time()
    out = []
    for name in members:
        f = facts.get(name, {})
        if alive:
            up = name in alive
        else:
            up = bool(f) and now - float(f.get("updated", 0)) < STALE
        out.append(Candidate(name, f, alive=up or name == cfg.name,
                             maintenance=name in maint, fenced=name in fenced))
    return out


async def candidates(node: ClusterNode, needs: Needs, exclude: Iterable[str] = ()
                     ) -> list[Candidate]:
    skip = set(exclude)
    cands = [c for c in await asyncio.to_thread(_read, node) if c.name not in skip]
    if not needs.paths:
        return cands

    async def sees(c: Candidate) -> Candidate:
        if c.name == node.name:
            found = [p for p in needs.paths if Path(p).exists()]
        else:
            try:
                ans = await node.peer(c.name, timeout=5).arequest(
                    "POST", "/v1/cluster/paths", {"paths": list(needs.paths)})
                found = [str(p) for p in ans.get("found", [])]
            except XeniaError:
                found = []
        return replace(c, sees=frozenset(found))

    return list(await asyncio.gather(*(sees(c) for c in cands)))


def needs_of(node: ClusterNode, cfg: DomainConfig, cpu_model: str | None = None) -> Needs:
    pools = {p.name: p.location for p in node.engine.storage.list_pools()}
    return Needs.of(cfg, pools, cpu_model)


async def choose(node: ClusterNode, cfg: DomainConfig, wanted: str | None = None) -> Decision:
    needs = needs_of(node, cfg)
    return place(needs, await candidates(node, needs), wanted)
