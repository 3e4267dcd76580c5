"""The etcd voter cap: which members run an etcd voter and which are etcd clients only.

A cluster keeps at most N voting etcd members (N: `cluster init --etcd-voters N`, odd,
3..7, default 5, stored in the cluster record /xenia/v1/cluster). etcd's own guidance is 3
or 5: every write waits for a majority of the voters, and each voter more makes writes and
elections slower. A host admitted while N voters exist runs no etcd member: it is a
*client member*, reaching the voters' client URLs over the same TLS credentials, as a host
with an external etcd (`xeniad --etcd`) does.

- choose_role(): the role a joining host gets (admit decides, in a transaction that also
  bumps the cluster record, so two admits at once cannot both take the last voter seat);
- choose_promotion(): the client member that would take a free voter seat;
- ClientConfig: a client member's settings file (<state>/cluster/etcd-client.json): its
  name and the voters' client URLs last seen;
- EndpointRefresher: a client member re-reads the voter list every REFRESH_EVERY s and
  gives its client the new URLs (and saves them for the next xeniad), so voters that
  came or went are followed while at least one known voter answers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xenia.cluster import keys, settings
from xenia.cluster.kv import Compare, Get, Put
from xenia.errors import AlreadyExists, InUse, InvalidConfig

if TYPE_CHECKING:
    from xenia.cluster.client import EtcdClient

log = logging.getLogger(__name__)

DEFAULT_VOTERS = 5
MIN_VOTERS, MAX_VOTERS = 3, 7
VOTER, CLIENT = "voter", "client"
REFRESH_EVERY = 5.0
SEAT_TRIES = 20  # admits racing for the same cluster record revision


def check_voters(n: int) -> int:
    if n % 2 == 0 or not MIN_VOTERS <= n <= MAX_VOTERS:
        raise InvalidConfig(f"Failed to set the etcd voter count to {n}: give an odd number "
                            f"from {MIN_VOTERS} to {MAX_VOTERS} (etcd recommends 3 or 5; an "
                            "even count tolerates no more failures than the odd one below)")
    return n


def cap_of(cluster_record: Mapping[str, Any]) -> int:
    """The cluster's voter cap (a cluster made before the cap existed: the default)."""
    return int(cluster_record.get("etcd_voters") or DEFAULT_VOTERS)


def role_of(member_record: Mapping[str, Any]) -> str:
    """A member's etcd role as admitted (records written before the cap: voters)."""
    return CLIENT if member_record.get("etcd") == CLIENT else VOTER


def choose_role(records: Mapping[str, Mapping[str, Any]], cap: int) -> str:
    """The role of a host joining now: a voter while fewer than `cap` members hold a
    voter seat (counted from the member records, which admit writes before the joiner
    adds its etcd member, so joins under way count too), else a client."""
    voters = sum(1 for r in records.values() if role_of(r) == VOTER)
    return VOTER if voters < cap else CLIENT


def choose_promotion(records: Mapping[str, Mapping[str, Any]], etcd_names: Iterable[str],
                     alive: Iterable[str], cap: int) -> str | None:
    """The client member that should take a free voter seat: None while the etcd cluster
    has `cap` members; else the alive client member that joined first (the longest-lived
    host is the likeliest to stay), by name on a tie."""
    names = set(etcd_names)
    if len(names) >= cap:
        return None
    up = set(alive)
    candidates = [(float(r.get("joined") or 0.0), n) for n, r in records.items()
                  if n in up and n not in names and role_of(r) == CLIENT]
    return min(candidates)[1] if candidates else None


def seat(client: EtcdClient, name: str, rec: dict[str, Any], doing: str
         ) -> tuple[bool, str]:
    """Write members/<name> with its etcd role; (written, role). Not written: a member of
    that name exists. The role is decided from the records read, and the write also
    rewrites the cluster record, compared by revision: of two admits at once, the second
    fails the comparison and decides again with the first one's record counted. Blocking."""
    for _ in range(SEAT_TRIES):
        cluster = client.get(keys.CLUSTER)
        kvs, _ = client.range(keys.MEMBERS)
        records: dict[str, dict[str, Any]] = {}
        for kv in kvs:
            other = keys.host_of(kv.key, keys.MEMBERS)
            records[other] = keys.decode(kv)
            if records[other].get("address") == rec["address"]:
                raise AlreadyExists(
                    f"Failed {doing}: member '{other}' has the address {rec['address']} "
                    "already; remove it first (`xenia cluster remove`)")
        role = choose_role(records, cap_of(keys.decode(cluster) if cluster else {}))
        compare = [Compare.absent(keys.member(name))]
        writes = [Put(keys.member(name), keys.encode({**rec, "etcd": role}))]
        if cluster is not None:
            compare.append(Compare.mod(keys.CLUSTER, cluster.mod_revision))
            writes.append(Put(keys.CLUSTER, cluster.value))
        res = client.txn(compare, writes, [Get(keys.member(name))])
        if res.succeeded:
            return True, role
        if res.found:
            return False, role
    raise InUse(f"Failed {doing}: other hosts kept joining at the same moment; run the join "
                "again")


