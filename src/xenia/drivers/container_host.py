"""ContainerHost: the host side of container domains, one boot at a time.

A container boot, in order (each step undone if a later one fails):

1. the run directory `paths.domain_run(uuid)`: config.json (containers/spec.py), the
   overlay's upper and work directories (kept across reboots, gone with the domain);
2. the domain's cgroups, made by Xenia as for VMs: DomainCgroup (memory limit, credit
   weight/cap, freezer, CPU time) and CpusetGroup (its CPUs);
3. the monitor (containers/monitor.py), a detached process that mounts the rootfs
   overlay in a mount namespace of its own, runs `crun create` inside the domain's
   cgroups, holds the console pty and writes the init's exit status;
4. the NICs: a veth pair per vif, the host end on the bridge, the other end made in the
   container's network namespace as ethN.

`crun start` (the instance's resume) then lets the init exec. end_boot() undoes one boot
(a reboot makes the next), teardown() removes everything of the domain.
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
from xenia.errors import BackendError, InvalidConfig, XeniaError
from xenia.hostos import affinity
from xenia.hostos.cgroupfs import pid_in_group
from xenia.hostos.cgroups import DomainCgroup
from xenia.hostos.cpuset import CpusetGroup, choose_cpus
from xenia.hostos.procfs import cmdline, log_tail, read_pid, wait_gone
from xenia.network.manager import NetworkManager
from xenia.network.veth import guest_name
from xenia.paths import Paths
from xenia.revert import Revert
from xenia.store.base import DomainRecord, Store

log = logging.getLogger(__name__)

MONITOR_TIMEOUT = 90.0  # crun create, including the monitor's own start
EXIT_STATUS_WAIT = 3.0  # for the monitor to write exit.json after the init is gone
KILL_WAIT = 10.0
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


# -- helpers ------------------------------------------------------------------------------
def _is_monitor(pid: int, run_dir: Path) -> bool:
    argv = cmdline(pid)
    return "xenia.containers.monitor" in argv and str(run_dir) in argv


def _park_monitor(pid: int, name: str) -> None:
    """Move a monitor out of xeniad's cgroup into the monitors' own, as QEMU goes into its
    domain's: whoever stops xeniad by its cgroup (a systemd unit, a session scope) must not
    take the monitors along. Not into the container's group: its memory is not theirs."""
    try:
        DomainCgroup.create(MONITORS_KEY, name="container monitors").attach(pid)
    except XeniaError as e:
        log.warning("domain %s: monitor %d stays in xeniad's cgroup: %s", name, pid, e)


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


# -- the host side ------------------------------------------------------------------------
class ContainerHost:
    """Run directories, cgroups, monitors and NICs of the container domains of a host."""

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

    def allowed_cpus(self, rec: DomainRecord) -> set[int]:
        return affinity.resolve_cpulist(rec.config.cpus or "all",
                                        doing=f"apply cpus= of '{rec.name}'")

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

    # -- one boot ------------------------------------------------------------------------------
    def setup(self, rec: DomainRecord) -> list[str]:
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
        # False where the host has no swap accounting (limits.py warns once).
        rec.runtime["swap_limited"] = confine.set_limits(cg, cfg)
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

    async def run_monitor(self, rec: DomainRecord, procs: list[str]) -> int:
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
                "the monitor exited without a word" + (f":\n{log_tail(files.monitor_log)}"
                                                       if files.monitor_log.exists() else ""))
            raise BackendError(f"Failed to start container '{rec.name}': {cause}")
        monitor = read_pid(files.monitor_pid)
        if monitor is not None:
            await asyncio.to_thread(_park_monitor, monitor, rec.name)
        return int(status["pid"])

    def plug_vifs(self, rec: DomainRecord, pid: int) -> None:
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
        async with Revert() as revert:
            # One undo for the whole boot; it reads `pid` when it runs (None until the
            # monitor has started the init).
            revert.add(lambda: asyncio.to_thread(self.end_boot, rec, pid))
            procs = await asyncio.to_thread(self.setup, rec)
            pid = await self.run_monitor(rec, procs)
            await asyncio.to_thread(self.plug_vifs, rec, pid)
            revert.success()
        rec.runtime.update({"pid": pid, "monitor_pid": read_pid(self.files(rec.uuid)
                                                                    .monitor_pid),
                            "crun_version": rt.crun_version(self.crun.path)})
        return pid

    async def note_runtime(self, uuid: str, runtime: dict[str, Any]) -> None:
        """Write a boot's runtime facts into the stored record."""
        rec = self.store.get(uuid)
        if rec is not None:
            rec.runtime.update({k: runtime[k] for k in BOOT_KEYS if k in runtime})
            self.store.put(rec)

    def monitor_alive(self, files: ContainerFiles) -> bool:
        """True if the domain's console monitor still runs."""
        pid = read_pid(files.monitor_pid)
        return pid is not None and _is_monitor(pid, files.dir)

    # -- the init's end, and cleaning up ----------------------------------------------------------
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
            monitor = read_pid(files.monitor_pid)
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
        for candidate in (pid, read_pid(files.init_pid)):
            if candidate and pid_in_group(candidate, rec.uuid):
                pids.add(candidate)
        with contextlib.suppress(XeniaError):
            if cg.exists():
                pids |= cg.pids()
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        for p in pids:
            if not wait_gone(p, KILL_WAIT):
                log.warning("domain %s: process %d survived SIGKILL", rec.name, p)

    def _stop_monitor(self, files: ContainerFiles) -> None:
        """Wait for the monitor to leave (it does once the pty closes), else kill it."""
        pid = read_pid(files.monitor_pid)
        if pid is None or not _is_monitor(pid, files.dir):
            return
        if wait_gone(pid, 5.0):
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            if wait_gone(pid, 3.0):
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
