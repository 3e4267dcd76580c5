"""evacuate(): every running or paused domain off this host by live migration, then this
host in maintenance; set_maintenance(): the maintenance key.

Maintenance goes on FIRST, before the migrations (the issue's order is "migrate, then
maintenance"; the effect the user sees at the end is the same): a create placed on this
host while it empties would undo the evacuation.

Targets are decided one domain after another, each counting the memory of the ones
already sent to a member, so parallel migrations do not all pick the same emptiest
member; then at most `parallel` migrations run at once (each is a QEMU migration stream
and a CPU-heavy sender under TCG: more in parallel only slows each). A domain that cannot
be placed or whose migration fails is reported with the reason, and stays here, running.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from xenia.cluster import keys
from xenia.cluster.placement import place
from xenia.cluster.placer import candidates, needs_of
from xenia.drivers.base import MigrationOptions
from xenia.errors import XeniaError
from xenia.qemu import accel as accel_mod
from xenia.store.state import LIVE

if TYPE_CHECKING:
    from xenia.cluster.node import ClusterNode

PARALLEL = 2


async def set_maintenance(node: ClusterNode, host: str, on: bool, reason: str = "") -> None:
    client = node.client()
    if host not in node.members:
        keys.check_host(host)
        from xenia.errors import NotFound

        raise NotFound(f"Failed to set maintenance of '{host}': no such cluster member "
                       "(see `xenia cluster status`)")
    if on:
        value = keys.encode({"since": time.time(), "by": node.name, "reason": reason})
        await asyncio.to_thread(client.put, keys.maintenance(host), value)
    else:
        await asyncio.to_thread(client.delete, keys.maintenance(host))


async def evacuate(node: ClusterNode, parallel: int = PARALLEL) -> dict[str, Any]:
    engine = node.engine
    me = node.name
    await set_maintenance(node, me, True, "evacuate")
    recs = [r for r in engine.store.list() if r.state in LIVE]
    failed: list[dict[str, str]] = []
    plan: list[tuple[Any, str]] = []
    cands: dict[str, Any] | None = None
    for rec in recs:
        try:
            model = None
            if accel_mod.resolve(rec.config.accel, "auto").name == "kvm":
                from xenia.cluster.facts import cpu_model

                model = cpu_model()  # -cpu host: the same model at the other end
            needs = needs_of(node, rec.config, model)
            if cands is None or needs.paths:
                found = await candidates(node, needs, exclude=[me])
                cands = {c.name: c for c in found}
            decision = place(needs, cands.values())
        except XeniaError as e:
            failed.append({"name": rec.name, "reason": e.message})
            continue
        c = cands[decision.host]
        cands[decision.host] = replace(c, reserved=c.reserved + needs.memory)
        plan.append((rec, decision.host))

    sem = asyncio.Semaphore(max(1, parallel))

    async def move(rec: Any, target: str) -> dict[str, Any]:
        async with sem:
            started = time.monotonic()
            try:
                job = await engine.sender.start(rec.uuid, MigrationOptions(host=target))
                assert job.task is not None
                await job.task
            except XeniaError as e:
                return {"name": rec.name, "to": target, "ok": False, "reason": e.message}
            ok = job.status == "completed"
            return {"name": rec.name, "to": target, "ok": ok,
                    "reason": "" if ok else job.message,
                    "seconds": round(time.monotonic() - started, 2)}

    results = await asyncio.gather(*(move(r, t) for r, t in plan))
    migrated = [r for r in results if r["ok"]]
    failed += [{"name": r["name"], "reason": f"migration to {r['to']} failed: {r['reason']}"}
               for r in results if not r["ok"]]
    if node.publisher is not None:
        node.publisher.kick()
    return {"host": me, "maintenance": True, "migrated": migrated, "failed": failed}
