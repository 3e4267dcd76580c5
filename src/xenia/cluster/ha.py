"""High availability: which domains may be HA, and the leader's failover decisions.

- check_ha(cfg, shared_pool_of): an HA domain's disks must all be on pools marked shared
  (a directory every member mounts) or replicated to another member, or it has none:
  another member must be able to open them after its host died. With replicated disks
  the owner key's "only_on" names the members keeping the copies: plan() restarts the
  domain there only.
- HAController: runs on the HA leader only (election.py). When a member's alive/ key goes
  (its lease expired) it gives each HA domain that member owned to another live member,
  highest ha_priority first, by a revision-checked claim guarded by the leader's term
  (keys.claim): a domain is given away once, by one leader, or not at all. It starts
  nothing itself: the new owner's member agent (agent.py) sees its name in the owner key
  and creates the domain from the config stored beside it.

A decision needs etcd to answer: without quorum every read and claim fails (QuorumLost)
and no failover happens; the domains keep running wherever they run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from xenia.cluster import keys
from xenia.cluster.client import EtcdClient
from xenia.cluster.election import Election
from xenia.cluster.kv import KV, Event
from xenia.cluster.watch import Watch
from xenia.config.model import DomainConfig
from xenia.errors import InvalidConfig, NotSupported, XeniaError

log = logging.getLogger(__name__)

HA_TYPES = ("pv", "pvh", "hvm")


def check_ha(cfg: DomainConfig, shared_pool_of: Callable[[str], str | None]) -> None:
    """InvalidConfig unless the domain can run on any member: every disk with an image on
    a shared pool. Empty CD-ROM drives need nothing."""
    doing = f"Failed to make domain '{cfg.name}' highly available"
    if cfg.type not in HA_TYPES:
        raise NotSupported(f"{doing}: HA is for {', '.join(HA_TYPES)} domains, not "
                           f"'{cfg.type}' (a container's root directory is host-local)")
    bad = [d.vdev for d in cfg.disks if d.target and shared_pool_of(d.target) is None]
    if bad:
        raise InvalidConfig(
            f"{doing}: disk(s) {', '.join(bad)} are not on a shared pool, so no other "
            "member could open them after this host died; move them to a pool made with "
            "`xenia pool create NAME --path DIR --shared` (DIR mounted by every member), "
            "use replicated volumes (`xenia volume create --replica MEMBER`), "
            "or set ha = 0")


@dataclass(frozen=True)
class HADomain:
    """An HA domain as the leader sees it: its owner key and its stored config."""

    uuid: str
    owner: keys.Ownership
    record: dict[str, Any]  # the owner key's value: host, restarts, gave_up, ...
    config: DomainConfig

    @property
    def restarts(self) -> int:
        return int(self.record.get("restarts", 0))


def ha_domains(owners: Iterable[KV], configs: dict[str, KV]) -> list[HADomain]:
    """The HA domains among owner keys (domains/<uuid>/owner) and configs by uuid."""
    found = []
    for kv in owners:
        uuid = kv.key[len(keys.DOMAINS):].split("/", 1)[0]
        ckv = configs.get(uuid)
        if ckv is None:
            continue
        try:
            cfg = DomainConfig.from_dict(keys.decode(ckv))
        except (TypeError, ValueError) as e:
            log.warning("domain %s: stored config unreadable: %s", uuid, e)
            continue
        if not cfg.ha:
            continue
        rec = keys.decode(kv)
        own = keys.Ownership(uuid, str(rec.get("host", "")), kv.mod_revision)
        found.append(HADomain(uuid, own, rec, cfg))
    return found


def plan(domains: list[HADomain], alive: dict[str, dict[str, Any]],
         excluded: set[str]) -> list[tuple[HADomain, str | None]]:
    """(domain, new owner or None: give up) for each HA domain whose owner is not alive,
    highest ha_priority first; new owners by free memory (as the alive records say,
    less what this plan already put there)."""
    free = {h: int(rec.get("free_mib", 0)) for h, rec in alive.items() if h not in excluded}
    # A domain with replicated disks restarts only where their copies are ("only_on").
    orphans = [d for d in domains
               if d.owner.host not in alive and not d.record.get("gave_up")]
    orphans.sort(key=lambda d: (-d.config.ha_priority, d.config.name))
    out: list[tuple[HADomain, str | None]] = []
    for d in orphans:
        only = d.record.get("only_on")
        fits = sorted(h for h in free if only is None or h in only)
        if d.restarts >= d.config.ha_max_restarts or not fits:
            out.append((d, None))
            continue
        host = max(fits, key=lambda h: free[h])
        free[host] -= d.config.effective_maxmem
        out.append((d, host))
    return out


class HAController:
    """The leader's failover loop: a watch of alive/ and a thread that sweeps on each
    deletion (and once at the start: a host that died during the leader change)."""

    def __init__(self, client: EtcdClient, election: Election) -> None:
        self.client = client
        self.election = election
        self.decisions: list[dict[str, Any]] = []  # what was decided, for status and tests
        self.state = "idle"  # idle, ok, no-quorum (the last sweep's outcome)
        # When the last deletion of an alive key was seen (or leadership began): the end of
        # detection, for the decisions' timings.
        self.seen = time.time()
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._watch: Watch | None = None
        self._thread = threading.Thread(target=self._run, name="ha", daemon=True)

    def start(self) -> HAController:
        self._watch = Watch(self.client, keys.ALIVE, self._events).start()
        self._kick.set()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._kick.set()
        if self._watch is not None:
            self._watch.stop()
        self._thread.join(timeout=5)

    def _events(self, events: list[Event]) -> None:
        if any(ev.kind == "delete" for ev in events):
            self.seen = time.time()
            self._kick.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._kick.wait()
            self._kick.clear()
            if self._stop.is_set():
                return
            try:
                self.sweep()
                self.state = "ok"
            except XeniaError as e:
                # QuorumLost included: no decision without etcd; try again shortly.
                self.state = "no-quorum" if "quorum" in str(e).lower() else "error"
                log.warning("HA sweep failed, no failover decided: %s", e)
                self._stop.wait(0.5)
                self._kick.set()

    def sweep(self) -> list[dict[str, Any]]:
        """Decide for every HA domain whose owner is dead; returns the decisions made."""
        if not self.election.is_leader:
            return []
        alive_kvs, _ = self.client.range(keys.ALIVE)
        alive = {keys.host_of(kv.key, keys.ALIVE): keys.decode(kv) for kv in alive_kvs}
        maint, _ = self.client.range(keys.MAINTENANCE)
        excluded = {keys.host_of(kv.key, keys.MAINTENANCE) for kv in maint}
        kvs, _ = self.client.range(keys.DOMAINS)
        owners = [kv for kv in kvs if kv.key.endswith("/owner")]
        configs = {kv.key[len(keys.DOMAINS):].split("/", 1)[0]: kv
                   for kv in kvs if kv.key.endswith("/config")}
        made = []
        for d, host in plan(ha_domains(owners, configs), alive, excluded):
            made.append(self._decide(d, host))
        self.decisions += made
        return made

    def _decide(self, d: HADomain, host: str | None) -> dict[str, Any]:
        dead = d.owner.host
        extra: dict[str, Any] = {"restarts": d.restarts + (host is not None), "from": dead}
        if host is None:
            # Keeps the dead owner: nothing may start it until a user does (`xenia ha`).
            extra["gave_up"] = True
            target = dead
            log.error("HA: domain %s not restarted (owner %s dead; %d restarts of at most "
                      "%d, or no member left)", d.config.name, dead, d.restarts,
                      d.config.ha_max_restarts)
        else:
            target = host
        won, now = keys.claim(self.client, d.uuid, target, d.owner, by=self.election.host,
                              leader_guard=self.election.guard(), extra=extra)
        decision = {"domain": d.config.name, "uuid": d.uuid, "from": dead, "to": host,
                    "won": won, "owner": now.host if now else None, "seen": self.seen,
                    "at": time.time()}
        if won and host is not None:
            log.warning("HA: domain %s of dead member %s restarts on %s", d.config.name,
                        dead, host)
        elif not won:
            log.warning("HA: claim of %s lost (owner now %s): another decision came first",
                        d.config.name, now.host if now else None)
        return decision

