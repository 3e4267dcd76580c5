"""What holds a container domain in, as the driver (drivers/container.py) applies it.

Main class: Confinement (one a driver): the checks at create, the user ids a domain keeps
for its life (idmap.py), the lower layer of its root (lower.py). Functions: the cgroup
limits of one boot (limits.py) and the host-side network set-up (netconf.py). The OCI
side (capabilities, seccomp, masked paths, no new privileges) is in spec.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

from xenia.config.model import DomainConfig
from xenia.containers import caps, idmount, limits, netconf, seccomp, spec
from xenia.containers.idmap import IdAllocator, IdMap, parse_request
from xenia.containers.lower import LowerLayers
from xenia.errors import InvalidConfig, NotSupported
from xenia.hostos.cgroups import DomainCgroup
from xenia.network.veth import guest_name
from xenia.store.base import DomainRecord, Store

log = logging.getLogger(__name__)

TTY_GID = 5  # the console's group inside (the rootfs's /etc/group)
set_memory = limits.set_memory


class Confinement:
    def __init__(self, store: Store, ids: IdAllocator | None = None,
                 layers: LowerLayers | None = None) -> None:
        self.store = store
        self.ids = ids if ids is not None else IdAllocator(store)
        self.layers = layers if layers is not None else LowerLayers()

    def check(self, rec: DomainRecord) -> None:
        """What the host must allow for the domain, and its network keys (no side
        effects)."""
        name, cfg = rec.name, rec.config
        if not spec.userns_allowed():
            raise NotSupported(f"Failed to create domain '{name}': this host allows no user "
                               "namespaces (user.max_user_namespaces = 0), and every "
                               "container runs in one; raise that sysctl")
        if not seccomp.supported():
            raise NotSupported(f"Failed to create domain '{name}': Xenia has no seccomp "
                               "profile for this host's architecture, and no container "
                               "runs without one")
        have = caps.effective(cfg.cap_add, cfg.cap_drop)
        for i, vif in enumerate(cfg.vifs):  # devids are given after the checks
            iface = guest_name(vif.devid if vif.devid is not None else i)
            try:
                nic = netconf.nic_config(cfg.effective_cmdline(), iface)
            except ValueError as e:
                raise InvalidConfig(f"Failed to create domain '{name}': the address of "
                                    f"{iface} in extra/cmdline is not valid: {e}") from None
            if nic.mode == "dhcp" and "CAP_NET_ADMIN" not in have:
                log.warning("domain %s: %s gets no address: DHCP runs inside the container, "
                            "which needs cap_add = [\"NET_ADMIN\"]; or give it one with "
                            "xenia.ip= in extra", name, iface)

    # -- user ids --------------------------------------------------------------------------
    def allocate(self, rec: DomainRecord, collect: bool = True) -> IdMap:
        """The domain's host ids, claimed once, at create (runtime "ids"; "userns" is the
        map its current boot runs with). `collect`: first free the ids of domains without
        a record, which is right only under the manager's create lock (prepare), where
        every claim of a domain being created has its record already."""
        if rec.runtime.get("ids"):
            return IdMap.from_dict(rec.runtime["ids"])
        if collect:
            keep = {r.uuid for r in self.store.list()} | {rec.uuid}
            for uuid in self.ids.collect_garbage(keep):
                log.info("freed the user ids of domain %s, which is gone", uuid)
        request = parse_request(rec.config.idmap) if rec.config.idmap else None
        idmap = self.ids.allocate(rec.uuid, rec.name, request)
        rec.runtime["ids"] = rec.runtime["userns"] = idmap.to_dict()
        return idmap

    def idmap(self, rec: DomainRecord, upper: Path) -> IdMap:
        """The ids of a boot: the recorded ones, still inside the ranges Xenia may give and
        claimed by the domain (a restart after a release claims them again).

        A domain an older Xenia created has no "ids": it gets them now, and the files it
        wrote (`upper`, the overlay's upper directory), owned by the ids it ran with
        before ("userns": its rootfs's owner; none: the host's own), are given to them."""
        before = None if rec.runtime.get("ids") else rec.runtime.get("userns")
        legacy = not rec.runtime.get("ids")
        idmap = self.allocate(rec, collect=False)
        self.ids.hold(rec.uuid, rec.name, idmap)
        if legacy and upper.exists():
            old = IdMap.from_dict(before) if before else IdMap(0, 0, idmap.size)
            log.info("domain %s: giving its files from ids %d/%d to its own ids %d/%d",
                     rec.name, old.uid, old.gid, idmap.uid, idmap.gid)
            idmount.shift_in_place(upper, (old.uid, idmap.uid), (old.gid, idmap.gid),
                                   min(old.size, idmap.size))
        return idmap

    def release(self, rec: DomainRecord) -> None:
        self.ids.release(rec.uuid)

    def lower(self, root: Path, idmap: IdMap, copy_dir: Path, name: str) -> list[str]:
        """The monitor's arguments for the overlay's lower layer of this boot."""
        return self.layers.prepare(root, idmap, copy_dir, name).monitor_args()


def console_owner(rec: DomainRecord) -> str:
    """UID:GID of the console pty on the host: container root, group tty."""
    idmap = IdMap.from_dict(rec.runtime["userns"])
    gid = idmap.gid + TTY_GID if idmap.size > TTY_GID else idmap.gid
    return f"{idmap.uid}:{gid}"


def set_limits(cg: DomainCgroup, cfg: DomainConfig) -> bool:
    """Memory (swap included) and process limits of a boot; False if swap could not be
    limited (no swap accounting on this host)."""
    swap_limited = limits.set_memory(cg, cfg.memory * 1024 * 1024)
    limits.set_pids_max(cg, limits.DEFAULT_PIDS_LIMIT if cfg.pids_limit is None
                        else cfg.pids_limit)
    return swap_limited


def configure_network(rec: DomainRecord, pid: int) -> None:
    """lo and the vifs' ethN up, static addresses and the default route set, from the
    host (the container lacks CAP_NET_ADMIN)."""
    ifaces = [guest_name(v.devid) for v in rec.config.vifs if v.devid is not None]
    nics = netconf.configure(pid, ifaces, rec.config.effective_cmdline(), rec.name)
    rec.runtime["nics"] = {n.iface: str(n.address) if n.address else n.mode for n in nics}
