"""ContainerDriver: `type = "container"` domains run by crun.

The host side of a boot (run directory, cgroups, monitor, NICs) is ContainerHost
(container_host.py); a running container is a ContainerInstance (container_instance.py).
After a restart xeniad adopts a container through crun's state, the pidfiles and the
cgroup the init is in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from xenia.containers import runtime as rt
from xenia.containers import spec
from xenia.drivers.base import Driver, GuestEvents, Instance
from xenia.drivers.container_host import ContainerHost
from xenia.drivers.container_instance import ContainerInstance
from xenia.errors import AlreadyExists, BackendError, InvalidConfig, NotSupported, XeniaError
from xenia.hostos import affinity, hostinfo
from xenia.hostos.affinity import ranges
from xenia.hostos.cgroupfs import host_layout, pid_in_group
from xenia.hostos.cpuset import CpusetGroup
from xenia.hostos.procfs import read_pid
from xenia.network.manager import NetworkManager
from xenia.paths import MAX_SOCKET_PATH, Paths
from xenia.revert import Revert
from xenia.store.base import DomainRecord, Store
from xenia.store.state import LIVE, PAUSED, RUNNING, transition

log = logging.getLogger(__name__)

DEFAULT_WEIGHT = 256


class ContainerDriver(Driver):
    types = ("container",)

    def __init__(self, paths: Paths, store: Store, network: NetworkManager) -> None:
        self.store = store
        self.network = network
        self.host = ContainerHost(paths, store, network)

    # -- checks (nothing started) ----------------------------------------------------------
    def check(self, record: DomainRecord) -> None:
        cfg, name = record.config, record.name
        spec.check_config(cfg)
        root = spec.check_rootfs(cfg)
        spec.check_init(cfg, root)
        if cfg.memory < spec.MIN_MEMORY_MIB:
            raise InvalidConfig(f"Failed to create domain '{name}': memory = {cfg.memory} MiB "
                                f"is below the {spec.MIN_MEMORY_MIB} MiB a container needs "
                                "to start")
        total = hostinfo.total_mib()
        if cfg.effective_maxmem > total:
            key = "memory" if cfg.maxmem is None else "maxmem"
            raise InvalidConfig(f"Failed to create domain '{name}': it asks for "
                                f"{cfg.effective_maxmem} MiB ({key}) but the host has only "
                                f"{total} MiB; lower {key}")
        allowed = self.host.allowed_cpus(record)
        want = cfg.effective_maxvcpus
        if want > len(allowed):
            where = (f"cpus = \"{cfg.cpus}\" allows only {len(allowed)}" if cfg.cpus
                     else f"the host has only {len(allowed)}")
            key = "vcpus" if cfg.maxvcpus is None else "maxvcpus"
            raise InvalidConfig(f"Failed to create domain '{name}': a container's vCPUs are "
                                f"host CPUs, and it asks for {want} ({key}) but {where}; "
                                f"lower {key}")
        layout = host_layout()
        for ctrl, why in (("memory", "its memory limit"), ("freezer", "pause"),
                          ("cpuacct", "its CPU time")):
            if layout.hierarchy_for(ctrl) is None:
                raise NotSupported(f"Failed to create domain '{name}': the host's cgroups "
                                   f"lack the {ctrl} controller, which a container needs "
                                   f"for {why}")
        if (cfg.cpu_weight is not None or cfg.cap is not None) and \
                layout.hierarchy_for("cpu") is None:
            raise NotSupported(f"Failed to create domain '{name}': cpu_weight/cap need the "
                               "cpu cgroup controller, which this host lacks")
        if not CpusetGroup(record.uuid).available() and (
                cfg.vcpus < len(affinity.host_cpu_set()) or cfg.cpus):
            raise NotSupported(f"Failed to create domain '{name}': holding a container to "
                               "some CPUs (vcpus, cpus) needs the cpuset cgroup controller, "
                               "which this host lacks")
        self.host.crun  # noqa: B018 - raises NotSupported with the install hint if crun is missing
        self.host.confine.check(record)
        files = self.host.files(record.uuid)
        longest = len(str(files.console))
        if longest > MAX_SOCKET_PATH:
            raise InvalidConfig(f"Failed to create domain '{name}': the run directory "
                                f"{files.dir} is too long for a UNIX socket path ({longest} > "
                                f"{MAX_SOCKET_PATH} bytes); use a shorter XENIA_ROOT")
        self._check_vifs(record)

    def _check_vifs(self, rec: DomainRecord) -> None:
        seen: set[str] = set()
        for vif in rec.config.vifs:
            if vif.model is not None:
                log.info("domain %s: vif model '%s' ignored: a container NIC is a veth",
                         rec.name, vif.model)
            self.network.check_vif(vif)
            if not vif.mac:
                continue
            mac = vif.mac.lower()
            if mac in seen:
                raise AlreadyExists(f"Failed to create domain '{rec.name}': two of its vifs "
                                    f"have MAC {vif.mac}")
            seen.add(mac)
            for other in self.store.list():
                if other.uuid != rec.uuid and any(
                        v.mac and v.mac.lower() == mac for v in other.config.vifs):
                    raise AlreadyExists(f"Failed to add vif with MAC {vif.mac} to "
                                        f"'{rec.name}': domain '{other.name}' has that MAC "
                                        "already; pick another or leave mac= out")
            self.network.check_mac(vif.mac)

    def prepare(self, record: DomainRecord) -> None:
        """Give each vif its devid and MAC and the domain its user ids (generated once,
        kept across reboots)."""
        self.host.confine.allocate(record)
        for vif in record.config.vifs:
            if vif.devid is None:
                used = {v.devid for v in record.config.vifs if v.devid is not None}
                vif.devid = next(i for i in range(len(used) + 1) if i not in used)
            if vif.mac is None:
                taken = {v.mac for v in record.config.vifs if v.mac}
                while True:
                    mac = self.network.generate_mac()
                    if mac not in taken and self.network.mac_in_use(mac) is None:
                        break
                vif.mac = mac

    def sched_get(self, record: DomainRecord) -> dict[str, int]:
        cg = self.host.cgroup(record)
        if cg.exists():
            with contextlib.suppress(XeniaError):
                return cg.get()
        return {"weight": record.config.cpu_weight or DEFAULT_WEIGHT,
                "cap": record.config.cap or 0}

    def sched_set(self, record: DomainRecord, weight: int | None, cap: int | None) -> None:
        cg = self.host.cgroup(record)
        if weight is not None:
            cg.set_weight(weight)
            record.config.cpu_weight = weight
        if cap is not None:
            cg.set_cap(cap)
            record.config.cap = cap

    async def start(self, record: DomainRecord, events: GuestEvents,
                    incoming: str | None = None) -> Instance:
        if incoming is not None:
            raise NotSupported(f"Failed to start domain '{record.name}' from a saved or "
                               "migrated state: containers are not saved or migrated (their "
                               "processes are the host's); create it again instead")
        files = self.host.files(record.uuid)
        if files.dir.exists():
            raise BackendError(f"Failed to start domain '{record.name}': run directory "
                               f"{files.dir} exists already (a stale domain?)")
        async with Revert() as revert:
            revert.add(lambda: asyncio.to_thread(self.host.teardown, record, None))
            pid = await self.host.boot(record)
            revert.success()
        inst = ContainerInstance(self.host, record, events, pid)
        inst.watch()
        return inst

    # -- adoption --------------------------------------------------------------------------
    async def adopt(self, record: DomainRecord, events: GuestEvents) -> Instance | None:
        files = self.host.files(record.uuid)
        if not files.dir.is_dir():
            return None
        pid = read_pid(files.init_pid)
        alive = pid is not None and pid_in_group(pid, record.uuid)
        try:
            state = await asyncio.to_thread(self.host.crun.state, record.uuid)
        except XeniaError as e:
            # A running container is adopted without crun too (it is the init that counts);
            # only `create -p`'s not-yet-started state needs crun to tell.
            log.warning("domain %s: crun state failed: %s", record.name, e)
            state = None
        if not alive and state is None and not files.exit.exists():
            return None
        inst = ContainerInstance(self.host, record, events, pid)
        if alive:
            inst.watch()
            record.runtime["pid"] = pid
            if not self.host.monitor_alive(files):
                log.warning("domain %s: its console monitor is gone; the container runs "
                            "without a console", record.name)
            try:
                frozen = self.host.cgroup(record).frozen()
            except XeniaError:
                frozen = False
            created = state is not None and state.get("status") == "created"
            if record.state == RUNNING and frozen:
                transition(record, PAUSED)
            elif record.state == PAUSED and not frozen and not created:
                transition(record, RUNNING)
        else:
            inst.exited_unwatched(report=record.state in LIVE)
        return inst

    def release(self, record: DomainRecord) -> None:
        self.host.teardown(record)

    def discard(self, record: DomainRecord) -> None:
        """Nothing: a container keeps no state of its own across restarts (its root
        filesystem is the user's)."""

    def host_info(self) -> dict[str, Any]:
        try:
            path = self.host.crun.path
        except XeniaError as e:
            return {"crun": None, "crun_error": e.message}
        return {"crun": path, "crun_version": rt.crun_version(path),
                "container_cpus": ranges(affinity.host_cpu_set())}
