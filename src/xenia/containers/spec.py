"""The OCI bundle of a container domain (config.json for crun) and the checks behind it.

Main entry points: `check_config` (keys a container cannot have), `check_rootfs` and
`init_argv` (the root filesystem and its init), and `build_spec` (the config.json
document, checked by `check_mappings`). Pure functions over a DomainConfig and the
rootfs; nothing here starts anything.

What a container gets (docs/decisions.md, "Container domains" and "Hardened containers"):
- namespaces user, pid, mount, network, UTS, IPC and cgroup; the user namespace maps
  container ids 0..65535 to host ids of its own (containers/idmap.py), and its rootfs is
  seen owned by them (containers/idmount.py);
- a console: a pty the monitor makes (monitor.py), the init's stdio and /dev/console;
- /proc, /sys (read-only), /dev (tmpfs with crun's standard nodes), /dev/pts, /dev/shm,
  /dev/mqueue, /run and /tmp (tmpfs), /sys/fs/cgroup (read-only, its own group only);
  runc's masked and read-only /proc and /sys paths;
- the capabilities of containers/caps.py (Docker's default set without CAP_MKNOD, with
  CAP_SYS_BOOT; `cap_add`/`cap_drop`), no new privileges (no setuid gains), and the
  allow-list seccomp profile of containers/seccomp.py;
- no cgroup settings: Xenia makes and manages the container's cgroups itself
  (drivers/container.py, containers/limits.py), with the same code as for VMs.
"""

from __future__ import annotations

import os
import platform
import shlex
import stat
from pathlib import Path
from typing import Any

from xenia.config.model import DomainConfig
from xenia.containers import caps as capabilities
from xenia.containers import seccomp
from xenia.containers.idmap import IdMap, IdRange
from xenia.errors import InvalidConfig, NotFound, NotSupported

DEFAULT_INIT = "/sbin/init"
# Where a container's root is mounted, in its monitor's mount namespace only (monitor.py);
# on the host an empty directory.
MOUNT_BASE = Path("/run/xenia-containers")
# The smallest memory limit a container starts with (mem-set has the same floor).
MIN_MEMORY_MIB = 16
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Docker's defaults (moby daemon/pkg/oci/defaults.go, runc's plus /proc/interrupts since
# GHSA-6fw5-f8r9-fgfm): files of /proc and /sys that tell about or act on the host's
# hardware and kernel, covered by /dev/null (or an empty read-only tmpfs)...
MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
    "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
    "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
)
# ... and each CPU's thermal_throttle directory (Docker masks them too: their counters
# tell a neighbour's load); one a CPU, so listed from the host's sysfs when a spec is
# built: crun refuses nothing for a path that does not exist, but the list stays short.
THERMAL_THROTTLE = "devices/system/cpu/cpu*/thermal_throttle"
# ... and the ones left readable but not writable.
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

# Settings of a DomainConfig that name things a container cannot have:
# (attribute, xl.cfg key, what it is).
_DEVICE_KEYS = (
    ("kernel", "kernel", "a kernel of its own (it runs on the host's)"),
    ("ramdisk", "ramdisk", "a ramdisk"),
    ("firmware", "firmware", "firmware"),
    ("disks", "disk", "disks"),
    ("pci", "pci", "PCI devices"),
    ("serial", "serial", "serial ports"),
    ("vnc", "vnc", "a VNC display"),
    ("sdl", "sdl", "an SDL display"),
    ("usb", "usb", "USB"),
    ("usbdevice", "usbdevice", "USB devices"),
    ("machine", "machine", "a machine type"),
    ("boot", "boot", "a boot order"),
    ("boot_watchdog", "boot_watchdog", "a kernel boot to watch"),
    ("channel", "channel", "virtio-serial channels"),
    ("device_model_args", "device_model_args", "QEMU arguments"),
    ("watchdog", "on_watchdog", "a watchdog device"),
    ("smbios", "smbios", "SMBIOS tables"),
    ("viridian", "viridian", "Hyper-V enlightenments"),
    ("vtpm", "vtpm", "a vTPM"),
    ("cpuid", "cpuid", "CPUID settings (it runs on the host's CPU)"),
    ("nestedhvm", "nestedhvm", "nested virtualization"),
    ("vnuma", "vnuma", "virtual NUMA nodes"),
    ("usbctrl", "usbctrl", "USB controllers"),
    ("usbdev", "usbdev", "USB devices"),
    ("soundhw", "soundhw", "sound cards"),
    ("keymap", "keymap", "a VNC keyboard layout"),
    ("p9", "p9", "9p shares (virtio-9p is a QEMU device; put the files in its rootfs)"),
    ("vscsi", "vscsi", "SCSI devices"),
)
SUPPORTED = ("rootfs, init, memory/maxmem (a limit), vcpus/maxvcpus and cpus (a cpuset), "
             "cpu_weight, cap, vif (veth NICs), extra/cmdline (given to init as "
             "XENIA_CMDLINE), on_poweroff/on_reboot/on_crash, cap_add/cap_drop, "
             "pids_limit and idmap")


