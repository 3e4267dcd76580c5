"""How a QEMU is confined: its user, its /dev, its device cgroup, its seccomp sandbox.

The layers (docs/security.md, "QEMU confinement"):

- QEMU runs as the system user `xenia-qemu` (QEMU_USER), never as root. The install step
  creates it; xeniad creates it too at its first QEMU start if it is missing, so a
  host set up by an older install step keeps working. It is dropped to before exec by
  qemu/jail.py, which also gives QEMU
- a private mount namespace with a tmpfs /dev holding only device_nodes(), and
- the domain's device cgroups allowing the same nodes and nothing else: v1 devices.allow,
  and on cgroup v2 a BPF_PROG_TYPE_CGROUP_DEVICE program (hostos/devbpf.py) attached to
  the domain's v2 group; a hybrid host gets both. The record says which were made
  (runtime["confinement"]["device_cgroup_layers"]).
- -sandbox (QEMU's seccomp filter): SANDBOX.

The files a domain is given are chowned to the QEMU user for its life (hostos/ownership).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import pwd
import sys
from pathlib import Path

from xenia.errors import BackendError, NotSupported
from xenia.hostos import devbpf
from xenia.hostos.cgroupfs import ROOT_NAME, check_name, host_layout
from xenia.hostos.ownership import Identity
from xenia.tools import find_tool, run_tool

log = logging.getLogger(__name__)

QEMU_USER = "xenia-qemu"
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
# Always in QEMU's /dev: mode kept from the host (world read/write, nothing secret).
BASE_NODES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
# QEMU opens /dev/net/tun for each -netdev tap (its taps are owned by the QEMU user).
TUN = "/dev/net/tun"
# Post-copy migration: an unprivileged QEMU gets a userfaultfd only through this node
# (vm.unprivileged_userfaultfd is 0 by default); owned by QEMU's user in its /dev.
USERFAULTFD = "/dev/userfaultfd"


def sandbox_argv() -> list[str]:
    return ["-sandbox", SANDBOX]


@functools.lru_cache(maxsize=4)
def qemu_identity(user: str = QEMU_USER) -> Identity:
    """The uid/gid QEMU runs as; the user is created (system user, no login, no home)
    if missing."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        useradd = find_tool("useradd", "passwd", f"to create the QEMU user {user}")
        run_tool([useradd, "--system", "--user-group", "--no-create-home",
                  "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
                  "--comment", "Xenia QEMU", "--", user],
                 f"to create the QEMU user {user}")
        log.info("created the system user %s for QEMU", user)
        pw = pwd.getpwnam(user)
    if pw.pw_uid == 0 or pw.pw_gid == 0:
        raise BackendError(f"Failed to confine QEMU: user {user} has uid/gid 0; QEMU must "
                           "not run as root (give it a system uid: userdel it and let "
                           "xeniad create it)")
    return Identity(pw.pw_uid, pw.pw_gid)


def device_nodes(accel: str, pci: bool) -> list[tuple[str, bool]]:
    """(path, owned by QEMU's user) of each node in QEMU's private /dev."""
    nodes = [(p, False) for p in BASE_NODES]
    if os.path.exists(TUN):
        nodes.append((TUN, False))
    if os.path.exists(USERFAULTFD):
        nodes.append((USERFAULTFD, True))
    if accel == "kvm":
        nodes.append(("/dev/kvm", True))
    if pci and os.path.isdir("/dev/vfio"):
        # VFIO is refused on this host's kernel for now (hostos/pci.py); the nodes are
        # here so a host that allows it needs no change to the jail.
        nodes += [(str(p), True) for p in sorted(Path("/dev/vfio").iterdir())
                  if not p.is_dir()]
    return nodes


# -- the device cgroups: v1 devices.allow, v2 a BPF program -----------------------------
def _devices_dir(uuid: str) -> Path | None:
    h = host_layout().hierarchy_for("devices")
    if h is None or h.version != 1:
        return None
    check_name("key", uuid)
    return h.mount / ROOT_NAME / uuid


