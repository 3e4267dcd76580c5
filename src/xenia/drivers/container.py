"""ContainerDriver: `type = "container"` domains run by crun; ContainerInstance drives one.

A container boot, in order (each step undone if a later one fails):

1. the run directory `paths.domain_run(uuid)`: config.json (containers/spec.py), the
   overlay's upper and work directories (kept across reboots, gone with the domain);
2. the domain's cgroups, made by Xenia as for VMs: DomainCgroup (memory limit, credit
   weight/cap, freezer, CPU time) and CpusetGroup (its CPUs);
3. the monitor (containers/monitor.py), a detached process that mounts the rootfs
   overlay in a mount namespace of its own, runs `crun create` inside the domain's
   cgroups, holds the console pty and writes the init's exit status;
4. the NICs: a veth pair per vif, the host end on the bridge, the other end made in the
   container's network namespace as ethN;
5. `crun start` (Instance.resume), which lets the init exec: until then the domain is
   "paused" as a VM built with -S is.

xeniad watches the init with a pidfd; when it exits, the status the monitor recorded says
what happened (containers' reboot is the kernel's: reboot() inside a pid namespace kills
its init with SIGHUP, poweroff/halt with SIGINT). After a restart xeniad adopts the
container through crun's state, the pidfiles and the cgroup the init is in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import select
import shutil
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from xenia.config.model import VifSpec
from xenia.containers import confine, spec
from xenia.containers import runtime as rt
from xenia.containers.cpuset import CpusetGroup, choose_cpus, ranges
from xenia.drivers.base import Driver, GuestEvents, Instance
from xenia.errors import AlreadyExists, BackendError, InvalidConfig, NotSupported, XeniaError
from xenia.host import affinity, hostinfo
from xenia.host.cgroups import ROOT_NAME, DomainCgroup, host_layout
from xenia.network.manager import NetworkManager
from xenia.network.veth import guest_name
from xenia.paths import MAX_SOCKET_PATH, Paths
from xenia.store.base import DomainRecord, Store

log = logging.getLogger(__name__)

MONITOR_TIMEOUT = 90.0  # crun create, including the monitor's own start
EXIT_STATUS_WAIT = 3.0  # for the monitor to write exit.json after the init is gone
KILL_WAIT = 10.0
# What power_button and request_reboot send to the container's init. SIGPWR and SIGINT
# are LXC's defaults: busybox init halts on SIGPWR and runs its ctrlaltdel action on
# SIGINT, sysvinit runs its powerfail/ctrlaltdel actions, and SIGINT is what the kernel
# sends init for Ctrl-Alt-Del (which `xenia reboot` presses on VMs).
POWEROFF_SIGNAL = signal.SIGPWR
REBOOT_SIGNAL = signal.SIGINT
DEFAULT_WEIGHT = 256
# The cgroup (key under xenia/) that holds every container monitor.
MONITORS_KEY = "container-monitors"
# What one boot records in the domain's runtime.
BOOT_KEYS = ("pid", "monitor_pid", "cpuset", "veths", "rootfs", "lower", "nics", "userns",
             "ids", "crun_version")


class ContainerFiles:
    """The run directory of one container domain."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir
        self.config = run_dir / "config.json"
        self.console = run_dir / "console.sock"
        self.console_log = run_dir / "console.log"
        self.init_pid = run_dir / "init.pid"
        self.monitor_pid = run_dir / "monitor.pid"
        self.monitor_log = run_dir / "monitor.log"
        self.exit = run_dir / "exit.json"
        self.requested = run_dir / "requested"
        self.upper = run_dir / "fs" / "upper"
        self.work = run_dir / "fs" / "work"
        self.lower = run_dir / "fs" / "lower"  # a shifted copy of the rootfs, if one is needed

    def boot_files(self) -> list[Path]:
        """What one boot leaves, removed before the next (console.log and fs/ stay)."""
        return [self.config, self.init_pid, self.monitor_pid, self.exit, self.requested]


