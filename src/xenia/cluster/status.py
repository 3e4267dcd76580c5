"""cluster_status() and cluster_rows(): what `xenia cluster status` and the cluster-wide
`xenia list` read from etcd. Blocking: call from a thread.

Without quorum the linearizable reads fail fast (the client's `hasleader` metadata); the
status then reads each key from the local member's copy (serializable), marks the answer
"quorum": false and says that failover decisions are stopped.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from xenia.cluster import keys
from xenia.cluster.client import EtcdClient
from xenia.cluster.kv import KV
from xenia.cluster.voters import CLIENT, VOTER, cap_of, role_of
from xenia.errors import XeniaError


def _by_host(kvs: list[KV], prefix: str) -> dict[str, dict[str, Any]]:
    return {keys.host_of(kv.key, prefix): {**keys.decode(kv), "_lease": kv.lease}
            for kv in kvs}


def cluster_rows(client: EtcdClient, serializable: bool = False) -> list[dict[str, Any]]:
    """Every member's published domain rows, sorted by host then name."""
    kvs, _ = client.range(keys.VIEW, serializable=serializable)
    rows = [keys.decode(kv) for kv in kvs]
    return sorted((r for r in rows if r), key=lambda r: (r.get("host", ""), r.get("name", "")))


def _read(client: EtcdClient, serializable: bool) -> dict[str, Any]:
    def rng(prefix: str) -> dict[str, dict[str, Any]]:
        return _by_host(client.range(prefix, serializable=serializable)[0], prefix)

    leader = client.get(keys.LEADER, serializable=serializable)
    return {"members": rng(keys.MEMBERS), "hosts": rng(keys.HOSTS),
            "alive": rng(keys.ALIVE), "maintenance": rng(keys.MAINTENANCE),
            "fenced": rng(keys.FENCED),
            "leader": keys.decode(leader).get("host") if leader else None,
            "cluster": keys.decode(c) if (c := client.get(
                keys.CLUSTER, serializable=serializable)) else {}}


def _etcd_health(client: EtcdClient) -> dict[str, Any]:
    try:
        members = client.members()
    except XeniaError as e:
        return {"members": [], "leader": None, "error": e.message}

    def one(m: dict[str, Any]) -> dict[str, Any]:
        urls = m.get("clientURLs", [])
        row: dict[str, Any] = {"name": m.get("name") or "(not started)",
                               "id": f"{int(m['ID']):x}", "learner": bool(m.get("isLearner")),
                               "url": urls[0] if urls else "", "healthy": False}
        if not urls:
            row["error"] = "not started"
            return row
        try:
            st = client.status(urls[0])
        except XeniaError as e:
            row["error"] = e.message
            return row
        row.update(healthy=int(st.get("leader", 0)) != 0,
                   leader_id=f"{int(st.get('leader', 0)):x}",
                   raft_term=int(st.get("raftTerm", 0)), db_size=int(st.get("dbSize", 0)))
        if not row["healthy"]:
            row["error"] = "no leader"
        return row

    with ThreadPoolExecutor(max_workers=min(8, max(1, len(members)))) as pool:
        rows = list(pool.map(one, members))
    ids = {r["id"]: r["name"] for r in rows}
    leaders = {r.get("leader_id") for r in rows if r["healthy"]}
    leader = next((ids.get(x, x) for x in leaders if x), None)
    return {"members": rows, "leader": leader}


def cluster_status(client: EtcdClient, me: str) -> dict[str, Any]:
    quorum, error = True, None
    try:
        data = _read(client, serializable=False)
    except XeniaError as e:
        # QuorumLost, or a member that still believes in a dead leader and lets the read
        # time out: either way no linearizable answer, so no quorum this member can use.
        quorum, error = False, e.message
        data = _read(client, serializable=True)
    etcd = _etcd_health(client)
    rows = cluster_rows(client, serializable=not quorum)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.get("host", "")] = counts.get(r.get("host", ""), 0) + 1
    etcd_ok = {r["name"]: r["healthy"] for r in etcd["members"]}
    learners = {r["name"] for r in etcd["members"] if r["learner"]}
    hosts = []
    now = time.time()
    for name, rec in sorted(data["members"].items()):
        facts = data["hosts"].get(name, {})
        alive = data["alive"].get(name)
        lease = None
        if alive is not None and alive.get("_lease") and quorum:
            try:
                lease = client.lease_ttl(int(alive["_lease"]))
            except XeniaError:
                lease = None
        hosts.append({
            "name": name, "address": rec.get("address"), "api": rec.get("api"),
            "this": name == me, "alive": alive is not None, "lease_ttl": lease,
            "free_mib": facts.get("free_mib"), "total_mib": facts.get("total_mib"),
            "accel": facts.get("accel"), "domains": counts.get(name, 0),
            "facts_age": round(now - float(facts["updated"]), 1) if facts.get("updated")
            else None,
            "maintenance": name in data["maintenance"], "fenced": name in data["fenced"],
            "fenced_reason": data["fenced"].get(name, {}).get("reason"),
            "etcd_healthy": etcd_ok.get(name),
            # From etcd's member list when it answered, else from the admitted role.
            "etcd": ("learner" if name in learners else VOTER if name in etcd_ok
                     else CLIENT) if etcd["members"] else role_of(rec),
        })
    cap = cap_of(data["cluster"])
    have = sum(1 for r in etcd["members"] if not r["learner"]) if etcd["members"] else \
        sum(1 for h in hosts if h["etcd"] == VOTER)
    return {"member": True, "name": me, "cluster": data["cluster"].get("name"),
            "quorum": quorum, "quorum_error": error,
            "failover": "running" if quorum else "stopped: no etcd quorum",
            "leader": data["leader"], "etcd": etcd, "hosts": hosts,
            "etcd_voters": {"have": have, "want": cap}}