def _v2_dir(uuid: str) -> Path | None:
    """The domain's group in the v2 hierarchy (on a pure v2 host the very group
    DomainCgroup uses; on a hybrid host one under the unified mount), or None."""
    v2 = next((h for h in host_layout().hierarchies if h.version == 2), None)
    if v2 is None:
        return None
    check_name("key", uuid)
    return v2.mount / ROOT_NAME / uuid


def device_rule(path: str) -> str:
    return str(devbpf.Rule.of_node(path))


def setup_device_cgroup(uuid: str, nodes: list[tuple[str, bool]]
                        ) -> tuple[list[Path], list[str]]:
    """Make the domain's device groups allowing just `nodes`: the v1 devices group and,
    where the host has cgroup v2, a v2 group with a BPF allow-list (both on a hybrid
    host: the kernel checks both). (cgroup.procs files for the jail to join, the layers
    made: "v1", "bpf"). A kernel that cannot load the program (no CONFIG_CGROUP_BPF)
    gets a warning and no "bpf" layer, as libvirt does; the record says so."""
    procs: list[Path] = []
    layers: list[str] = []
    group = _devices_dir(uuid)
    doing = f"to set the device allow-list of domain {uuid}"
    if group is not None:
        try:
            group.parent.mkdir(exist_ok=True)
            group.mkdir(exist_ok=True)
            # Deny all first, then allow each node: a group starts with its parent's list.
            (group / "devices.deny").write_text("a")
            for path, _ in nodes:
                (group / "devices.allow").write_text(device_rule(path))
        except OSError as e:
            remove_device_cgroup(uuid)
            raise BackendError(f"Failed {doing}: {group}: {e.strerror}") from e
        procs.append(group / "cgroup.procs")
        layers.append("v1")
    v2 = _v2_dir(uuid)
    if v2 is not None:
        try:
            v2.parent.mkdir(exist_ok=True)
            v2.mkdir(exist_ok=True)
        except OSError as e:
            remove_device_cgroup(uuid)
            raise BackendError(f"Failed {doing}: {v2}: {e.strerror}") from e
        try:
            devbpf.install(str(v2), [devbpf.Rule.of_node(p) for p, _ in nodes])
        except OSError as e:
            log.warning("domain %s: no BPF device allow-list on cgroup v2 (%s): the kernel "
                        "needs CONFIG_CGROUP_BPF; its private /dev%s still applies", uuid,
                        e.strerror or e, " and the v1 list" if layers else "")
        else:
            layers.append("bpf")
        procs.append(v2 / "cgroup.procs")
    return procs, layers


def remove_device_cgroup(uuid: str) -> None:
    """After QEMU exited: its device groups gone (the BPF program detached first, so it
    goes even if the v2 group stays, e.g. held by a process left in it)."""
    group = _devices_dir(uuid)
    if group is not None:
        with contextlib.suppress(OSError):
            group.rmdir()
    v2 = _v2_dir(uuid)
    if v2 is not None and v2.is_dir():
        with contextlib.suppress(OSError):
            devbpf.uninstall(str(v2))
        with contextlib.suppress(OSError):
            v2.rmdir()


def device_cgroup_of(pid: int) -> str | None:
    """The devices-controller group of a process (for tests and `xenia info`)."""
    try:
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, ctrls, path = line.split(":", 2)
            if "devices" in ctrls.split(","):
                return path
    except OSError:
        return None
    return None


