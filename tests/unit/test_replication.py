"""Replicated volumes without hosts: the QSD command line, the mirror's QMP (attach, its
undo, the states read from query-block-jobs), the records a volume shows, the refusal to
touch a served copy, promotion by an HA failover, and the failover plan's only_on.
(tests/integration/test_replication*.py run it with real hosts, QEMUs and guests.)"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.unit import test_cluster_ha
from tests.unit.test_cluster_ha import U1, U2, domains
from xenia.cli.storage import replica_text
from xenia.cluster.ha import plan
from xenia.drivers import qemu_replica
from xenia.drivers.qemu_replica import ReplicaLink
from xenia.errors import BackendError, InUse, InvalidConfig, NotFound
from xenia.host.manager import DomainManager
from xenia.migration.replication import Replication
from xenia.storage.manager import StorageManager
from xenia.storage.replica_records import (
    EXPORT_KIND,
    REPLICA_KIND,
    export_key,
    replica_view,
)
from xenia.storage.replicas import ReplicaExports, qsd_argv


def test_qsd_argv_is_json_and_keeps_odd_names_whole() -> None:
    image = Path("/p/a,b=c.raw")
    argv = qsd_argv("/usr/bin/qemu-storage-daemon", image, "raw", "10.0.0.2", 10809,
                    Path("/run/x/tls"), Path("/run/x/qsd.pid"))
    opts = dict(zip(argv[1::2], argv[2::2], strict=False))
    node = json.loads(opts["--blockdev"])
    assert node["file"]["filename"] == str(image) and node["driver"] == "raw"
    server = json.loads(opts["--nbd-server"])
    assert server == {"addr": {"type": "inet", "host": "10.0.0.2", "port": "10809"},
                      "tls-creds": "tls0"}
    tls = json.loads(opts["--object"])
    assert (tls["qom-type"], tls["endpoint"], tls["dir"]) == ("tls-creds-psk", "server",
                                                              "/run/x/tls")
    assert json.loads(opts["--export"])["writable"] is True


class FakeQmp:
    """Records calls; `fail` names a method that raises; `jobs` is query-block-jobs."""

    def __init__(self, fail: str = "", jobs: list[dict[str, Any]] | None = None) -> None:
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []
        self.fail = fail
        self.jobs = jobs or []

    def __getattr__(self, name: str) -> Any:
        async def call(*args: Any, **kw: Any) -> Any:
            self.calls.append((name, args, kw))
            if name == self.fail:
                raise BackendError(f"Failed {name}: refused")
            if name == "query_block_jobs":
                return self.jobs
            return None
        return call


LINK = ReplicaLink(vdev="xvda", host="10.0.0.2", port=10809, tls_dir=Path("/run/t"),
                   identity="xenia-repl-1")


def test_attach_mirrors_write_blocking_into_the_nbd_node() -> None:
    q = FakeQmp()
    asyncio.run(qemu_replica.attach(q, LINK))  # type: ignore[arg-type]
    names = [c[0] for c in q.calls]
    assert names == ["object_add", "blockdev_add", "blockdev_mirror"]
    node = q.calls[1][1][0]
    assert node["server"] == {"type": "inet", "host": "10.0.0.2", "port": "10809"}
    assert node["tls-creds"] == "repl-tls-xvda"
    _, args, kw = q.calls[2]
    assert args == ("repl-xvda", "drive-xvda", "repl-xvda")
    assert kw == {"sync": "full", "auto_dismiss": False, "copy_mode": "write-blocking",
                  "on_target_error": "report"}


def test_attach_undoes_itself_when_the_mirror_is_refused() -> None:
    q = FakeQmp(fail="blockdev_mirror")
    with pytest.raises(BackendError):
        asyncio.run(qemu_replica.attach(q, LINK))  # type: ignore[arg-type]
    assert [c[0] for c in q.calls][-2:] == ["blockdev_del", "object_del"]


def test_status_reads_syncing_in_sync_and_degraded() -> None:
    q = FakeQmp(jobs=[
        {"device": "repl-xvda", "len": 200, "offset": 100, "ready": False,
         "status": "running"},
        {"device": "repl-xvdb", "len": 200, "offset": 200, "ready": True, "status": "ready"},
        {"device": "repl-xvdc", "len": 200, "offset": 50, "status": "concluded",
         "error": "Input/output error"},
        {"device": "mirror-xvda", "len": 1, "offset": 0},  # a migration's, not ours
    ])
    st = asyncio.run(qemu_replica.status(q))  # type: ignore[arg-type]
    assert st == {
        "xvda": {"state": "syncing", "progress": 50.0, "error": None},
        "xvdb": {"state": "in-sync", "progress": 100.0, "error": None},
        "xvdc": {"state": "degraded", "progress": 25.0, "error": "Input/output error"},
    }


def test_detach_dismisses_a_concluded_job_before_deleting_its_node() -> None:
    q = FakeQmp(jobs=[{"device": "repl-xvda", "status": "concluded"}])
    asyncio.run(qemu_replica.detach(q, "xvda"))  # type: ignore[arg-type]
    names = [c[0] for c in q.calls]
    assert names.index("job_dismiss") < names.index("blockdev_del") < names.index("object_del")


sm = test_cluster_ha.sm  # the storage manager fixture, on a temporary root


def test_a_served_copy_is_shown_and_not_deleted(sm: StorageManager) -> None:
    sm.create_volume("default", "rv", "1M", "raw")
    path = sm.volume_path("default", "rv")
    sm.store.obj_put(EXPORT_KIND, export_key("default", "rv"), {
        "pool": "default", "volume": "rv", "primary": "h0", "port": 10809,
        "path": str(path), "primary_path": "/h0/rv.raw", "key": "secret"})
    v = sm.describe_volume(sm.get_volume("default", "rv"))
    assert v["replica"] == {"role": "replica", "primary": "h0", "port": 10809}
    assert replica_text(v["replica"]) == "copy of h0"
    with pytest.raises(InUse, match="replica copy of a volume of h0"):
        sm.delete_volume("default", "rv")
    assert path.exists()
    # No secret in what the replica host lists.
    exports = ReplicaExports(sm.paths, sm.store, sm).list()
    assert "key" not in exports[0] and exports[0]["serving"] is False


def test_promote_makes_the_copy_a_degraded_primary(sm: StorageManager) -> None:
    sm.create_volume("default", "rv", "1M", "raw")
    path = sm.volume_path("default", "rv")
    sm.store.obj_put(EXPORT_KIND, export_key("default", "rv"), {
        "pool": "default", "volume": "rv", "primary": "h0", "port": 10809,
        "path": str(path), "primary_path": "/h0/rv.raw", "key": "k", "identity": "i"})
    ex = ReplicaExports(sm.paths, sm.store, sm)
    assert ex.promote("/elsewhere/rv.raw", "m0") is None
    assert ex.promote("/h0/rv.raw", "m0") == path
    assert sm.store.obj_get(EXPORT_KIND, export_key("default", "rv")) is None
    rec = sm.store.obj_get(REPLICA_KIND, export_key("default", "rv"))
    assert rec is not None and (rec["host"], rec["state"], rec["port"]) == ("m0", "degraded", 0)
    view = replica_view(sm.store, "default", "rv")
    assert view is not None and view["role"] == "primary" and "resync" in view["error"]
    sm.delete_volume("default", "rv")  # an ordinary volume again


def test_replica_text() -> None:
    assert replica_text(None) == "-"
    assert replica_text({"role": "primary", "host": "h1", "state": "syncing",
                         "progress": 41.6}) == "h1 syncing 42%"
    assert replica_text({"role": "primary", "host": "h1", "state": "in-sync"}) == "h1 in-sync"


def test_plan_restarts_a_replicated_domain_only_where_its_copy_is() -> None:
    ds = domains(
        (U1, "dead", {"name": "rep", "ha": True, "memory": 128}, {"only_on": ["b"]}),
        (U2, "dead", {"name": "nocopy", "ha": True, "memory": 128}, {"only_on": ["c"]}),
    )
    alive = {"a": {"free_mib": 9000}, "b": {"free_mib": 500}}
    out = plan(ds, alive, set())
    # "a" has the most free memory but no copy; "c" (the other's copy) is dead.
    assert sorted((d.config.name, host) for d, host in out) == [("nocopy", None),
                                                                 ("rep", "b")]


def test_bad_replica_requests_leave_everything_as_it_was(sm: StorageManager) -> None:
    r = Replication(DomainManager(sm.paths, sm.store, []), sm)
    with pytest.raises(NotFound, match="not a known peer"):
        asyncio.run(r.create_volume("default", "rv", "1M", "raw", "nosuchhost"))
    assert sm.list_volumes("default") == []
    sm.create_volume("default", "plain", "1M", "raw")
    with pytest.raises(InvalidConfig, match="not replicated"):
        asyncio.run(r.resync("default", "plain"))
    assert r.replica_host_of(str(sm.volume_path("default", "plain"))) is None
    r.forget("default", "plain")  # not replicated: nothing to do
    assert [v.name for v in sm.list_volumes("default")] == ["plain"]
