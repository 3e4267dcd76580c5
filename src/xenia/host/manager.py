"""DomainManager: the domains of this host — their lifecycle, guest events, adoption.

Every state change is written to the store before it is acted on, through the state
machine (store/state.py). Domains are identified by UUID internally; users name them by
name, domid or UUID (`resolve`). What a guest event does is host/actions.py's; the
device verbs (host/devices.py), what `xenia list` shows (host/views.py), save/restore and
migration (migration/) are built on the public surface here:

- resolve, instance, instance_of, driver_for: find a domain and what runs it;
- locked(uuid): the domain's lock, held by every change to it;
- set_state(rec, state): a state change, stored;
- build(rec, ...): admit and start a new domain (create, restore, incoming migration);
- destroy_locked(rec): stop and forget a domain (destroyed, or handed over to another
  host or a save file), forget(rec): drop one whose process is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from xenia.config.model import DomainConfig
from xenia.drivers.base import Driver, GuestEvents, Instance
from xenia.errors import (
    AdoptLater,
    AlreadyExists,
    BackendError,
    InvalidConfig,
    NotFound,
    NotSupported,
    TimedOut,
    XeniaError,
)
from xenia.host.actions import OnActions
from xenia.host.validate import check_config, check_name
from xenia.paths import Paths
from xenia.revert import Revert
from xenia.store.base import DomainRecord, Store
from xenia.store.state import (
    CREATING,
    DYING,
    PAUSED,
    PRESERVED,
    RUNNING,
    DomainState,
    not_startable,
    require,
    transition,
)

log = logging.getLogger(__name__)

DOM0_NAME = "Domain-0"
# Seconds between the attempts to adopt a running domain whose QMP did not answer; the
# last is repeated for as long as its process runs.
ADOPT_RETRY = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
# runtime key: a QEMU started ahead for `create --from` (migration/clonepool.py), not a
# domain yet: kept in the store (a killed xeniad's restart reaps it as half-built) but
# not listed. Its value is the snapshot it is for.
POOLED = "pooled"


def pooled(rec: DomainRecord) -> bool:
    return POOLED in rec.runtime


class OwnershipGate(Protocol):
    """A cluster member's say over its HA domains (cluster/agent.py): may_start raises
    unless this host owns the domain (and takes ownership of a new one); ended releases
    it when the domain is gone for good."""

    async def may_start(self, rec: DomainRecord, incoming: bool) -> None: ...
    def confirm(self, rec: DomainRecord) -> None: ...
    async def ended(self, rec: DomainRecord) -> None: ...


class DomainManager:
    def __init__(self, paths: Paths, store: Store, drivers: list[Driver]) -> None:
        self.paths = paths
        self.store = store
        self.drivers = {t: d for d in drivers for t in d.types}
        self.actions = OnActions(self)
        self._inst: dict[str, Instance] = {}
        self._gone: dict[str, asyncio.Event] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._create_lock = asyncio.Lock()
        # Set when the build of a domain (create, restore, incoming migration) has ended.
        self._built: dict[str, asyncio.Event] = {}
        # Domains whose process runs but whose adoption failed: the retrying tasks.
        self._adopting: dict[str, asyncio.Task[None]] = {}
        # Set by xeniad on a cluster member: every start of an HA domain's process asks it.
        self.gate: OwnershipGate | None = None
        # Called after a domain's process is built, before its guest runs (a boot, not a
        # restore or an incoming migration): replicated disks start their mirrors here.
        self.start_hooks: list[Callable[[DomainRecord, Instance], Awaitable[None]]] = []
        # Domains a `xenia start` is booting (start refuses a second one at once).
        self._starting: set[str] = set()

    # -- finding domains -----------------------------------------------------------------
    def driver_for(self, cfg: DomainConfig) -> Driver:
        drv = self.drivers.get(cfg.type)
        if drv is None:
            raise InvalidConfig(
                f"Failed to create domain '{cfg.name}': no driver for type '{cfg.type}' "
                f"(known: {', '.join(sorted(self.drivers))})"
            )
        return drv

    def resolve(self, ref: str | int) -> DomainRecord:
        """A domain by name, domid or UUID, as xl accepts them."""
        ref = str(ref)
        recs = self.store.list()
        for rec in recs:
            if rec.name == ref or rec.uuid == ref.lower():
                return rec
        if ref.isdigit():
            for rec in recs:
                if rec.domid == int(ref):
                    return rec
        if ref in (DOM0_NAME, "0"):
            raise InvalidConfig(f"Failed to find domain '{ref}': Domain-0 is the host itself")
        raise NotFound(f"Failed to find domain '{ref}': no such domain (see `xenia list`)")

    def instance(self, rec: DomainRecord) -> Instance:
        """The domain's running instance; BackendError if its process is not running."""
        inst = self._inst.get(rec.uuid)
        if inst is None and rec.uuid in self._adopting:
            raise BackendError(f"Failed to reach domain '{rec.name}': it runs, but xeniad "
                               "could not take it over yet (its QMP does not answer); "
                               "retrying — try again in a moment")
        if inst is None or not inst.alive:
            raise BackendError(f"Failed to reach domain '{rec.name}': its process is not running")
        return inst

    def instance_of(self, uuid: str) -> Instance | None:
        """The domain's instance as last known, running or not (None: it has none)."""
        return self._inst.get(uuid)

    # -- what orchestration holds and records --------------------------------------------
    def locked(self, uuid: str) -> asyncio.Lock:
        """The domain's lock (`async with manager.locked(uuid)`): every change to a domain
        (a verb, a guest event, a migration) holds it, so they never interleave."""
        return self._locks.setdefault(uuid, asyncio.Lock())

    def set_state(self, rec: DomainRecord, state: DomainState) -> None:
        """Move the domain to `state` (an allowed transition, store/state.py) and store it."""
        transition(rec, state)
        self.store.put(rec)

    async def wait_built(self, uuid: str) -> None:
        """Until the build of domain `uuid` (if one is under way) has ended, either way."""
        built = self._built.get(uuid)
        if built is not None:
            await built.wait()

    def forget(self, rec: DomainRecord) -> None:
        """Drop a domain whose process is gone: its host side, its record, its files."""
        drv = self.drivers.get(rec.config.type)
        if drv is not None:
            try:
                drv.release(rec)
                drv.discard(rec)
            except XeniaError as e:
                log.warning("domain %s: cleaning up its host side failed: %s", rec.name, e)
        self.store.delete(rec.uuid)
        self._inst.pop(rec.uuid, None)
        ev = self._gone.pop(rec.uuid, None)
        if ev is not None:
            ev.set()
        # Leftovers of a domain that died while no daemon watched.
        run_dir = self.paths.domain_run(rec.uuid)
        if run_dir.exists():
            shutil.rmtree(run_dir, ignore_errors=True)

    async def destroy_locked(self, rec: DomainRecord) -> None:
        """Stop the domain's process at once, without on_* actions, and forget it: a
        destroy, or a domain that lives on elsewhere now (another host, a save file).
        The caller holds its lock."""
        self.set_state(rec, DYING)
        inst = self._inst.get(rec.uuid)
        if inst is not None:
            await inst.destroy()
        self.forget(rec)
        log.info("destroyed domain %s", rec.name)

    # -- startup / shutdown of the daemon ------------------------------------------------
    async def adopt_all(self) -> None:
        """Re-attach to every domain in the store; forget those whose process is gone.
        One whose process runs but cannot be reached now is retried in the background
        (ADOPT_RETRY): forgetting it would let a second QEMU be started on its disks."""
        for rec in self.store.list():
            await self._adopt(rec, retry=True)

    async def _adopt(self, rec: DomainRecord, retry: bool) -> bool:
        """Adopt one domain; False if it must be tried again later."""
        drv = self.drivers.get(rec.config.type)
        inst = None
        if drv is not None:
            try:
                inst = await drv.adopt(rec, self._events_for(rec.uuid))
            except AdoptLater as e:
                log.warning("domain %s: its process runs but cannot be adopted now (%s); "
                            "keeping it and retrying", rec.name, e.message)
                if retry:
                    self._adopting[rec.uuid] = asyncio.get_running_loop().create_task(
                        self._adopt_later(rec.uuid), name=f"adopt-{rec.name}")
                return False
            except XeniaError as e:
                log.warning("could not adopt %s: %s", rec.name, e)
        if inst is not None and rec.state == CREATING:
            # Half-built when the last daemon died (a create, restore or incoming
            # migration): nobody can finish it, so it goes.
            log.warning("domain %s was still being built; removing it", rec.name)
            with contextlib.suppress(Exception):
                await inst.destroy()
            inst = None
        if inst is None:
            log.warning("domain %s (%s) is gone; removing its record", rec.name, rec.uuid)
            self.forget(rec)
            return True
        self._inst[rec.uuid] = inst
        self._gone[rec.uuid] = asyncio.Event()
        if rec.state == DYING:  # a destroy was cut short: finish it
            await self.destroy_locked(rec)
            return True
        self.store.put(rec)
        log.info("adopted domain %s (domid %d, pid %s)", rec.name, rec.domid,
                 rec.runtime.get("pid"))
        await self._catch_up(rec, inst)
        return True

    async def _adopt_later(self, uuid: str) -> None:
        try:
            for delay in ADOPT_RETRY:
                await asyncio.sleep(delay)
                rec = self.store.get(uuid)
                if rec is None:
                    return
                if await self._adopt(rec, retry=False):
                    return
            while True:  # as long as it runs: never forget it
                await asyncio.sleep(ADOPT_RETRY[-1])
                rec = self.store.get(uuid)
                if rec is None or await self._adopt(rec, retry=False):
                    return
        finally:
            self._adopting.pop(uuid, None)

    def adopting(self, uuid: str) -> bool:
        """True while a running domain waits for its adoption to be retried."""
        return uuid in self._adopting

    async def _catch_up(self, rec: DomainRecord, inst: Instance) -> None:
        """Apply a guest event that happened while no daemon was watching."""
        status = await inst.run_state()
        if rec.state == RUNNING and status == "shutdown":
            await self.actions.on_event(rec.uuid, "poweroff", {"reason": "while-daemon-down"})
        elif rec.state == RUNNING and status == "guest-panicked":
            await self.actions.on_event(rec.uuid, "crash", {})
        elif status in (PAUSED, RUNNING):
            async with self.locked(rec.uuid):
                # Reread: an event of the adopted instance (its boot watch's verdict, say)
                # may have been applied while the status query was under way.
                rec = self.store.get(rec.uuid) or rec
                if {rec.state, status} == {RUNNING, PAUSED}:
                    self.set_state(rec, DomainState(status))

    async def detach_all(self) -> None:
        for task in list(self._adopting.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._adopting.clear()
        for inst in list(self._inst.values()):
            with contextlib.suppress(Exception):
                await inst.detach()
        self._inst.clear()

    def _events_for(self, uuid: str) -> GuestEvents:
        async def handler(kind: str, data: dict[str, Any]) -> None:
            await self.actions.on_event(uuid, kind, data)

        return handler

    # -- building and starting -----------------------------------------------------------
    async def create(self, cfg: DomainConfig, paused: bool = False) -> DomainRecord:
        check_config(cfg)
        rec = DomainRecord(
            uuid=(cfg.uuid or str(uuidlib.uuid4())).lower(),
            name=cfg.name,
            domid=0,
            config=cfg,
            state=CREATING,
            created_at=time.time(),
        )
        return await self.build(rec, paused=paused)

    async def build(self, rec: DomainRecord, *, paused: bool = False,
                    incoming: str | None = None,
                    receive: Callable[[Instance], Awaitable[None]] | None = None,
                    doing: str = "create") -> DomainRecord:
        """Admit a new domain record (checks, domid, placement), start it, and run it.

        With `incoming`, QEMU waits for a state instead of booting and `receive(instance)`
        feeds it (restore, migration) before the domain is resumed. On any failure
        nothing is left: no process, no host-side device, no record.
        """
        cfg = rec.config
        drv = self.driver_for(cfg)
        async with self._create_lock:
            for other in self.store.list():
                if other.name == rec.name:
                    raise AlreadyExists(
                        f"Failed to {doing} domain '{rec.name}': a domain with that name "
                        f"exists already (domid {other.domid}); pick another name or destroy "
                        "it first"
                    )
                if other.uuid == rec.uuid:
                    raise AlreadyExists(
                        f"Failed to {doing} domain '{rec.name}': domain '{other.name}' has "
                        f"UUID {other.uuid} already"
                    )
            await asyncio.to_thread(drv.check, rec)
            rec.domid = self.store.next_domid()
            drv.prepare(rec)
            self.store.put(rec)  # written before acted on: a crash now leaves one to reap
        built = self._built[rec.uuid] = asyncio.Event()
        try:
            async with Revert() as revert:
                revert.add(lambda: self.store.delete(rec.uuid))
                # A new domain's firmware variables and vTPM state go with a failed build.
                revert.add(lambda: asyncio.to_thread(drv.discard, rec))
                await self._start(rec, drv, paused, incoming, receive)
                revert.success()
        finally:
            # After the undo: a guest event waiting for the build sees the record gone.
            built.set()
            if self._built.get(rec.uuid) is built:
                del self._built[rec.uuid]
        return rec

    async def _start(self, rec: DomainRecord, drv: Driver, paused: bool,
                     incoming: str | None = None,
                     receive: Callable[[Instance], Awaitable[None]] | None = None) -> None:
        # Ownership first, before any process exists (an HA domain runs only where owned).
        await self.may_start(rec, incoming is not None)
        inst = await drv.start(rec, self._events_for(rec.uuid), incoming=incoming)
        async with Revert() as revert:
            revert.add(lambda: asyncio.to_thread(drv.release, rec))
            revert.add(inst.destroy)
            self._inst[rec.uuid] = inst
            self._gone[rec.uuid] = asyncio.Event()
            revert.add(lambda: self._unregister(rec.uuid))
            if self.gate is not None:
                self.gate.confirm(rec)  # no fence since may_start (else undone here)
            if receive is not None:
                await receive(inst)
            elif incoming is None:
                for hook in self.start_hooks:
                    await hook(rec, inst)
            if not paused:
                await inst.resume()
            revert.success()
        rec.started_at = time.time()
        self.set_state(rec, PAUSED if paused else RUNNING)
        log.info("started domain %s (domid %d)", rec.name, rec.domid)

    async def may_start(self, rec: DomainRecord, incoming: bool) -> None:
        if self.gate is not None:
            await self.gate.may_start(rec, incoming)
        elif rec.config.ha and not incoming:
            raise NotSupported(f"Failed to start domain '{rec.name}' with ha = 1: this host is "
                               "no cluster member (see docs/cluster.md); set ha = 0")

    async def ended(self, rec: DomainRecord) -> None:
        """The domain is gone for good (destroyed by a user or by its on_* action)."""
        if self.gate is not None:
            try:
                await self.gate.ended(rec)
            except XeniaError as e:
                log.warning("domain %s: releasing its cluster ownership failed: %s",
                            rec.name, e)

    def _unregister(self, uuid: str) -> None:
        self._inst.pop(uuid, None)
        self._gone.pop(uuid, None)

    async def relaunch(self, rec: DomainRecord) -> None:
        """Start the domain afresh after its process died (on_crash=restart)."""
        try:
            await self._launch_again(rec)
        except XeniaError as e:
            log.error("restart of %s failed: %s", rec.name, e)
            self.forget(rec)

    async def _launch_again(self, rec: DomainRecord) -> None:
        """A new process for the domain from its stored config (same UUID, name, domid,
        devices and MACs). The old process goes first: it holds the disks' image locks
        and the taps the new one opens."""
        inst = self._inst.pop(rec.uuid, None)
        if inst is not None:
            with contextlib.suppress(Exception):
                await inst.destroy()
        drv = self.driver_for(rec.config)
        with contextlib.suppress(XeniaError):
            await asyncio.to_thread(drv.release, rec)  # the dead QEMU's taps and cgroup
        await self._start(rec, drv, paused=False)

    async def start(self, ref: str) -> DomainRecord:
        """Boot a preserved domain (shutdown, crashed) again. If that fails it stays
        preserved, without a process: to start again or destroy."""
        rec = self.resolve(ref)
        if rec.uuid in self._starting:  # a second click while the first one boots it
            raise not_startable(rec.name, CREATING)
        self._starting.add(rec.uuid)
        try:
            async with self.locked(rec.uuid):
                rec = self.store.get(rec.uuid) or rec
                if rec.state not in PRESERVED:
                    raise not_startable(rec.name, rec.state)
                await self._launch_again(rec)
        finally:
            self._starting.discard(rec.uuid)
        return rec

    # -- lifecycle verbs -----------------------------------------------------------------
    async def destroy(self, ref: str) -> None:
        rec = self.resolve(ref)
        async with self.locked(rec.uuid):
            rec = self.store.get(rec.uuid) or rec
            await self.destroy_locked(rec)
            await self.ended(rec)

    async def shutdown(self, ref: str, wait: bool = False) -> None:
        rec = self.resolve(ref)
        if rec.state in PRESERVED:
            raise InvalidConfig(
                f"Failed to shut down domain '{rec.name}': it is {rec.state} already "
                "(preserved); use `xenia destroy`"
            )
        inst = self.instance(rec)
        if rec.state == PAUSED:
            raise InvalidConfig(
                f"Failed to shut down domain '{rec.name}': it is paused and cannot see the "
                "power button; unpause it first"
            )
        await inst.power_button()
        if wait:
            await self.wait_stopped(rec.uuid)

    async def wait_stopped(self, uuid: str, timeout: float | None = None) -> None:
        """Until the domain is gone, or preserved in shutdown/crashed state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            rec = self.store.get(uuid)
            if rec is None or rec.state in PRESERVED:
                return
            ev = self._gone.get(uuid)
            if ev is None:
                return
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimedOut(f"Failed waiting for domain '{rec.name}' to stop: it is "
                               f"still {rec.state} after {timeout:g} s")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(ev.wait(), min(left or 0.5, 0.5))

    async def reboot(self, ref: str, force: bool = False) -> None:
        rec = self.resolve(ref)
        inst = self.instance(rec)
        require(rec, "to reboot domain", RUNNING)
        await inst.request_reboot(force)

    async def pause(self, ref: str) -> None:
        rec = self.resolve(ref)
        async with self.locked(rec.uuid):
            rec = self.store.get(rec.uuid) or rec
            require(rec, "to pause domain", RUNNING)
            async with Revert() as revert:
                self.set_state(rec, PAUSED)
                revert.add(lambda: self.set_state(rec, RUNNING))
                await self.instance(rec).pause()
                revert.success()

    async def unpause(self, ref: str) -> None:
        rec = self.resolve(ref)
        async with self.locked(rec.uuid):
            rec = self.store.get(rec.uuid) or rec
            require(rec, "to unpause domain", PAUSED)
            async with Revert() as revert:
                self.set_state(rec, RUNNING)
                revert.add(lambda: self.set_state(rec, PAUSED))
                await self.instance(rec).resume()
                revert.success()

    async def rename(self, ref: str, new_name: str) -> DomainRecord:
        check_name(new_name)
        rec = self.resolve(ref)
        await self.rename_record(rec, new_name)
        return rec

    async def rename_record(self, rec: DomainRecord, new_name: str) -> None:
        """Give `rec` (this very object: a build under way holds it) a name no other
        domain has, and store it."""
        async with self._create_lock:
            for other in self.store.list():
                if other.name == new_name and other.uuid != rec.uuid:
                    raise AlreadyExists(
                        f"Failed to rename domain '{rec.name}' to '{new_name}': that name is "
                        f"taken by domid {other.domid}"
                    )
            rec.name = new_name
            rec.config.name = new_name
            rec.runtime.pop(POOLED, None)
            self.store.put(rec)