# -- helpers --------------------------------------------------------------------------------
def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def in_domain_cgroup(pid: int, uuid: str) -> bool:
    """True if `pid` lives and sits in the domain's cgroup (guards against pid reuse)."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False
    mark = f"/{ROOT_NAME}/{uuid}"
    return any(line.split(":", 2)[-1].startswith(mark) for line in text.splitlines())


def _is_monitor(pid: int, run_dir: Path) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"xenia.containers.monitor" in argv and str(run_dir).encode() in argv


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _park_monitor(pid: int, name: str) -> None:
    """Move a monitor out of xeniad's cgroup into the monitors' own, as QEMU goes into its
    domain's: whoever stops xeniad by its cgroup (a systemd unit, a session scope) must not
    take the monitors along. Not into the container's group: its memory is not theirs."""
    try:
        DomainCgroup.create(MONITORS_KEY, name="container monitors").attach(pid)
    except XeniaError as e:
        log.warning("domain %s: monitor %d stays in xeniad's cgroup: %s", name, pid, e)


def classify(status: dict[str, Any] | None, requested: str | None) -> str:
    """The guest event of an init that exited with `status` (exit.json; None: unknown)
    after `requested` ("poweroff", "reboot" or None) was asked of it."""
    if status is not None:
        # reboot() in a pid namespace: RESTART kills its init with SIGHUP, POWER_OFF and
        # HALT with SIGINT (kernel/pid_namespace.c, reboot_pid_ns). Nothing else can
        # make a namespace's init die of these: it ignores signals it has no handler for.
        sig = status.get("signal")
        if sig == signal.SIGHUP:
            return "reboot"
        if sig == signal.SIGINT:
            return "poweroff"
    if requested in ("poweroff", "reboot"):
        return requested
    if status is None:
        return "exited"
    if status.get("code") == 0:
        return "poweroff"  # the init ended cleanly: the system is down
    return "crash"


def _read_status_line(fd: int, timeout: float) -> str:
    """One line from the monitor's status pipe ("" at EOF), waiting up to `timeout` s."""
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf.decode(errors="replace").strip()


def _log_tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