def _fail(name: str, problem: str) -> str:
    return f"Failed to create domain '{name}': {problem}"


def check_config(cfg: DomainConfig) -> None:
    """Refuse what a container cannot have, saying what containers support."""
    for attr, key, what in _DEVICE_KEYS:
        if getattr(cfg, attr):
            raise InvalidConfig(_fail(cfg.name, f"'{key}' is set, but a container cannot "
                                      f"have {what}; containers support {SUPPORTED}"))
    if cfg.accel != "auto":
        raise InvalidConfig(_fail(cfg.name, f"accel='{cfg.accel}': a container runs on the "
                                  "host's kernel and has no accelerator; leave accel out"))


# -- rootfs and init -----------------------------------------------------------------------
def check_rootfs(cfg: DomainConfig) -> Path:
    """The rootfs directory of `cfg`, checked; InvalidConfig/NotFound saying what is wrong."""
    name, text = cfg.name, cfg.rootfs
    if not text:
        raise InvalidConfig(_fail(name, "a container needs its root filesystem: set rootfs "
                                  "= \"/path/to/dir\" (`xenia image build rootfs` makes one "
                                  "in the state dir's images/rootfs)"))
    path = Path(text)
    if not path.is_absolute():
        raise InvalidConfig(_fail(name, f"rootfs '{text}' is not an absolute path; give it "
                                  "as a full path"))
    # overlayfs takes its layers in a comma- and colon-separated option string.
    bad = sorted({c for c in text if c in ",:\\" or c.isspace() or not c.isprintable()})
    if bad:
        raise InvalidConfig(_fail(name, f"rootfs '{text}' contains {' '.join(map(repr, bad))}"
                                  ", which overlayfs cannot take in a layer path; move or "
                                  "link the directory to a plain path"))
    if not path.exists():
        raise NotFound(_fail(name, f"rootfs '{text}' does not exist; check rootfs in the "
                             "config (`xenia image build rootfs` makes one)"))
    if not path.is_dir():
        raise InvalidConfig(_fail(name, f"rootfs '{text}' is not a directory (a container's "
                                  "root filesystem is a directory tree)"))
    real = path.resolve()
    if real == Path("/"):
        raise InvalidConfig(_fail(name, "rootfs is the host's own root directory; a "
                                  "container needs a root filesystem of its own"))
    return real


def init_argv(cfg: DomainConfig) -> list[str]:
    """`init` as an argument list (shell-like quoting, never run by a shell)."""
    text = cfg.init if cfg.init is not None else DEFAULT_INIT
    try:
        argv = shlex.split(text)
    except ValueError as e:
        raise InvalidConfig(_fail(cfg.name, f"init '{text}' cannot be split into arguments "
                                  f"({e})")) from None
    if not argv:
        raise InvalidConfig(_fail(cfg.name, "init is empty; give the program to run as the "
                                  f"container's init (default {DEFAULT_INIT})"))
    return argv


def resolve_in_root(root: Path, path: str, hops: int = 40) -> Path | None:
    """Where `path` (absolute, as seen inside the container) is on the host under `root`,
    following symlinks as the container would (absolute targets stay inside `root`).
    None if it does not exist."""
    parts = [p for p in path.split("/") if p and p != "."]
    current = root
    while parts:
        part = parts.pop(0)
        if part == "..":
            current = current.parent if current != root else root
            continue
        nxt = current / part
        try:
            st = nxt.lstat()
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            hops -= 1
            if hops < 0:
                return None
            target = os.readlink(nxt)
            if target.startswith("/"):
                current = root
            parts = [p for p in target.split("/") if p and p != "."] + parts
            continue
        current = nxt
    return current


def check_init(cfg: DomainConfig, root: Path) -> list[str]:
    """The init argv, its program checked to exist in `root` and be executable."""
    argv = init_argv(cfg)
    prog = argv[0]
    if "/" not in prog:
        return argv  # looked up in PATH inside the container by crun
    if not prog.startswith("/"):
        raise InvalidConfig(_fail(cfg.name, f"init program '{prog}' must be an absolute path "
                                  "(or a bare name found in PATH)"))
    found = resolve_in_root(root, prog)
    if found is None:
        raise NotFound(_fail(cfg.name, f"init '{prog}' does not exist in rootfs {root}; "
                             "set init to the container's init program"))
    if not found.is_file() or not os.stat(found).st_mode & 0o111:
        raise InvalidConfig(_fail(cfg.name, f"init '{prog}' in rootfs {root} is not an "
                                  "executable file"))
    return argv


# -- user namespace ------------------------------------------------------------------------
def userns_allowed(proc: Path = Path("/proc/sys/user/max_user_namespaces")) -> bool:
    try:
        return int(proc.read_text().strip()) > 0
    except (OSError, ValueError):
        return False