def jail_argv(who: Identity, nodes: list[tuple[str, bool]], procs: list[Path],
              argv: list[str], stderr: Path, sandbox: bool = True) -> list[str]:
    """QEMU's argv, run through qemu/jail.py, which daemonizes it (not -daemonize: the
    sandbox forbids its fork and setsid) with its stderr into `stderr`. `sandbox`: add
    -sandbox (qemu-storage-daemon has no such option)."""
    if who.uid == 0:
        raise NotSupported("Failed to confine QEMU: its user must not be root")
    spec = {"uid": who.uid, "gid": who.gid, "devices": nodes,
            "cgroups": [str(p) for p in procs], "stderr": str(stderr)}
    qemu = [a for a in argv if a != "-daemonize"]
    return [sys.executable, "-m", "xenia.qemu.jail", json.dumps(spec), "--", *qemu,
            *(sandbox_argv() if sandbox else [])]


def _replace_program(v2: Path, nodes: list[str]) -> None:
    """The v2 group's BPF program replaced by one for `nodes` (devbpf.install attaches
    the new one before it detaches the old), if it has one: none means the kernel could
    not load one at start, and the record says so."""
    gfd = os.open(v2, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        had_program = bool(devbpf.query(gfd))
    finally:
        os.close(gfd)
    if had_program:
        devbpf.install(str(v2), [devbpf.Rule.of_node(p) for p in nodes if os.path.exists(p)])


def allow_node(uuid: str, path: str, nodes: list[str]) -> None:
    """One more node in the domain's device cgroups: v1 one more devices.allow line; v2 a
    program for `nodes` (its private /dev so far) plus `path` replaces the old one."""
    doing = f"to give device {path} to domain {uuid}"
    group = _devices_dir(uuid)
    try:
        if group is not None and group.is_dir():
            (group / "devices.allow").write_text(device_rule(path))
        v2 = _v2_dir(uuid)
        if v2 is not None and v2.is_dir():
            _replace_program(v2, [*nodes, path])
    except OSError as e:
        raise BackendError(f"Failed {doing}: {e.strerror or e}") from e


def deny_node(uuid: str, rule: devbpf.Rule | None, nodes: list[str]) -> None:
    """A node out of the domain's device cgroups: v1 a devices.deny line for `rule` (the
    group denies all else already, so this drops its allow entry; None: its numbers are
    unknown); v2 a program for `nodes` (its private /dev without it) replaces the old."""
    doing = f"to take device {rule or 'nodes'} from domain {uuid}"
    group = _devices_dir(uuid)
    try:
        if rule is not None and group is not None and group.is_dir():
            (group / "devices.deny").write_text(str(rule))
        v2 = _v2_dir(uuid)
        if v2 is not None and v2.is_dir():
            _replace_program(v2, nodes)
    except OSError as e:
        raise BackendError(f"Failed {doing}: {e.strerror or e}") from e


def add_block_device(uuid: str, pid: int, path: str, who: Identity,
                     nodes: list[str]) -> None:
    """A hot-plugged block device: allowed in the domain's device cgroups and made in its
    QEMU's private /dev (qemu/jail.py --add-node), before QEMU is asked to open it."""
    allow_node(uuid, path, nodes)
    run_tool([sys.executable, "-m", "xenia.qemu.jail", "--add-node", str(pid), path,
              f"{who.uid}:{who.gid}", "--"], f"to give block device {path} to domain {uuid}")


def remove_block_device(uuid: str, pid: int, path: str, nodes: list[str]) -> None:
    """A detached block device (after QEMU closed it): denied in the domain's device
    cgroups, then unlinked from its QEMU's private /dev (qemu/jail.py --remove-node), so
    QEMU cannot open it again. `nodes`: its private /dev without it. The node's numbers
    come from the host's node, or from QEMU's copy if the host's is gone (a loop device
    deleted meanwhile)."""
    rule = None
    for where in (path, f"/proc/{pid}/root{path}"):
        with contextlib.suppress(OSError):
            rule = devbpf.Rule.of_node(where)
            break
    deny_node(uuid, rule, nodes)
    run_tool([sys.executable, "-m", "xenia.qemu.jail", "--remove-node", str(pid), path, "--"],
             f"to take block device {path} from domain {uuid}")
