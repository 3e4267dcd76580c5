"""OnActions: what a guest event does to its domain — xl's on_poweroff, on_reboot, on_crash,
on_watchdog.

A driver reports "poweroff", "reboot", "crash", "watchdog" (the guest's own doing, or its
watchdog device firing) or "exited" (its process died without being asked); this applies
the domain's configured action (destroy, restart, preserve, rename-restart, coredump-*,
soft-reset) under the domain's lock. It acts on the DomainManager through the small
surface `Domains` names, so the policy can be read (and, for HA, extended) on its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from xenia.config.model import DomainConfig
from xenia.drivers.base import Instance
from xenia.errors import XeniaError
from xenia.paths import Paths
from xenia.store.base import DomainRecord, Store
from xenia.store.state import CRASHED, CREATING, DYING, RUNNING, SHUTDOWN, DomainState

log = logging.getLogger(__name__)

# runtime key: the config `xenia config-update` gave, for the next reboot (host/xlverbs.py).
PENDING_CONFIG = "pending_config"


class Domains(Protocol):
    """What OnActions needs of the DomainManager."""

    paths: Paths
    store: Store

    def locked(self, uuid: str) -> asyncio.Lock: ...

    def instance_of(self, uuid: str) -> Instance | None: ...

    async def wait_built(self, uuid: str) -> None: ...

    def set_state(self, rec: DomainRecord, state: DomainState) -> None: ...

    def forget(self, rec: DomainRecord) -> None: ...

    async def destroy_locked(self, rec: DomainRecord) -> None: ...

    async def relaunch(self, rec: DomainRecord) -> None: ...
    async def ended(self, rec: DomainRecord) -> None: ...

    async def create(self, cfg: DomainConfig, paused: bool = False) -> DomainRecord: ...


class OnActions:
    def __init__(self, domains: Domains) -> None:
        self.domains = domains
        self._tasks: set[asyncio.Task[None]] = set()

    async def on_event(self, uuid: str, kind: str, data: dict[str, Any]) -> None:
        """A guest event of domain `uuid`: apply what its config says."""
        d = self.domains
        async with d.locked(uuid):
            rec = d.store.get(uuid)
            # A crash already preserved is reported again by an adopted boot watch.
            if rec is None or rec.state == DYING or (kind == "crash" and rec.state == CRASHED):
                return
            if rec.state == CREATING:
                # Still being built (create, restore, incoming migration): wait for the
                # build's end. If it failed it removed everything; on_crash must not act
                # then (restarting a half-received domain would boot a fresh copy beside
                # the source's guest). If it succeeded, the exit counts as for any domain.
                await d.wait_built(uuid)
                rec = d.store.get(uuid)
                if rec is None or rec.state in (CREATING, DYING):
                    log.info("domain %s: %s while being built; the build cleaned up",
                             rec.name if rec else uuid, kind)
                    return
            cfg = rec.config
            if kind == "exited":
                inst = d.instance_of(uuid)
                tail = inst.log_tail() if inst is not None else ""
                log.warning("domain %s: its process exited unexpectedly%s", rec.name,
                            ":\n" + tail if tail else "")
                action = cfg.on_crash
                if action.endswith("restart") or action == "soft-reset":
                    await d.relaunch(rec)
                else:
                    d.forget(rec)
                    # Gone for good as its on_crash says (a fenced member's kills do not
                    # count: the gate keeps those domains owned, cluster/agent.py).
                    await d.ended(rec)
                return
            action = {"poweroff": cfg.on_poweroff, "reboot": cfg.on_reboot,
                      "crash": cfg.on_crash, "watchdog": cfg.on_watchdog}[kind]
            log.info("domain %s: guest %s, applying %s", rec.name, kind, action)
            await self._apply(rec, kind, action)

    async def _apply(self, rec: DomainRecord, kind: str, action: str) -> None:
        d = self.domains
        inst = d.instance_of(rec.uuid)
        if inst is None:
            return
        if action.startswith("coredump-"):
            await self._dump_core(rec, inst)
            action = action.removeprefix("coredump-")
        if action == "destroy":
            await d.destroy_locked(rec)
            await d.ended(rec)
        elif action in ("restart", "soft-reset") and PENDING_CONFIG in rec.runtime:
            # `xenia config-update` left a config for this reboot: a new QEMU runs it.
            rec.config = DomainConfig.from_dict(rec.runtime.pop(PENDING_CONFIG))
            log.info("domain %s: restarting with its updated config", rec.name)
            await d.relaunch(rec)
        elif action in ("restart", "soft-reset"):
            await inst.reset()
            rec.started_at = time.time()
            d.set_state(rec, RUNNING)
        elif action == "preserve":
            d.set_state(rec, CRASHED if kind == "crash" else SHUTDOWN)
        elif action == "rename-restart":
            # As xl: the stopped domain keeps running state under a suffixed name, and a
            # new domain with the original name starts from the same config.
            cfg = DomainConfig.from_dict(rec.config.to_dict())
            rec.name = f"{rec.name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
            d.set_state(rec, CRASHED if kind == "crash" else SHUTDOWN)
            cfg.uuid = None
            # The preserved domain keeps its NICs and their MACs; the new one gets its own.
            for vif in cfg.vifs:
                vif.mac = None
                vif.devid = None
            # In a task of its own: the create takes the new domain's locks, not this one's.
            task = asyncio.get_running_loop().create_task(self._create(cfg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _dump_core(self, rec: DomainRecord, inst: Instance) -> None:
        path = (self.domains.paths.state / "dump"
                / f"{rec.name}-{time.strftime('%Y%m%dT%H%M%S')}.core")
        try:
            await inst.dump_core(path)
            log.info("domain %s: core dumped to %s", rec.name, path)
        except XeniaError as e:
            log.warning("domain %s: core dump failed: %s", rec.name, e)

    async def _create(self, cfg: DomainConfig) -> None:
        try:
            await self.domains.create(cfg)
        except XeniaError as e:
            log.error("rename-restart of %s failed: %s", cfg.name, e)
