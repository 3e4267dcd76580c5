"""MemberAgent: what a cluster member's xeniad runs beside its domains.

- the member lease (lease.py's LeaseKeeper, its own client with a 1 s attempt budget) and
  alive/<host> attached to it, with the host's free memory;
- the campaign for leader (election.py); while leading, the HAController (ha.py);
- the ownership gate of the DomainManager: an HA domain's QEMU is started only by a
  revision-checked claim of its owner key naming this host (a fresh domain: the key is
  absent; a restart here: the key names this host and the claim bumps its revision, so a
  failover decided on the old revision fails). Its config is stored under
  domains/<uuid>/config, from which another member recreates it;
- the fence: SIGKILL of this host's HA domains' QEMUs (never the others), from the
  lease's guard thread, before the lease can expire at etcd;
- reconciliation, on each owner-key change (one watch of domains/) and after every
  (re)grant of the lease: an owner key naming this host with no domain here -> create it
  from the stored config; a local HA domain owned by another host -> stale (this host was
  fenced or cut off meanwhile): destroyed here, never resumed.

Live migration of an HA domain (the cluster verbs') moves ownership with keys.claim at the
switch-over; the gate lets an incoming migration through for that reason.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xenia.cluster import keys
from xenia.cluster.client import EtcdClient, Timeouts
from xenia.cluster.election import Campaign, Election
from xenia.cluster.ha import HAController, check_ha
from xenia.cluster.kv import Compare, Delete, Event
from xenia.cluster.lease import LeaseKeeper, LeaseTiming
from xenia.cluster.quorum import LATE, QuorumProbe
from xenia.cluster.watch import Watch
from xenia.cluster.watchdog import DEFAULT_PATH as DEFAULT_WATCHDOG
from xenia.cluster.watchdog import Watchdog, open_watchdog
from xenia.config.model import DomainConfig
from xenia.errors import BackendError, InUse, NotFound, XeniaError
from xenia.host.manager import DomainManager
from xenia.hostos import procfs
from xenia.hostos.hostinfo import available_mib
from xenia.store.base import DomainRecord
from xenia.store.state import CREATING

log = logging.getLogger(__name__)

KILL_WAIT = 2.0  # how long the fence waits for a killed QEMU to be gone
RECONCILE_EVERY = 5.0  # seconds between full reconciliations of a member


def kill_all(pids: list[int], wait: float = KILL_WAIT) -> bool:
    """SIGKILL each pid; True once every one is gone (a zombie counts: it runs nothing)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + wait
    return all(procfs.wait_gone(p, max(0.0, deadline - time.monotonic())) for p in pids)


