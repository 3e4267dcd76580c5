"""The scale check of the cluster foundation: 20 members (3 etcd voters, 17 hosts that use
them as clients, each in a network namespace of its own, each with its member lease and
its campaign for leader): one leader, and when it dies a new one within 5 s of its lease's
expiry. No guests: agents drive the real modules (etcd_agent.py), as xeniad does."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.integration.conftest import failed
from tests.integration.etcd_cluster import Agent, EtcdNet, report, wait_for
from tests.integration.test_etcd import deleted_at
from xenia.cluster import keys

pytestmark = pytest.mark.integration
MEMBERS = 20


@pytest.fixture
def etcd20(request: pytest.FixtureRequest) -> Iterator[EtcdNet]:
    net = EtcdNet(3)
    try:
        net.start()
        net.add_clients(MEMBERS - 3)
        yield net
    finally:
        net.stop(dump=failed(request))


def leaders(agents: list[Agent]) -> list[int]:
    """Who says it leads now (the last change each reported)."""
    out = []
    for i, a in enumerate(agents):
        changes = a.call("leading")
        if changes and changes[-1][1]:
            out.append(i)
    return out


def test_twenty_members_elect_one_leader_and_replace_it_fast(etcd20: EtcdNet) -> None:
    agents = etcd20.agents
    assert len(agents) == MEMBERS
    t = time.monotonic()
    for i, a in enumerate(agents):
        a.call("keeper", endpoints=etcd20.urls, host=f"h{i}")
    for i, a in enumerate(agents):
        a.call("campaign", host=f"h{i}")
    report("20 members: leases granted and campaigns started", time.monotonic() - t)
    first = wait_for(lambda: leaders(agents), 10, "a leader")
    assert len(first) == 1
    old = first[0]
    watcher = agents[(old + 1) % MEMBERS]
    watcher.call("watch", prefix=keys.LEADER)
    # The leader dies: its process (and so its renewals) ends at once.
    t_kill = time.monotonic()
    agents[old].crash()
    rest = [a for i, a in enumerate(agents) if i != old]
    gone = wait_for(lambda: deleted_at(watcher, keys.LEADER, keys.LEADER), 15,
                    "the dead leader's key to expire")
    new = wait_for(lambda: leaders(rest), 5, "a new leader")
    assert len(new) == 1
    took = rest[new[0]].call("leading")[-1][0]
    report("20 members: leader killed -> its key expired (the lease's TTL)", gone - t_kill)
    report("20 members: leader killed -> new leader settled", took - t_kill)
    # From the expiry on: the campaigns see the deletion as soon as any watcher does, so
    # this is a few ms (it can read below 0: the watcher here saw it a bit later).
    assert took - gone < 5.0
    # Everyone else agrees: exactly one leads, and the key names it.
    assert leaders(rest) == new