def check_mappings(doc: dict[str, Any], idmap: IdMap) -> None:
    """Refuse a config.json whose user namespace maps a host id outside `idmap` (the ids
    Xenia gave the container): InvalidConfig. Guards build_spec and anything that edits
    its output."""
    linux = doc.get("linux", {})
    if {"type": "user"} not in linux.get("namespaces", []):
        raise InvalidConfig("Failed to build a container's runtime config: it has no user "
                            "namespace, and every container needs one")
    for key, which in (("uidMappings", "uid"), ("gidMappings", "gid")):
        mine = idmap.host_range(which)
        maps = linux.get(key) or []
        if not maps:
            raise InvalidConfig(f"Failed to build a container's runtime config: no {key}")
        for m in maps:
            want = IdRange(int(m["hostID"]), int(m["size"]))
            if not mine.covers(want):
                raise InvalidConfig(f"Failed to build a container's runtime config: it maps "
                                    f"host {which}s {want}, outside the container's own "
                                    f"{mine}")


# -- config.json ---------------------------------------------------------------------------
def environment(cfg: DomainConfig) -> list[str]:
    return [
        f"PATH={PATH}",
        "TERM=linux",
        "HOME=/root",
        # systemd and others look at $container to know they run in one.
        "container=xenia",
        # The kernel-style keys of the config (extra=, cmdline=) for the rootfs's init,
        # as the tiny VM image reads them from /proc/cmdline: xenia.ip=, xenia.gw=, ...
        f"XENIA_CMDLINE={cfg.effective_cmdline()}",
    ]


def masked_paths(sysfs: Path = Path("/sys")) -> list[str]:
    """MASKED_PATHS and the host's thermal_throttle directories (as seen inside: /sys)."""
    throttle = sorted(str(Path("/sys") / p.relative_to(sysfs))
                      for p in sysfs.glob(THERMAL_THROTTLE))
    return [*MASKED_PATHS, *throttle]


def _mounts() -> list[dict[str, Any]]:
    def m(dest: str, fstype: str, source: str, *options: str) -> dict[str, Any]:
        return {"destination": dest, "type": fstype, "source": source,
                "options": list(options)}

    return [
        m("/proc", "proc", "proc", "nosuid", "noexec", "nodev"),
        m("/dev", "tmpfs", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k"),
        m("/dev/pts", "devpts", "devpts", "nosuid", "noexec", "newinstance", "ptmxmode=0666",
          "mode=0620", "gid=5"),
        m("/dev/shm", "tmpfs", "shm", "nosuid", "noexec", "nodev", "mode=1777"),
        m("/dev/mqueue", "mqueue", "mqueue", "nosuid", "noexec", "nodev"),
        m("/sys", "sysfs", "sysfs", "nosuid", "noexec", "nodev", "ro"),
        m("/sys/fs/cgroup", "cgroup", "cgroup", "nosuid", "noexec", "nodev", "relatime", "ro"),
        m("/run", "tmpfs", "tmpfs", "nosuid", "nodev", "mode=755"),
        m("/tmp", "tmpfs", "tmpfs", "nosuid", "nodev", "mode=1777"),
    ]


def build_spec(cfg: DomainConfig, *, uuid: str, rootfs: Path, argv: list[str],
               idmap: IdMap, machine: str | None = None,
               sysfs: Path = Path("/sys")) -> dict[str, Any]:
    """The OCI runtime config (config.json) of container domain `cfg`.

    `rootfs` is the directory crun pivots into (the domain's overlay mount), `argv` its
    init, `idmap` the host ids Xenia gave it, `sysfs` where the host's /sys is (the
    masked thermal_throttle paths are read from it). No `linux.resources` and no `cgroupsPath`:
    the cgroups are Xenia's. NotSupported on an architecture without a seccomp profile.
    """
    if not seccomp.supported(machine):
        raise NotSupported(f"Failed to create domain '{cfg.name}': Xenia has no seccomp "
                           f"profile for {machine or platform.machine()}, and no container "
                           "runs without one")
    caps = capabilities.effective(cfg.cap_add, cfg.cap_drop)
    namespaces = [{"type": t} for t in
                  ("user", "pid", "network", "ipc", "uts", "mount", "cgroup")]
    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "uidMappings": [{"containerID": 0, "hostID": idmap.uid, "size": idmap.size}],
        "gidMappings": [{"containerID": 0, "hostID": idmap.gid, "size": idmap.size}],
        "maskedPaths": masked_paths(sysfs),
        "readonlyPaths": list(READONLY_PATHS),
        "seccomp": seccomp.profile(caps, machine),
    }
    return {
        "ociVersion": "1.0.2",
        "process": {
            # The console is a pty of the monitor's, given as stdio (monitor.py).
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": list(argv),
            "env": environment(cfg),
            "cwd": "/",
            # Not inheritable nor ambient: what a program run as a user other than root
            # gets is nothing.
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            # No setuid/setgid or file-capability gains past exec, and seccomp filters
            # need no CAP_SYS_ADMIN to install.
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": False},
        "hostname": cfg.name,
        "mounts": _mounts(),
        "linux": linux,
        "annotations": {"org.xenia.domain": cfg.name, "org.xenia.uuid": uuid},
    }