# -- the instance ----------------------------------------------------------------------------
class ContainerInstance(Instance):
    def __init__(self, driver: ContainerDriver, record: DomainRecord, events: GuestEvents,
                 pid: int | None) -> None:
        self.record = record  # as at start: for its name and uuid, not for state
        self.driver = driver
        self.files = driver.files(record.uuid)
        self.pid = pid
        self._events = events
        self._pidfd: int | None = None
        self._stopping = False
        self._destroyed = False
        self._exited = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- watching the init ---------------------------------------------------------------
    def watch(self) -> None:
        """Watch the init's exit through a pidfd (it is the monitor's child, not ours)."""
        assert self.pid is not None
        self._exited.clear()
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            self._exit_seen()
            return
        asyncio.get_running_loop().add_reader(self._pidfd, self._exit_seen)

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    def _exit_seen(self) -> None:
        self._close_pidfd()
        self._exited.set()
        if not self._stopping:
            self._spawn(self._report_exit())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _report_exit(self) -> None:
        status = await asyncio.to_thread(self.driver.exit_status, self.files, self.pid)
        requested = self.driver.requested(self.files)
        kind = classify(status, requested)
        log.info("domain %s: init %s exited (%s, asked: %s): %s", self.record.name, self.pid,
                 status or "status unknown", requested or "nothing", kind)
        if not self._stopping:
            try:
                await self._events(kind, {"exit": status, "requested": requested})
            except Exception:  # noqa: BLE001 - a task of our own: say it, do not lose it
                log.exception("domain %s: handling its %s failed", self.record.name, kind)

    @property
    def running(self) -> bool:
        return self.pid is not None and not self._exited.is_set() and _alive(self.pid)

    def _signal(self, sig: int, what: str) -> None:
        if self._pidfd is None or not self.running:
            raise BackendError(f"Failed to {what} '{self.record.name}': its init is not "
                               "running")
        signal.pidfd_send_signal(self._pidfd, sig)

    # -- verbs ---------------------------------------------------------------------------
    async def resume(self) -> None:
        state = await asyncio.to_thread(self.driver.crun.state, self.record.uuid)
        if state is not None and state.get("status") == "created":
            await asyncio.to_thread(self.driver.crun.start, self.record.uuid)
        else:
            await asyncio.to_thread(self.driver.cgroup(self.record).thaw)

    async def pause(self) -> None:
        await asyncio.to_thread(self.driver.cgroup(self.record).freeze)

    async def power_button(self) -> None:
        self.driver.set_requested(self.files, "poweroff")
        self._signal(POWEROFF_SIGNAL, "shut down")

    async def request_reboot(self, force: bool = False) -> None:
        self.driver.set_requested(self.files, "reboot")
        # -F: a hard reset; the recorded request makes its SIGKILL count as a reboot.
        self._signal(signal.SIGKILL if force else REBOOT_SIGNAL, "reboot")

    async def reset(self) -> None:
        """Boot the container again in place (on_*=restart): same domain, cgroups and
        filesystem changes; a new init, monitor and NICs."""
        self._stopping = True
        self._close_pidfd()
        # The store's copy: mem-set, vcpu-set and sched-credit changed it since start.
        rec = self.driver.store.get(self.record.uuid) or self.record
        await asyncio.to_thread(self.driver.end_boot, rec, self.pid)
        self.pid = None
        try:
            pid = await self.driver.boot(rec)
            try:
                await asyncio.to_thread(self.driver.crun.start, rec.uuid)
            except BaseException:
                await asyncio.to_thread(self.driver.end_boot, rec, pid)
                raise
        except Exception as e:  # noqa: BLE001 - reported as an event, not lost in a task
            # Nothing runs now. The manager goes on from "restarted"; the exit that
            # follows applies on_crash (destroy, by default), as for a VM that died.
            msg = e.message if isinstance(e, XeniaError) else repr(e)
            log.error("domain %s: restarting failed: %s", rec.name, msg)
            self._exited.set()
            self._stopping = False
            self._spawn(self._events("exited", {"error": msg}))
            return
        self.pid = pid
        self._stopping = False
        self.watch()
        # The manager saves its own copy of the record right after reset() returns: the
        # new boot's runtime facts (pid, ...) go into the store after that.
        self._spawn(self.driver.note_runtime(rec.uuid, dict(rec.runtime)))

    async def destroy(self) -> None:
        self._stopping = True
        self._destroyed = True
        self._close_pidfd()
        await asyncio.to_thread(self.driver.teardown, self.record, self.pid)

    async def detach(self) -> None:
        self._stopping = True
        self._close_pidfd()

    async def dump_core(self, path: Path) -> None:
        raise NotSupported(f"Failed to dump the core of '{self.record.name}': a container "
                           "has no machine memory to dump (its processes are host processes)")

    def console_path(self) -> Path:
        return self.files.console

    def console_log(self) -> Path:
        return self.files.console_log

    def log_tail(self) -> str:
        return _log_tail(self.files.monitor_log)

    def cpu_seconds(self) -> float:
        try:
            return self.driver.cgroup(self.record).cpu_time()
        except XeniaError:
            return 0.0

    async def stats(self, rec: DomainRecord) -> dict[str, Any]:
        cg = self.driver.cgroup(rec)
        out: dict[str, Any] = {"cpu_time": self.cpu_seconds(),
                               "vcpus": len(rec.runtime.get("cpuset") or []) or rec.config.vcpus}
        with contextlib.suppress(XeniaError):
            out["memory_kib"] = cg.memory_usage() // 1024
        rx = tx = 0
        for host in rec.runtime.get("veths", {}).values():
            try:
                st = await asyncio.to_thread(self.driver.network.tap_stats, host)
            except XeniaError:
                continue
            rx += st.get("rx_bytes", 0)
            tx += st.get("tx_bytes", 0)
        out.update(nets=len(rec.config.vifs), net_rx_bytes=rx, net_tx_bytes=tx, vbds=0)
        return out

    async def set_memory(self, rec: DomainRecord, mib: int) -> None:
        await asyncio.to_thread(confine.set_memory, self.driver.cgroup(rec), mib * 1024 * 1024)

    async def set_vcpus(self, rec: DomainRecord, count: int) -> list[int]:
        return await asyncio.to_thread(self.driver.set_cpus, rec, count)

    async def vcpu_rows(self, rec: DomainRecord) -> list[dict[str, Any]]:
        cpus = sorted(rec.runtime.get("cpuset") or [])
        total = self.cpu_seconds()
        if rec.state == "paused":
            state = "--p"
        else:
            state = "r--" if self.running_now() else "-b-"
        hard = affinity.format_cpulist(cpus) if cpus else "all"
        return [{"name": rec.name, "domid": rec.domid, "vcpu": i, "cpu": cpu, "state": state,
                 # A container's CPU time is its cgroup's; shown evenly over its CPUs.
                 "time": total / len(cpus), "hard": hard,
                 "soft": rec.config.cpus_soft or "all"}
                for i, cpu in enumerate(cpus)]

    def running_now(self) -> bool:
        if not self.running:
            return False
        try:
            pids = self.driver.cgroup(self.record).pids()
        except XeniaError:
            return False
        for pid in pids:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[0] == "R":
                return True
        return False

    @property
    def alive(self) -> bool:
        # A stopped container preserved by on_*=preserve is still there (its console log,
        # its cgroup) until destroyed, as a VM's QEMU is.
        return not self._destroyed