class MemberAgent:
    def __init__(self, client: EtcdClient, host: str, manager: DomainManager,
                 shared_pool_of: Callable[[str], str | None],
                 timing: LeaseTiming | None = None, lease_file: Path | None = None,
                 ask: Callable[[str], tuple[str, float]] | None = None,
                 watchdog: str = "auto", watchdog_path: Path = DEFAULT_WATCHDOG) -> None:
        self.client = client
        # /dev/watchdog, the fence's backstop: "auto" arms it where the device exists,
        # "on" refuses to join without it, "off" never (xeniad --ha-watchdog).
        self.watchdog_mode = watchdog
        self.watchdog_path = watchdog_path
        self._watchdog_tried = False
        self.host = keys.check_host(host)
        self.manager = manager
        self.shared_pool_of = shared_pool_of
        self.timing = timing or LeaseTiming()
        # The lease's id, kept for the next xeniad: a daemon restart within the TTL resumes
        # the lease, so the others never see this host as dead for it.
        self.lease_file = lease_file
        self.keeper: LeaseKeeper | None = None
        self.election: Election | None = None
        self.campaign: Campaign | None = None
        self.controller: HAController | None = None
        # Set by a fence, and until the first lease is held: no HA domain starts here then.
        self.fenced = threading.Event()
        self.fenced.set()
        self.fences: list[dict[str, Any]] = []  # wall-clock times, for status and tests
        self.restarts: list[dict[str, Any]] = []  # HA domains this member started for others
        self._watch: Watch | None = None
        self._watchdog: Watchdog | None = None
        # While renewals are late: is it the whole cluster that lost its etcd quorum (hold
        # the HA domains) or only this member (fence)? `ask(host)` asks that member's
        # xeniad (quorum.py); without it (no member credentials) this member always fences.
        self.quorum: QuorumProbe | None = None
        if ask is not None:
            self.quorum = QuorumProbe(self._voters, ask, self._renewals_late)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._tasks: set[concurrent.futures.Future[Any]] = set()
        self._recover = threading.Thread(target=self._recover_loop, name="lease-recover",
                                         daemon=True)
        # Replicated disks (set by service.make_agent): the host keeping a disk's copy
        # (HA restarts the domain only there), and making that copy this host's own
        # when a failover starts the domain here (its new path, or None).
        self.replica_host_of: Callable[[str], str | None] = lambda path: None
        self.promote: Callable[[str, str], Path | None] = lambda path, former: None

    # -- start and stop ------------------------------------------------------------------
    async def start(self) -> MemberAgent:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._join)
        if self._watch is None:
            self._watch = await asyncio.to_thread(
                Watch(self.client, keys.DOMAINS, self._events).start)
        if not self._recover.is_alive():
            self._recover.start()
        if self.quorum is not None and not self.quorum.started:
            self.quorum.start()
        await self.reconcile_all()
        return self

    async def start_retrying(self, every: float = 1.0) -> None:
        """start(), again every `every` s until etcd lets this member join."""
        while True:
            try:
                await self.start()
                return
            except XeniaError as e:
                log.warning("cluster member %s cannot join yet: %s", self.host, e)
                await asyncio.to_thread(self._end_lease)
                await asyncio.sleep(every)

    async def stop(self, revoke: bool = False) -> None:
        """xeniad stops: leadership and the lease are let go (not revoked: the domains keep
        running and the next xeniad resumes; if it does not come, the lease runs out).
        With `revoke` (the host leaves the cluster) alive/<host> goes at once: the leader
        fails over any HA domain still owned here, so move them first."""
        self._stop.set()
        await asyncio.to_thread(self._leave_threads, revoke)

    def _leave_threads(self, revoke: bool) -> None:
        if self._watch is not None:
            self._watch.stop()
        self._end_lease(revoke)
        if self._recover.is_alive():
            self._recover.join(timeout=5)
        if self.quorum is not None:
            self.quorum.stop()
        if self._watchdog is not None:
            self._watchdog.disarm()

    def _keeper_client(self) -> EtcdClient:
        return EtcdClient(self.client.endpoints, self.client.tls,
                          Timeouts(connect=0.5, request=self.timing.attempt))

    def _join(self) -> None:
        """Grant the member lease, put alive/<host> on it, campaign."""
        self._open_watchdog()
        keeper = LeaseKeeper(self._keeper_client(), self._fence, self.timing,
                             watchdog=self._watchdog,
                             hold=self.quorum.hold if self.quorum is not None else None,
                             pending=self.quorum.pending if self.quorum is not None else None)
        lease = 0
        old = self._saved_lease()
        if old:
            try:
                lease = keeper.start(old)
                log.info("resumed the member lease %x of the last xeniad", old)
            except NotFound:
                log.warning("the last xeniad's lease %x expired: the others saw this host "
                            "as dead meanwhile", old)
        if not lease:
            lease = keeper.start()
        self.keeper = keeper
        if self.lease_file is not None:
            with contextlib.suppress(OSError):
                self.lease_file.write_text(f"{lease:x}\n")
        self.client.put(keys.alive(self.host),
                        keys.encode({"lease": lease, "since": time.time(),
                                     "free_mib": available_mib()}), lease=lease)
        self.election = Election(self.client, self.host, lease)
        self.campaign = Campaign(self.election, self._leading).start()
        self.fenced.clear()
        log.info("cluster member %s: lease %x, alive", self.host, lease)

    def _open_watchdog(self) -> None:
        """Arm the watchdog once (a rejoin keeps the one it has). Armed, it resets the host
        if xeniad dies or hangs without disarming it (docs/cluster.md, "The watchdog")."""
        if self._watchdog is not None or self._watchdog_tried or self.watchdog_mode == "off":
            return
        required = self.watchdog_mode == "on"
        try:
            self._watchdog = open_watchdog(self.timing.watchdog, self.watchdog_path,
                                           required=required)
        except BackendError as e:
            if required:
                raise
            log.error("%s; HA fencing runs without a watchdog (--ha-watchdog off hides "
                      "this)", e.message)
        # NotSupported with "on" propagates each time (start_retrying says why); with
        # "auto" a missing device was logged once.
        self._watchdog_tried = not required

    def _saved_lease(self) -> int:
        if self.lease_file is None:
            return 0
        try:
            return int(self.lease_file.read_text().strip(), 16)
        except (OSError, ValueError):
            return 0

    def _end_lease(self, revoke: bool = False) -> None:
        if self.campaign is not None:
            self.campaign.stop()
            self.campaign = None
        self._leading(False)
        if self.keeper is not None:
            with contextlib.suppress(XeniaError):
                self.keeper.stop(revoke=revoke)
            self.keeper.client.close()
            self.keeper = None

    def _leading(self, leading: bool) -> None:
        if leading and self.controller is None and self.election is not None:
            log.warning("cluster member %s leads (term %d)", self.host, self.election.term)
            self.controller = HAController(self.client, self.election).start()
        elif not leading and self.controller is not None:
            self.controller.stop()
            self.controller = None

    # -- fencing ---------------------------------------------------------------------------
    def _voters(self) -> list[str]:
        """The etcd voters' names (a member's etcd name is its host name)."""
        return [str(m["name"]) for m in self.client.members()
                if m.get("name") and not m.get("isLearner")]

    def _renewals_late(self) -> bool:
        """Probe while the last answered renewal is late (or while holding)."""
        keeper = self.keeper
        guard = keeper.guard if keeper is not None else None
        if keeper is None or guard is None:
            return False
        if guard.state != "live":
            return guard.state == "held"
        return keeper.clock.now() - guard.last_sent > self.timing.interval + LATE

    def _fence(self, reason: str) -> bool:
        """The lease's guard thread: kill this host's HA domains' QEMUs now. No event loop,
        no etcd: only the local store and signals."""
        # Set first: a start that passed the gate before this and spawns its QEMU after
        # the scan below fails its confirm() and is undone (DomainManager._start).
        self.fenced.set()
        recs = [r for r in self.manager.store.list() if r.config.ha]
        pids = {int(r.runtime["pid"]) for r in recs if r.runtime.get("pid")}
        # A QEMU being started has no pid on record yet: found by its run directory.
        for r in recs:
            pids.update(procfs.pids_with(str(self.manager.paths.domain_run(r.uuid)) + "/"))
        pids.discard(os.getpid())
        ok = kill_all(sorted(pids))
        self.fences.append({"at": time.time(), "reason": reason, "killed": len(pids),
                            "domains": [r.name for r in recs], "confirmed": ok})
        log.error("fenced: killed %d HA domain process(es) (%s)", len(pids), reason)
        return ok

    def _recover_loop(self) -> None:
        """Back into the cluster after a fence: a lost lease is replaced by a new one (the
        others may have taken our domains: reconcile cleans what is no longer ours); a
        lease that outlived the outage is ours again."""
        last = time.monotonic()
        while not self._stop.wait(0.25):
            keeper = self.keeper
            if keeper is not None and not self.fenced.is_set() \
                    and time.monotonic() - last >= RECONCILE_EVERY:
                # Also now and then, not only on owner-key events: a start that failed
                # (a disk still locked, say) is tried again, a stale copy is found.
                last = time.monotonic()
                self._submit(self.reconcile_all())
            if keeper is None or not self.fenced.is_set():
                continue
            if keeper.state == "live":
                log.warning("lease live again after the fence; reconciling")
                self._rejoined("renewed")
            elif keeper.state == "lost":
                self._end_lease()
                try:
                    self._join()
                except XeniaError as e:
                    log.warning("rejoin after the fence failed, trying again: %s", e)
                    self.fenced.set()
                    continue
                self._rejoined("new lease")

    def _rejoined(self, how: str) -> None:
        self.fenced.clear()
        with contextlib.suppress(XeniaError):
            last = self.fences[-1] if self.fences else {}
            self.client.put(keys.fenced(self.host),
                            keys.encode({"at": last.get("at"), "reason": last.get("reason"),
                                         "rejoined": time.time(), "how": how}))
        if self._loop is not None:
            self._submit(self.reconcile_all())

    # -- the ownership gate (DomainManager.gate) -------------------------------------------
    async def may_start(self, rec: DomainRecord, incoming: bool) -> None:
        if not rec.config.ha or incoming:
            return
        await asyncio.to_thread(self._claim_for_start, rec)

    def _claim_for_start(self, rec: DomainRecord) -> None:
        doing = f"Failed to start HA domain '{rec.name}'"
        if self.fenced.is_set():
            raise BackendError(f"{doing}: this member fenced itself (its lease was not "
                               "renewed in time); it starts HA domains again once back")
        check_ha(rec.config, self.shared_pool_of)
        kv = self.client.get(keys.owner(rec.uuid))
        expected = None
        extra: dict[str, Any] = {}
        if kv is not None:
            now = keys.decode(kv)
            if now.get("host") != self.host:
                raise InUse(f"{doing}: member {now.get('host')} owns it; start it there, "
                            "or migrate it")
            expected = keys.Ownership(rec.uuid, self.host, kv.mod_revision)
            extra = {k: v for k, v in now.items() if k in ("restarts", "from")}
        only_on = self._only_on(rec)
        if only_on is not None:
            extra["only_on"] = only_on
        self.client.put(keys.domain_config(rec.uuid), self._config_value(rec))
        won, owner = keys.claim(self.client, rec.uuid, self.host, expected, extra=extra)
        if not won:
            raise InUse(f"{doing}: member {owner.host if owner else '?'} took it over "
                        "meanwhile")

    def _only_on(self, rec: DomainRecord) -> list[str] | None:
        """The members an HA domain with replicated disks may fail over to: those
        keeping a copy of every such disk (None: any member, all disks are shared)."""
        hosts: set[str] | None = None
        for d in rec.config.disks:
            if not d.target or d.is_cdrom:
                continue
            h = self.replica_host_of(d.target)
            if h is not None:
                hosts = {h} if hosts is None else hosts & {h}
        return sorted(hosts) if hosts is not None else None

    def confirm(self, rec: DomainRecord) -> None:
        """After the process started: still allowed (no fence since the gate)."""
        if rec.config.ha and self.fenced.is_set():
            raise BackendError(f"Failed to start HA domain '{rec.name}': this member fenced "
                               "itself while it started; it was stopped again")

    @staticmethod
    def _config_value(rec: DomainRecord) -> bytes:
        cfg = rec.config.to_dict()
        cfg["uuid"] = rec.uuid
        return keys.encode(cfg)

    async def ended(self, rec: DomainRecord) -> None:
        """The domain is gone for good (destroyed, or powered off to destroy): release it."""
        # Not while fenced: the fence's kills end domains that stay this host's to restart.
        if rec.config.ha and not self.fenced.is_set():
            await asyncio.to_thread(self._release, rec.uuid)

    def _release(self, uuid: str) -> None:
        kv = self.client.get(keys.owner(uuid))
        if kv is None or keys.decode(kv).get("host") != self.host:
            return
        # Only as read: a failover decided meanwhile keeps its claim.
        self.client.txn([Compare.mod(keys.owner(uuid), kv.mod_revision)],
                        [Delete(keys.owner(uuid)), Delete(keys.domain_config(uuid))])

    async def set_ha(self, ref: str, on: bool) -> DomainRecord:
        """`xenia ha DOM on|off` on a domain of this host."""
        m = self.manager
        rec = m.resolve(ref)
        async with m.locked(rec.uuid):
            rec = m.store.get(rec.uuid) or rec
            if on:
                cfg = DomainConfig.from_dict({**rec.config.to_dict(), "ha": True})
                probe = DomainRecord(rec.uuid, rec.name, rec.domid, cfg, rec.state)
                await asyncio.to_thread(self._claim_for_start, probe)
                rec.config.ha = True
                m.store.put(rec)
            else:
                await asyncio.to_thread(self._release, rec.uuid)
                rec.config.ha = False
                m.store.put(rec)
        return rec

    # -- reconciliation ----------------------------------------------------------------------
    def _submit(self, coro: Any) -> None:
        assert self._loop is not None
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        self._tasks.add(fut)
        fut.add_done_callback(self._tasks.discard)

    def _events(self, events: list[Event]) -> None:
        uuids = {ev.kv.key[len(keys.DOMAINS):].split("/", 1)[0] for ev in events
                 if ev.kv.key.endswith("/owner")}
        for uuid in sorted(uuids):
            self._submit(self.reconcile(uuid))

    async def reconcile_all(self) -> None:
        try:
            kvs, _ = await asyncio.to_thread(self.client.range, keys.DOMAINS)
        except XeniaError as e:
            log.warning("reconcile: cannot read the domains' owners: %s", e)
            return
        uuids = {kv.key[len(keys.DOMAINS):].split("/", 1)[0] for kv in kvs
                 if kv.key.endswith("/owner") and keys.decode(kv).get("host") == self.host}
        uuids |= {r.uuid for r in self.manager.store.list() if r.config.ha}
        for uuid in sorted(uuids):
            await self.reconcile(uuid)

    async def reconcile(self, uuid: str) -> None:
        """Make this host agree with domain `uuid`'s owner key."""
        if self.fenced.is_set() or self._stop.is_set():
            return
        try:
            okv = await asyncio.to_thread(self.client.get, keys.owner(uuid))
            ckv = await asyncio.to_thread(self.client.get, keys.domain_config(uuid))
        except XeniaError as e:
            log.warning("reconcile of %s: etcd unreachable: %s", uuid, e)
            return
        owner = keys.decode(okv) if okv else {}
        local = self.manager.store.get(uuid)
        mine = owner.get("host") == self.host
        if local is not None and local.config.ha and okv is not None and not mine:
            await self._drop_stale(local, str(owner.get("host")))
        elif local is None and mine and ckv is not None and not owner.get("gave_up"):
            await self._start_here(uuid, DomainConfig.from_dict(keys.decode(ckv)),
                                   str(owner.get("from") or ""))

    async def _drop_stale(self, rec: DomainRecord, owner: str) -> None:
        m = self.manager
        async with m.locked(rec.uuid):
            rec = m.store.get(rec.uuid) or rec
            if m.store.get(rec.uuid) is None or rec.state == CREATING:
                return
            log.warning("domain %s is owned by %s now: stopping the stale copy here",
                        rec.name, owner)
            await m.destroy_locked(rec)

    async def _start_here(self, uuid: str, cfg: DomainConfig, former: str = "") -> None:
        log.warning("domain %s is owned by this member: starting it (HA)", cfg.name)
        # Replicated disks run on this host's copies (before the build opens them).
        for i, d in enumerate(cfg.disks):
            if d.target and former:
                mine = await asyncio.to_thread(self.promote, d.target, former)
                if mine is not None:
                    cfg.disks[i] = dataclasses.replace(d, target=str(mine))
        rec = DomainRecord(uuid=uuid, name=cfg.name, domid=0, config=cfg, state=CREATING,
                           created_at=time.time())
        t = time.time()
        try:
            await self.manager.build(rec, doing="restart (HA)")
        except XeniaError as e:
            log.error("HA restart of %s here failed: %s", cfg.name, e)
            return
        self.restarts.append({"domain": cfg.name, "uuid": uuid, "at": t,
                              "running": time.time()})

    # -- status ----------------------------------------------------------------------------
    def hold_status(self) -> dict[str, Any] | None:
        """While the lease is held through a quorum loss: since when and why."""
        keeper = self.keeper
        if keeper is None or keeper.state != "held" or self.quorum is None:
            return None
        return {"state": "quorum lost, failover suspended", **(self.quorum.held or {})}

    def status(self) -> dict[str, Any]:
        """This member's view, for `xenia cluster status` (the cluster verbs) and tests."""
        keeper = self.keeper
        view: dict[str, Any] = {"quorum": True}
        try:
            # Linearizable reads: they need a quorum, which is what this reports.
            kvs, _ = self.client.range(keys.ALIVE)
            view["alive"] = sorted(keys.host_of(kv.key, keys.ALIVE) for kv in kvs)
            leader = self.client.get(keys.LEADER)
            view["leader"] = keys.decode(leader).get("host") if leader else None
        except XeniaError as e:
            view = {"quorum": False, "etcd_error": e.message,
                    "note": "no failover is decided without an etcd quorum"}
        return {**view,
            "host": self.host,
            "lease": f"{keeper.lease_id:x}" if keeper else None,
            "lease_state": keeper.state if keeper else "none",
            "fenced": self.fenced.is_set(),
            "fences": list(self.fences),
            "restarts": list(self.restarts),
            "leading": bool(self.election and self.election.is_leader),
            "ha": self.controller.state if self.controller else None,
            "hold": self.hold_status(),
            "decisions": list(self.controller.decisions) if self.controller else [],
        }