def claim_promotion(client: EtcdClient, name: str, members: list[dict[str, Any]]) -> bool:
    """Take a free voter seat for client member `name` (its record's role becomes voter),
    if it is the one choose_promotion() picks now; in one transaction compared with the
    cluster record's revision, as seat() does. `members`: etcd's member list, just read
    (a full etcd cluster, the usual case, costs one more read: the cap). Blocking."""
    etcd_names = [str(m.get("name") or m["ID"]) for m in members]
    if not members:
        return False
    cluster = client.get(keys.CLUSTER)
    if cluster is None:
        return False
    cap = cap_of(keys.decode(cluster))
    if len(etcd_names) >= cap:
        return False
    kvs, _ = client.range(keys.MEMBERS)
    records = {keys.host_of(kv.key, keys.MEMBERS): keys.decode(kv) for kv in kvs}
    alive = [keys.host_of(kv.key, keys.ALIVE) for kv in client.range(keys.ALIVE)[0]]
    # A seat is free only if the records agree: a voter admitted but not started yet is
    # not in etcd's member list, yet it has its seat.
    if choose_role(records, cap) != VOTER or \
            choose_promotion(records, etcd_names, alive, cap) != name:
        return False
    log.info("free etcd voter seat: etcd members %s (asked %s); voter records %s",
             ", ".join(f"{n}{'(learner)' if m.get('isLearner') else ''}"
                       for n, m in zip(etcd_names, members, strict=True)),
             client.pick(), ", ".join(n for n, r in records.items() if role_of(r) == VOTER))
    res = client.txn([Compare.mod(keys.CLUSTER, cluster.mod_revision)],
                     [Put(keys.member(name), keys.encode({**records[name], "etcd": VOTER})),
                      Put(keys.CLUSTER, cluster.value)])
    return res.succeeded


def give_back(client: EtcdClient, name: str) -> None:
    """A promotion that failed: the member's record says client again."""
    kv = client.get(keys.member(name))
    if kv is not None:
        client.put(keys.member(name), keys.encode({**keys.decode(kv), "etcd": CLIENT}))


@dataclass(frozen=True)
class ClientConfig:
    """A client member's etcd settings: its member name and the voters' client URLs."""

    name: str
    endpoints: list[str]

    def save(self, path: Path) -> None:
        settings.save(self, path)

    @classmethod
    def load(cls, path: Path) -> ClientConfig:
        cfg = settings.load(cls, path, "etcd client settings")
        if not cfg.endpoints:
            raise InvalidConfig(f"Failed to load the etcd client settings from {path}: no "
                                "endpoints; leave and join the cluster again")
        return cfg


def voter_urls(client: EtcdClient, members: list[dict[str, Any]] | None = None
               ) -> list[str]:
    """The client URLs of the etcd voters (learners are still catching up: not yet)."""
    return [u for m in (client.members() if members is None else members)
            if not m.get("isLearner") for u in m.get("clientURLs", [])]


class EndpointRefresher:
    """Keeps a client member's endpoints at the current voters (a thread). With
    `promote`, it also takes a free voter seat when this member is the one to: promote()
    starts the etcd member (blocking) and returns True once this host is a voter, which
    ends the refresher."""

    def __init__(self, client: EtcdClient, cfg: ClientConfig, path: Path,
                 every: float = REFRESH_EVERY,
                 promote: Callable[[], bool] | None = None) -> None:
        self.client = client
        self.cfg = cfg
        self.path = path
        self.every = every
        self.promote = promote
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="etcd-endpoints",
                                        daemon=True)

    def start(self) -> EndpointRefresher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def refresh(self) -> list[dict[str, Any]]:
        """Read the voters once and follow them; etcd's member list."""
        members = self.client.members()
        urls = voter_urls(self.client, members)
        if urls and sorted(urls) != sorted(self.client.endpoints):
            log.info("etcd voters now at %s (etcd members: %s)", ", ".join(urls),
                     ", ".join(f"{m.get('name') or m.get('ID')}"
                               f"{' (learner)' if m.get('isLearner') else ''}"
                               for m in members))
            self.client.set_endpoints(urls)
            self.cfg = ClientConfig(self.cfg.name, urls)
            self.cfg.save(self.path)
        return members

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                members = self.refresh()
                if self.promote is not None and claim_promotion(self.client, self.cfg.name,
                                                                members):
                    log.warning("cluster member %s takes a free etcd voter seat",
                                self.cfg.name)
                    if self.promote():
                        return
            except Exception as e:  # no voter answers now: keep the URLs known so far
                log.info("etcd voter list not read, or no promotion: %s", e)
