"""HA without etcd: the xl.cfg keys, shared pools, which domains may be HA, the leader's
failover plan, the fence's kill, and a host outside any cluster refusing ha = 1.
(tests/integration/test_ha.py runs failover with real etcd, xeniads and guests.)"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from xenia.cluster import keys
from xenia.cluster.agent import kill_all
from xenia.cluster.ha import HADomain, check_ha, ha_domains, plan
from xenia.cluster.kv import KV
from xenia.config.build import build_config
from xenia.config.model import DiskSpec, DomainConfig
from xenia.config.xlcfg import parse_config
from xenia.errors import InvalidConfig, NotSupported
from xenia.host.manager import DomainManager
from xenia.paths import Paths
from xenia.storage.manager import StorageManager
from xenia.store.base import DomainRecord
from xenia.store.sqlite import SqliteStore
from xenia.store.state import CREATING

U1 = "11111111-1111-1111-1111-111111111111"
U2 = "22222222-2222-2222-2222-222222222222"
U3 = "33333333-3333-3333-3333-333333333333"


def cfg_of(text: str) -> DomainConfig:
    return build_config(parse_config(text, "g.cfg"), "g.cfg")


def test_ha_keys_parse_with_defaults_and_bounds() -> None:
    plain = cfg_of('name = "g"\n')
    assert (plain.ha, plain.ha_priority, plain.ha_max_restarts) == (False, 0, 3)
    ha = cfg_of('name = "g"\nha = 1\nha_priority = 10\nha_max_restarts = 0\n')
    assert (ha.ha, ha.ha_priority, ha.ha_max_restarts) == (True, 10, 0)
    assert DomainConfig.from_dict(ha.to_dict()).ha_priority == 10
    with pytest.raises(InvalidConfig, match="ha_max_restarts"):
        cfg_of('name = "g"\nha_max_restarts = 5000\n')
    with pytest.raises(InvalidConfig, match="ha"):
        cfg_of('name = "g"\nha = "yes"\n')


@pytest.fixture
def sm(tmp_path: Path) -> Iterator[StorageManager]:
    paths = Paths(state=tmp_path / "state", run=tmp_path / "run")
    m = StorageManager(paths, SqliteStore(paths.db))
    asyncio.run(m.start())
    yield m
    asyncio.run(m.stop())
    m.store.close()


def test_shared_pool_flag_and_lookup(sm: StorageManager, tmp_path: Path) -> None:
    shared = sm.create_pool("nfs", path=str(tmp_path / "nfs"), shared=True)
    local = sm.create_pool("local", path=str(tmp_path / "local"))
    assert shared.shared and not local.shared
    assert sm.get_pool("nfs").to_dict()["shared"] is True
    sm.create_volume("nfs", "d", "1M")
    sm.create_volume("local", "d", "1M")
    assert sm.shared_pool_of(sm.volume_path("nfs", "d")) == "nfs"
    assert sm.shared_pool_of(sm.volume_path("local", "d")) is None
    # The pool's directory itself, and a sibling sharing its name's prefix, are not in it.
    assert sm.shared_pool_of(tmp_path / "nfs") is None
    assert sm.shared_pool_of(tmp_path / "nfs2" / "x") is None


def test_check_ha_wants_every_disk_on_a_shared_pool(tmp_path: Path) -> None:
    shared = str(tmp_path / "nfs")

    def pool_of(path: str) -> str | None:
        return "nfs" if path.startswith(shared + "/") else None

    cfg = DomainConfig(name="g", ha=True)
    check_ha(cfg, pool_of)  # no disks
    cfg.disks = [DiskSpec(vdev="xvda", target=f"{shared}/a.qcow2"),
                 DiskSpec(vdev="xvdc", target=None, devtype="cdrom", format="empty")]
    check_ha(cfg, pool_of)
    cfg.disks.append(DiskSpec(vdev="xvdb", target=str(tmp_path / "local.img")))
    with pytest.raises(InvalidConfig, match=r"xvdb are not on a shared pool.*--shared"):
        check_ha(cfg, pool_of)
    with pytest.raises(NotSupported, match="container"):
        check_ha(DomainConfig(name="c", type="container", ha=True), pool_of)


def kv(key: str, value: dict[str, Any], rev: int = 5) -> KV:
    return KV(key=key, value=keys.encode(value), create_revision=rev, mod_revision=rev,
              version=1, lease=0)


def domains(*specs: tuple[str, str, dict[str, Any], dict[str, Any]]) -> list[HADomain]:
    owners, configs = [], {}
    for uuid, host, cfg, extra in specs:
        owners.append(kv(keys.owner(uuid), {"host": host, **extra}))
        configs[uuid] = kv(keys.domain_config(uuid), cfg)
    return ha_domains(owners, configs)


def test_plan_restarts_orphans_by_priority_on_the_most_free_memory() -> None:
    ds = domains(
        (U1, "dead", {"name": "low", "ha": True, "memory": 512}, {}),
        (U2, "dead", {"name": "high", "ha": True, "ha_priority": 5, "memory": 512}, {}),
        (U3, "a", {"name": "safe", "ha": True}, {}),  # owner alive: untouched
    )
    alive = {"a": {"free_mib": 1000}, "b": {"free_mib": 800}, "m": {"free_mib": 9000}}
    out = plan(ds, alive, excluded={"m"})  # m is in maintenance
    assert [(d.config.name, host) for d, host in out] == [("high", "a"), ("low", "b")]


def test_plan_gives_up_after_max_restarts_and_skips_given_up() -> None:
    ds = domains(
        (U1, "dead", {"name": "tired", "ha": True, "ha_max_restarts": 2}, {"restarts": 2}),
        (U2, "dead", {"name": "done", "ha": True}, {"gave_up": True}),
        (U3, "dead", {"name": "plain", "ha": False}, {}),  # not HA (any more)
    )
    out = plan(ds, {"a": {"free_mib": 100}}, set())
    assert [(d.config.name, host) for d, host in out] == [("tired", None)]
    assert plan(domains((U1, "dead", {"name": "x", "ha": True}, {})), {}, set())[0][1] is None


def test_fence_kill_waits_until_the_processes_are_gone() -> None:
    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    t = time.monotonic()
    # Reaped by Popen.wait below; kill_all counts our zombies as gone.
    assert kill_all([p.pid for p in procs])
    assert time.monotonic() - t < 1.0
    assert all(p.wait(5) == -9 for p in procs)


def test_host_outside_a_cluster_refuses_ha(tmp_path: Path) -> None:
    paths = Paths(state=tmp_path / "state", run=tmp_path / "run")
    paths.ensure()
    store = SqliteStore(paths.db)
    m = DomainManager(paths, store, [])
    rec = DomainRecord(uuid=U1, name="g", domid=1, config=DomainConfig(name="g", ha=True),
                       state=CREATING)
    with pytest.raises(NotSupported, match="no cluster member"):
        asyncio.run(m.may_start(rec, incoming=False))
    asyncio.run(m.may_start(DomainRecord(U2, "p", 2, DomainConfig(name="p"), CREATING), False))
    store.close()


class OwnedElsewhere:
    """An etcd client whose every owner key names another host (an error path: the gate
    must refuse before writing anything)."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def get(self, key: str, serializable: bool = False) -> KV | None:
        return kv(key, {"host": "other", "nonce": "n"})

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        self.writes.append(key)
        return 1

    def txn(self, *args: Any, **kwargs: Any) -> Any:
        self.writes.append("txn")
        raise AssertionError("no transaction expected")


