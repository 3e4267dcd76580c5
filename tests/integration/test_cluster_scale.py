"""Issue 11's scale check: 20 real xeniads, each in a network namespace of its own, joined
with `xenia cluster init` / `xenia cluster join` (no guests). The cluster keeps 5 etcd
voters (the default cap); the 15 members that join past it are etcd clients. Then the
cluster-wide list from a voter and from a client member (median of 5 <= 100 ms), and the
HA leader's xeniad killed with SIGKILL: another member leads and a third member's `cluster
status` says so.

Tear-down kills everything left in the 20 namespaces (the etcd members outlive their
xeniads) and deletes them, failed or not.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.integration.conftest import failed
from tests.integration.etcd_cluster import report, wait_for
from tests.integration.harness import Image
from tests.integration.multihost import Cluster, NetHost, ip, tag
from tests.integration.test_cluster import kill_netns
from xenia.cli.client import Client
from xenia.errors import XeniaError
from xenia.paths import Paths

pytestmark = pytest.mark.integration

TAG = str(int(tag()) + 21)  # not test_cluster's (+7) nor test_ui_cluster's (+14)
MEMBERS = 20
VOTERS = 5  # the default cap
TTL = 5.0  # the member lease's TTL (lease.LeaseTiming)


@pytest.fixture
def c20(request: pytest.FixtureRequest, tiny_image: Image) -> Iterator[Cluster]:
    c = Cluster(tiny_image, MEMBERS, TAG)
    try:
        t = time.monotonic()
        # All 20 launched at once; the test waits for the voters' first and joins them
        # while the others are still starting (a voter join mostly waits inside etcd).
        c.start(parallel=True, wait=False)
        for h in c.hosts[:VOTERS]:
            h.wait_daemon(60.0)
        report(f"{MEMBERS} namespaces made, xeniads launched, the first {VOTERS} up",
               time.monotonic() - t)
        yield c
    finally:
        dump = failed(request)
        for h in c.hosts:
            if dump:
                print(f"\n##### {h.ns}: {h.daemon_log}\n"
                      f"{h.daemon_log.read_text(errors='replace')[-3000:]}")
                etcd_log = h.root / "state" / "cluster" / "etcd.log"
                if etcd_log.exists():
                    print(f"##### {etcd_log}\n{etcd_log.read_text(errors='replace')[-3000:]}")
            with contextlib.suppress(Exception):
                h.kill_daemon()
            # The etcd member a voter's xeniad started outlives it: everything goes.
            kill_netns(h.ns)
            ip("netns", "del", h.ns, check=False)
            shutil.rmtree(h.root, ignore_errors=True)
        ip("netns", "del", c.sw, check=False)


def api(h: NetHost) -> Client:
    return Client(Paths.from_env(str(h.root)), autostart=False)


def status(h: NetHost) -> dict[str, Any]:
    return dict(api(h).get("/v1/cluster"))


def join(h0: NetHost, h: NetHost, name: str) -> str:
    token = h0.xenia("cluster", "token").stdout.strip()
    return h.xenia("cluster", "join", f"{h0.address}:8443", "--token", token,
                   "--name", name).stdout


def list_median(h: NetHost, rows: int) -> float:
    client = api(h)
    times = []
    for _ in range(5):
        t = time.monotonic()
        ans = client.get("/v1/cluster/domains")
        times.append(time.monotonic() - t)
        assert ans["member"] and len(ans["domains"]) == rows
    return sorted(times)[len(times) // 2]


def test_twenty_members_list_quickly_and_change_leader(c20: Cluster) -> None:
    hosts = list(c20.hosts)
    by_name = {f"h{i}": h for i, h in enumerate(hosts)}
    h0 = hosts[0]
    t = time.monotonic()
    h0.xenia("cluster", "init", "--name", "h0", "--cluster", "s")
    report("cluster init (one etcd voter)", time.monotonic() - t)
    # Voters one at a time: etcd adds a member only when its leader has been connected to
    # every voter for 5 s, so parallel voter joins would only queue inside etcd.
    t = time.monotonic()
    for i in range(1, VOTERS):
        assert "etcd voter" in join(h0, hosts[i], f"h{i}")
    report(f"{VOTERS - 1} voter joins, one after the other", time.monotonic() - t)
    t = time.monotonic()
    for h in hosts[VOTERS:]:
        h.wait_daemon(60.0)
    report(f"then the other {MEMBERS - VOTERS} xeniads up", time.monotonic() - t)
    t = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda i: join(h0, hosts[i], f"h{i}"), range(VOTERS, MEMBERS)))
    assert all("etcd client" in o for o in outs), outs
    report(f"{MEMBERS - VOTERS} client joins, 4 at a time", time.monotonic() - t)

    client_host = hosts[-1]
    st = status(client_host)
    assert st["quorum"] and len(st["hosts"]) == MEMBERS
    roles = {h["name"]: h["etcd"] for h in st["hosts"]}
    assert sorted(n for n, r in roles.items() if r == "voter") == \
        [f"h{i}" for i in range(VOTERS)], roles
    assert sum(r == "client" for r in roles.values()) == MEMBERS - VOTERS
    assert st["etcd_voters"] == {"have": VOTERS, "want": VOTERS}
    assert len(st["etcd"]["members"]) == VOTERS
    # A client member runs no etcd: nothing listens on its client port.
    assert not (client_host.root / "state" / "cluster" / "etcd.json").exists()
    text = client_host.xenia("cluster", "status").stdout
    assert f"{VOTERS} of {VOTERS} etcd voters" in text and "*h19" in text

    # Every member publishes itself (its facts); the list is every member's rows.
    wait_for(lambda: all(h["facts_age"] is not None and h["alive"]
                         for h in status(h0)["hosts"]), 30, "every member alive and seen",
             every=0.5)
    rows = len(api(h0).get("/v1/cluster/domains")["domains"])
    voter_ms = list_median(h0, rows)
    client_ms = list_median(client_host, rows)
    report("cluster-wide list, median of 5, from a voter (h0)", voter_ms)
    report("cluster-wide list, median of 5, from a client member (h19)", client_ms)
    assert voter_ms <= 0.100 and client_ms <= 0.100, (voter_ms, client_ms)

    # A voter leaves: the alive client member that joined first takes the free seat by
    # itself (it starts its etcd member), and the other clients follow the voter list.
    leaver = hosts[VOTERS - 1]
    t = time.monotonic()
    leaver.xenia("cluster", "leave")
    report("a voter leaves (etcd member removed)", time.monotonic() - t)
    clients = {f"h{i}" for i in range(VOTERS, MEMBERS)}

    def promoted() -> str | None:
        try:
            st = status(client_host)
        except XeniaError:  # etcd reconfiguring: ask again
            return None
        new = [h["name"] for h in st["hosts"] if h["etcd"] == "voter" and h["name"] in clients]
        return new[0] if st["etcd_voters"]["have"] == VOTERS and len(new) == 1 else None

    name = wait_for(promoted, 20, "a client member promoted to an etcd voter", every=0.25)
    report("voter left -> a client member promoted (etcd voters 5 of 5 again)",
           time.monotonic() - t)
    assert (by_name[name].root / "state" / "cluster" / "etcd.json").exists()
    assert not (by_name[name].root / "state" / "cluster" / "etcd-client.json").exists()
    saved = client_host.root / "state" / "cluster" / "etcd-client.json"
    wait_for(lambda: f"https://{leaver.address}:2379" not in saved.read_text()
             and f"https://{by_name[name].address}:2379" in saved.read_text(), 15,
             "a client member to follow the voter list", every=0.25)
    hosts.remove(leaver)  # not a member any more: not a candidate below

    # The HA leader's xeniad dies (SIGKILL): its lease runs out (TTL), another member
    # takes the leader key, and a third member's status shows it.
    old = status(client_host)["leader"]
    assert old is not None
    killed = by_name[old]
    third = next(h for h in reversed(hosts) if h is not killed)
    killed.kill_daemon()
    t_kill = time.monotonic()

    def gone() -> bool:
        return old not in {h["name"] for h in status(third)["hosts"] if h["alive"]}

    wait_for(gone, TTL + 5, f"{old}'s lease to run out", every=0.1)
    t_expired = time.monotonic()
    new = wait_for(lambda: (ld := status(third)["leader"]) not in (None, old) and ld,
                   10, "a new HA leader", every=0.1)
    t_new = time.monotonic()
    leader_host = by_name[new]
    ha = json.loads(leader_host.xenia("ha", "status").stdout)
    assert ha["leading"] and ha["leader"] == new
    witness = next(h for h in hosts if h not in (killed, leader_host))
    assert status(witness)["leader"] == new
    report("leader change: kill -9 to a new leader in a third member's status",
           t_new - t_kill)
    report("leader change: lease expiry seen to a new leader in that status",
           t_new - t_expired)
    # The lease's TTL bounds how soon a dead member is known dead; what follows is the
    # election itself.
    assert t_new - t_expired <= 5.0
    assert t_new - t_kill <= TTL + 5.0

    # etcd's own leader dies (its process, kill -9; its xeniad's supervisor restarts it
    # later): the other voters elect one and a client member reads and writes again.
    eleader = status(witness)["etcd"]["leader"]
    assert eleader is not None
    victim = by_name[eleader]
    os.kill(int((victim.root / "run" / "etcd.pid").read_text()), signal.SIGKILL)
    t_kill = time.monotonic()

    def settled() -> bool:
        with contextlib.suppress(XeniaError):
            st = status(client_host)
            return bool(st["quorum"]) and st["etcd"]["leader"] not in (None, eleader)
        return False

    wait_for(settled, 15, "a new etcd leader", every=0.1)
    took = time.monotonic() - t_kill
    report("etcd leader change: kill -9 to quorum and a new leader in a client's status", took)
    assert took <= 5.0
