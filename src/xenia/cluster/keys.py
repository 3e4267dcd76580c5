"""The cluster's key layout in etcd, in one place, and the ownership transaction.

Every key is under ROOT (the layout's version is in it, so a later layout can live beside
this one during an upgrade). Values are JSON.

    /xenia/v1/cluster                   {"name", "created"}: written once, at `cluster init`
    /xenia/v1/members/<host>            the member record: {"address", "api", "etcd_id",
                                        "fingerprint", ...}; no lease: a member stays a member
                                        until it leaves or is removed, dead or alive
    /xenia/v1/alive/<host>              {"lease", "since"}, attached to the host's lease: it
                                        exists exactly while the lease lives; its deletion
                                        (watched) is "the host is dead"
    /xenia/v1/leader                    {"host", "lease"}, attached to the leader's member
                                        lease; its create_revision is the leadership's term
    /xenia/v1/maintenance/<host>        {"since", "by"}: no placements on the host
    /xenia/v1/fenced/<host>             {"at", "reason"}: written by the host after it fenced
                                        itself, removed when it rejoins cleanly
    /xenia/v1/domains/<uuid>/owner      {"host", "nonce", "by"}: who may run the domain;
                                        changed ONLY by claim()/release() (revision-checked)
    /xenia/v1/domains/<uuid>/config     the domain's configuration (the HA controller's)
    /xenia/v1/hosts/<host>              the host's facts for placement and `cluster status`
                                        (free memory, accelerator, networks, pools), put by
                                        the host itself every few seconds
    /xenia/v1/view/<host>/<uuid>        one row of the cluster-wide `xenia list` (name, uuid,
                                        state, memory, vcpus, host), put by the owning host

Watches: the HA leader watches alive/ (one watch for all hosts); every member watches
domains/ to keep its cluster-wide list. That is two watches per member, whatever the number
of domains.

The ownership rule: a domain's owner key changes only through a transaction that compares
its mod_revision with the one the writer read (create_revision 0 for a new domain), and,
for the HA leader, the leader key's create_revision with the one of its own election: a
stale read, a second writer or a deposed leader fails the comparison. A host starts a
domain's QEMU only after reading the owner key (linearizably) with its own name in it.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from xenia.cluster.kv import KV, Compare, Delete, Get, Put
from xenia.errors import InvalidConfig

if TYPE_CHECKING:
    # Only for annotations: xeniad imports the key layout on every host, and the client
    # (requests, etcd3gw) only on a cluster member.
    from xenia.cluster.client import EtcdClient

ROOT = "/xenia/v1/"
CLUSTER = ROOT + "cluster"
LEADER = ROOT + "leader"
MEMBERS = ROOT + "members/"
ALIVE = ROOT + "alive/"
MAINTENANCE = ROOT + "maintenance/"
FENCED = ROOT + "fenced/"
DOMAINS = ROOT + "domains/"
HOSTS = ROOT + "hosts/"
VIEW = ROOT + "view/"

_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def check_host(name: str) -> str:
    if not _HOST.fullmatch(name):
        raise InvalidConfig(f"Failed to use '{name}' as a cluster host name: use letters, "
                            "digits, '.', '_' and '-', up to 63, starting with a letter or digit")
    return name


def check_uuid(uuid: str) -> str:
    if not _UUID.fullmatch(uuid):
        raise InvalidConfig(f"Failed to use '{uuid}' as a domain UUID: expected the "
                            "lower-case 8-4-4-4-12 hex form")
    return uuid


def member(host: str) -> str:
    return MEMBERS + check_host(host)


def alive(host: str) -> str:
    return ALIVE + check_host(host)


def maintenance(host: str) -> str:
    return MAINTENANCE + check_host(host)


def fenced(host: str) -> str:
    return FENCED + check_host(host)


def host_facts(host: str) -> str:
    return HOSTS + check_host(host)


def view_of(host: str) -> str:
    """The prefix of one host's rows of the cluster-wide domain list."""
    return VIEW + check_host(host) + "/"


def view(host: str, uuid: str) -> str:
    return view_of(host) + check_uuid(uuid)


def owner(uuid: str) -> str:
    return DOMAINS + check_uuid(uuid) + "/owner"


def domain_config(uuid: str) -> str:
    return DOMAINS + check_uuid(uuid) + "/config"


def host_of(key: str, prefix: str) -> str:
    """The host part of members/<host>, alive/<host>, ..."""
    return key[len(prefix):]


def encode(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


def decode(kv: KV) -> dict[str, Any]:
    try:
        value = json.loads(kv.value)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class Ownership:
    uuid: str
    host: str
    mod_revision: int  # what the next claim() must compare against


def owner_of(client: EtcdClient, uuid: str) -> Ownership | None:
    """The domain's owner now (a linearizable read), or None if it has none."""
    kv = client.get(owner(uuid))
    return _ownership(uuid, kv) if kv else None


def _ownership(uuid: str, kv: KV) -> Ownership:
    return Ownership(uuid, str(decode(kv).get("host", "")), kv.mod_revision)


def claim(client: EtcdClient, uuid: str, host: str, expected: Ownership | None,
          by: str = "", leader_guard: Compare | None = None,
          extra: dict[str, Any] | None = None) -> tuple[bool, Ownership | None]:
    """Make `host` the owner of domain `uuid` if the owner key is still as read
    (`expected`; None: the domain has no owner yet) and, with `leader_guard`, the caller
    still leads. Returns (won, the owner now). `extra` goes into the value beside host,
    nonce and by (the HA controller's restart count: "restarts", "gave_up", "from").

    The value carries a nonce: if the answer of a transaction that was applied got lost and
    the client sent it again to another member, the second try fails its comparison (the
    first one changed the revision), and the nonce read back shows the claim did win.
    """
    key = owner(uuid)
    nonce = secrets.token_hex(8)
    compare = [Compare.mod(key, expected.mod_revision) if expected else Compare.absent(key)]
    if leader_guard is not None:
        compare.append(leader_guard)
    value = encode({**(extra or {}), "host": check_host(host), "nonce": nonce,
                    "by": by or host})
    res = client.txn(compare, [Put(key, value)], [Get(key)])
    if res.succeeded:
        return True, Ownership(uuid, host, res.revision)
    now = res.found[0] if res.found else None
    if now is not None and decode(now).get("nonce") == nonce:
        return True, _ownership(uuid, now)
    return False, _ownership(uuid, now) if now else None


def release(client: EtcdClient, uuid: str, expected: Ownership,
            leader_guard: Compare | None = None) -> bool:
    """Remove the owner key (the domain was destroyed) if it is still as read."""
    key = owner(uuid)
    compare = [Compare.mod(key, expected.mod_revision)]
    if leader_guard is not None:
        compare.append(leader_guard)
    return client.txn(compare, [Delete(key)]).succeeded