def agent_with(client: Any, tmp_path: Path) -> Any:
    from xenia.cluster.agent import MemberAgent

    paths = Paths(state=tmp_path / "state", run=tmp_path / "run")
    paths.ensure()
    m = DomainManager(paths, SqliteStore(paths.db), [])
    return MemberAgent(client, "me", m, lambda p: "nfs")


def test_gate_refuses_while_fenced_and_when_another_host_owns(tmp_path: Path) -> None:
    client = OwnedElsewhere()
    agent = agent_with(client, tmp_path)
    rec = DomainRecord(uuid=U1, name="g", domid=1, config=DomainConfig(name="g", ha=True),
                       state=CREATING)
    # Until the first lease is held (and after a fence) no HA domain starts here.
    assert agent.fenced.is_set()
    from xenia.errors import BackendError, InUse

    with pytest.raises(BackendError, match="fenced itself"):
        asyncio.run(agent.may_start(rec, incoming=False))
    agent.fenced.clear()
    with pytest.raises(InUse, match="member other owns it"):
        asyncio.run(agent.may_start(rec, incoming=False))
    # An incoming migration and a non-HA domain pass without asking etcd.
    asyncio.run(agent.may_start(rec, incoming=True))
    asyncio.run(agent.may_start(DomainRecord(U2, "p", 2, DomainConfig(name="p"), CREATING),
                                False))
    # Ending a domain owned elsewhere releases nothing; while fenced nothing is asked.
    asyncio.run(agent.ended(rec))
    agent.fenced.set()
    asyncio.run(agent.ended(rec))
    assert client.writes == []
    agent.manager.store.close()