# -- the driver ------------------------------------------------------------------------------
class ContainerDriver(Driver):
    types = ("container",)

    def __init__(self, paths: Paths, store: Store, network: NetworkManager) -> None:
        self.paths = paths
        self.store = store
        self.network = network
        self._crun: rt.Crun | None = None
        self.confine = confine.Confinement(store)

    @property
    def crun(self) -> rt.Crun:
        if self._crun is None:
            self._crun = rt.Crun(rt.find_crun(), self.paths.run / "crun")
        return self._crun

    def files(self, uuid: str) -> ContainerFiles:
        return ContainerFiles(self.paths.domain_run(uuid))

    @staticmethod
    def cgroup(rec: DomainRecord) -> DomainCgroup:
        return DomainCgroup(rec.uuid, name=rec.name)

    @staticmethod
    def cpuset(rec: DomainRecord) -> CpusetGroup:
        return CpusetGroup(rec.uuid, name=rec.name)

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
        allowed = self.allowed_cpus(record)
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
        self.crun  # noqa: B018 - raises NotSupported with the install hint if crun is missing
        self.confine.check(record)
        files = self.files(record.uuid)
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

    def allowed_cpus(self, rec: DomainRecord) -> set[int]:
        return affinity.resolve_cpulist(rec.config.cpus or "all",
                                        doing=f"apply cpus= of '{rec.name}'")

    def prepare(self, record: DomainRecord) -> None:
        """Give each vif its devid and MAC and the domain its user ids (generated once,
        kept across reboots)."""
        self.confine.allocate(record)
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

    def host_name(self, rec: DomainRecord, vif: VifSpec) -> str:
        assert vif.devid is not None
        return self.network.tap_name(rec.domid, vif.devid, vif.vifname)

    # -- CPUs ------------------------------------------------------------------------------
    def cpu_load(self, exclude: str) -> Counter[int]:
        """How many other container domains have each CPU in their cpuset."""
        load: Counter[int] = Counter()
        for other in self.store.list():
            if other.uuid != exclude and other.config.type == "container":
                load.update(other.runtime.get("cpuset") or [])
        return load

    def set_cpus(self, rec: DomainRecord, count: int) -> list[int]:
        """vcpu-set: `count` CPUs, keeping those it has; returns the vCPU numbers added."""
        allowed = self.allowed_cpus(rec)
        if count > len(allowed):
            raise InvalidConfig(f"Failed to set the vCPUs of '{rec.name}' to {count}: a "
                                f"container's vCPUs are host CPUs and only {len(allowed)} "
                                "are allowed to it")
        current = set(rec.runtime.get("cpuset") or [])
        cpus = choose_cpus(allowed, count, current, self.cpu_load(rec.uuid))
        self.cpuset(rec).set_cpus(cpus)
        old = len(current)
        rec.runtime["cpuset"] = sorted(cpus)
        return list(range(old, count)) if count > old else []

    def sched_get(self, record: DomainRecord) -> dict[str, int]:
        cg = self.cgroup(record)
        if cg.exists():
            with contextlib.suppress(XeniaError):
                return cg.get()
        return {"weight": record.config.cpu_weight or DEFAULT_WEIGHT,
                "cap": record.config.cap or 0}

    def sched_set(self, record: DomainRecord, weight: int | None, cap: int | None) -> None:
        cg = self.cgroup(record)
        if weight is not None:
            cg.set_weight(weight)
            record.config.cpu_weight = weight
        if cap is not None:
            cg.set_cap(cap)
            record.config.cap = cap

    # -- boot ------------------------------------------------------------------------------
    def _setup_host(self, rec: DomainRecord) -> list[str]:
        """Run dir, config.json and cgroups of one boot (blocking); returns the
        cgroup.procs files the container is started in."""
        cfg = rec.config
        files = self.files(rec.uuid)
        lower = spec.check_rootfs(cfg)
        argv = spec.check_init(cfg, lower)
        idmap = self.confine.idmap(rec, files.upper)
        files.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(files.dir, 0o700)
        for path in files.boot_files():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        files.work.mkdir(parents=True, exist_ok=True)
        if not files.upper.exists():
            files.upper.mkdir(parents=True)
            # The container's "/" takes its owner and mode from the upper directory.
            os.chown(files.upper, idmap.uid, idmap.gid)
            os.chmod(files.upper, lower.stat().st_mode & 0o7777)
        doc = spec.build_spec(cfg, uuid=rec.uuid, rootfs=spec.MOUNT_BASE / rec.uuid, argv=argv,
                              idmap=idmap)
        spec.check_mappings(doc, idmap)
        files.config.write_text(json.dumps(doc, indent=2) + "\n")
        rec.runtime["rootfs"] = str(lower)
        rec.runtime["lower"] = self.confine.lower(lower, idmap, files.lower, rec.name)
        cg = DomainCgroup.create(rec.uuid, name=rec.name)
        confine.set_limits(cg, cfg)
        if cfg.cpu_weight is not None:
            cg.set_weight(cfg.cpu_weight)
        if cfg.cap is not None:
            cg.set_cap(cfg.cap)
        procs = sorted({str(cg.path(c) / "cgroup.procs") for c in
                        ("cpu", "cpuacct", "memory", "pids", "freezer")
                        if cg.layout.hierarchy_for(c) is not None})
        cs = self.cpuset(rec)
        if cs.available():
            allowed = self.allowed_cpus(rec)
            cpus = choose_cpus(allowed, cfg.vcpus, set(rec.runtime.get("cpuset") or []),
                               self.cpu_load(rec.uuid))
            cs.create(cpus)
            rec.runtime["cpuset"] = sorted(cpus)
            if str(cs.procs) not in procs:  # on v2 it is the same group
                procs.append(str(cs.procs))
        return procs

    async def _run_monitor(self, rec: DomainRecord, procs: list[str]) -> int:
        files = self.files(rec.uuid)
        crun = self.crun
        crun.state_root.mkdir(parents=True, exist_ok=True)
        args = ["--dir", str(files.dir), "--id", rec.uuid, "--crun", crun.path,
                "--state-root", str(crun.state_root), *rec.runtime["lower"],
                "--upper", str(files.upper), "--work", str(files.work),
                "--mount-base", str(spec.MOUNT_BASE)]
        for p in procs:
            args += ["--cgroup-procs", p]
        if rt.hybrid():
            args.append("--hide-unified")
        args += ["--console-owner", confine.console_owner(rec)]
        r, w = os.pipe()
        try:
            with open(files.monitor_log, "ab") as logf:
                args += ["--status-fd", str(w)]
                launcher = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "xenia.containers.monitor", *args,
                    stdin=asyncio.subprocess.DEVNULL, stdout=logf, stderr=logf,
                    pass_fds=(w,), start_new_session=True)
            os.close(w)
            w = -1
            await launcher.wait()  # the launcher forks the monitor and returns at once
            try:
                line = await asyncio.to_thread(_read_status_line, r, MONITOR_TIMEOUT)
            except TimeoutError:
                raise BackendError(f"Failed to start container '{rec.name}': its monitor "
                                   f"gave no answer in {MONITOR_TIMEOUT:.0f} s") from None
        except OSError as e:
            raise BackendError(f"Failed to start the monitor of '{rec.name}': {e}") from e
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)
        try:
            status = json.loads(line) if line else {}
        except ValueError:
            status = {}
        if not status.get("ok"):
            cause = status.get("error") or (
                "the monitor exited without a word" + (f":\n{_log_tail(files.monitor_log)}"
                                                       if files.monitor_log.exists() else ""))
            raise BackendError(f"Failed to start container '{rec.name}': {cause}")
        monitor = _read_int(files.monitor_pid)
        if monitor is not None:
            await asyncio.to_thread(_park_monitor, monitor, rec.name)
        return int(status["pid"])

    def _plug_vifs(self, rec: DomainRecord, pid: int) -> None:
        veths: dict[str, str] = {}
        rec.runtime["veths"] = veths
        for vif in rec.config.vifs:
            assert vif.devid is not None
            host = self.host_name(rec, vif)
            # plug_veth leaves nothing behind when it fails; only what it made is recorded
            # (and so removed later): a device of that name may be another domain's.
            self.network.plug_veth(host, vif, pid, guest_name(vif.devid))
            veths[str(vif.devid)] = host
        confine.configure_network(rec, pid)

    async def boot(self, rec: DomainRecord) -> int:
        """One boot up to `crun create` plus NICs (the init not yet exec'd); returns the
        init's pid. On failure, what this boot made is undone (the run dir's fs/ and
        console.log and the cgroups stay for teardown)."""
        pid: int | None = None
        try:
            procs = await asyncio.to_thread(self._setup_host, rec)
            pid = await self._run_monitor(rec, procs)
            await asyncio.to_thread(self._plug_vifs, rec, pid)
        except BaseException:
            await asyncio.to_thread(self.end_boot, rec, pid)
            raise
        rec.runtime.update({"pid": pid, "monitor_pid": _read_int(self.files(rec.uuid)
                                                                    .monitor_pid),
                            "crun_version": rt.crun_version(self.crun.path)})
        return pid

    async def start(self, record: DomainRecord, events: GuestEvents,
                    incoming: str | None = None) -> Instance:
        if incoming is not None:
            raise NotSupported(f"Failed to start domain '{record.name}' from a saved or "
                               "migrated state: containers are not saved or migrated (their "
                               "processes are the host's); create it again instead")
        files = self.files(record.uuid)
        if files.dir.exists():
            raise BackendError(f"Failed to start domain '{record.name}': run directory "
                               f"{files.dir} exists already (a stale domain?)")
        try:
            pid = await self.boot(record)
        except BaseException:
            await asyncio.to_thread(self.teardown, record, None)
            raise
        inst = ContainerInstance(self, record, events, pid)
        inst.watch()
        return inst

    async def note_runtime(self, uuid: str, runtime: dict[str, Any]) -> None:
        """Write a boot's runtime facts into the stored record."""
        rec = self.store.get(uuid)
        if rec is not None:
            rec.runtime.update({k: runtime[k] for k in BOOT_KEYS if k in runtime})
            self.store.put(rec)

    # -- adoption --------------------------------------------------------------------------
    async def adopt(self, record: DomainRecord, events: GuestEvents) -> Instance | None:
        files = self.files(record.uuid)
        if not files.dir.is_dir():
            return None
        pid = _read_int(files.init_pid)
        alive = pid is not None and in_domain_cgroup(pid, record.uuid)
        try:
            state = await asyncio.to_thread(self.crun.state, record.uuid)
        except XeniaError as e:
            # A running container is adopted without crun too (it is the init that counts);
            # only `create -p`'s not-yet-started state needs crun to tell.
            log.warning("domain %s: crun state failed: %s", record.name, e)
            state = None
        if not alive and state is None and not files.exit.exists():
            return None
        inst = ContainerInstance(self, record, events, pid)
        if alive:
            inst.watch()
            record.runtime["pid"] = pid
            monitor = _read_int(files.monitor_pid)
            if monitor is None or not _is_monitor(monitor, files.dir):
                log.warning("domain %s: its console monitor is gone; the container runs "
                            "without a console", record.name)
            try:
                frozen = self.cgroup(record).frozen()
            except XeniaError:
                frozen = False
            created = state is not None and state.get("status") == "created"
            if record.state == "running" and frozen:
                record.state = "paused"
            elif record.state == "paused" and not frozen and not created:
                record.state = "running"
        else:
            # Gone while no daemon watched: what the monitor recorded says what happened.
            inst._exited.set()
            if record.state in ("running", "paused"):
                inst._spawn(inst._report_exit())
        return inst

    # -- stopping and cleaning up ----------------------------------------------------------
    def exit_status(self, files: ContainerFiles, pid: int | None,
                    timeout: float = EXIT_STATUS_WAIT) -> dict[str, Any] | None:
        """exit.json of init `pid`, waiting up to `timeout` for the monitor to write it;
        None when it is not there (the monitor was killed)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                data = json.loads(files.exit.read_text())
                if isinstance(data, dict) and (pid is None or data.get("pid") == pid):
                    return data
            except (OSError, ValueError):
                pass
            monitor = _read_int(files.monitor_pid)
            gone = monitor is None or not _is_monitor(monitor, files.dir)
            if gone or time.monotonic() > deadline:
                if gone:  # a last look: it may have written the file as it exited
                    with contextlib.suppress(OSError, ValueError):
                        data = json.loads(files.exit.read_text())
                        if isinstance(data, dict):
                            return data
                return None
            time.sleep(0.05)

    @staticmethod
    def requested(files: ContainerFiles) -> str | None:
        try:
            return files.requested.read_text().strip() or None
        except OSError:
            return None

    @staticmethod
    def set_requested(files: ContainerFiles, what: str) -> None:
        files.requested.write_text(what + "\n")

    def _kill_processes(self, rec: DomainRecord, pid: int | None) -> None:
        """SIGKILL the container's init and anything left in its cgroup, thawed first
        (frozen tasks do not die on cgroup v1); wait for them to go."""
        cg = self.cgroup(rec)
        with contextlib.suppress(XeniaError):
            if cg.exists():
                cg.thaw()
        files = self.files(rec.uuid)
        pids: set[int] = set()
        for candidate in (pid, _read_int(files.init_pid)):
            if candidate and in_domain_cgroup(candidate, rec.uuid):
                pids.add(candidate)
        with contextlib.suppress(XeniaError):
            if cg.exists():
                pids |= cg.pids()
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        for p in pids:
            if not _wait_gone(p, KILL_WAIT):
                log.warning("domain %s: process %d survived SIGKILL", rec.name, p)

    def _stop_monitor(self, files: ContainerFiles) -> None:
        """Wait for the monitor to leave (it does once the pty closes), else kill it."""
        pid = _read_int(files.monitor_pid)
        if pid is None or not _is_monitor(pid, files.dir):
            return
        if _wait_gone(pid, 5.0):
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            if _wait_gone(pid, 3.0):
                return
        log.warning("monitor %d of %s does not exit", pid, files.dir)

    def _unplug_vifs(self, rec: DomainRecord) -> None:
        for host in sorted(set(rec.runtime.get("veths", {}).values())):
            try:
                self.network.unplug_veth(host)
            except XeniaError as e:
                log.warning("domain %s: %s", rec.name, e)

    def end_boot(self, rec: DomainRecord, pid: int | None) -> None:
        """Undo one boot (blocking): processes, monitor, crun's container, NICs, boot
        files. The cgroups, the filesystem changes and the console log stay."""
        files = self.files(rec.uuid)
        self._kill_processes(rec, pid)
        self._stop_monitor(files)
        try:
            self.crun.delete(rec.uuid, force=True)
        except XeniaError as e:
            log.warning("domain %s: %s", rec.name, e)
            # crun's state of it, by hand (or crun is gone): nothing runs any more.
            shutil.rmtree(self.paths.run / "crun" / rec.uuid, ignore_errors=True)
        self._unplug_vifs(rec)
        for path in files.boot_files():
            with contextlib.suppress(OSError):
                path.unlink()

    def teardown(self, rec: DomainRecord, pid: int | None = None) -> None:
        """Remove everything of the domain on this host (blocking, idempotent)."""
        self.end_boot(rec, pid)
        try:
            self.cgroup(rec).remove(timeout=5.0, evict=True)
        except XeniaError as e:
            log.warning("domain %s: removing its cgroup failed: %s", rec.name, e)
        try:
            self.cpuset(rec).remove()
        except XeniaError as e:
            log.warning("domain %s: removing its cpuset failed: %s", rec.name, e)
        with contextlib.suppress(XeniaError):  # still in use by other monitors: stays
            DomainCgroup(MONITORS_KEY).remove(timeout=0.0)
        shutil.rmtree(self.files(rec.uuid).dir, ignore_errors=True)
        self.confine.release(rec)

    def release(self, record: DomainRecord) -> None:
        self.teardown(record)

    def host_info(self) -> dict[str, Any]:
        try:
            path = self.crun.path
        except XeniaError as e:
            return {"crun": None, "crun_error": e.message}
        return {"crun": path, "crun_version": rt.crun_version(path),
                "container_cpus": ranges(affinity.host_cpu_set())}
