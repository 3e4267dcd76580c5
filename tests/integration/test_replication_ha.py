"""Issue 13 section 2: HA without shared storage, through a replicated volume.

Three cluster members (ha_cluster.py). An HA guest on m0 runs on a volume replicated to
m1 and writes data it syncs; m0 dies (xeniad, etcd, QEMU killed -9); the leader restarts
the guest on m1, the only member with a copy (not on m2, though m2 is alive), and the
new guest reads the same checksum from its disk.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.conftest import failed
from tests.integration.etcd_cluster import wait_for
from tests.integration.ha_cluster import HACluster
from tests.integration.harness import READY, Image
from tests.integration.multihost import PORT
from tests.integration.test_replication import WRITE, replica, wait_state

pytestmark = pytest.mark.integration
NAME = "rha"
READ = "dd if=/dev/vda bs=64k count=32 2>/dev/null | md5sum | cut -d' ' -f1"


@pytest.fixture(scope="module")
def ha(request: pytest.FixtureRequest, tiny_image: Image) -> Iterator[HACluster]:
    c = HACluster(tiny_image)
    failures = request.session.testsfailed
    try:
        c.start()
        a, b = c.hosts[0], c.hosts[1]
        a.xenia("host", "add", "m1", f"{b.address}:{PORT}", "--token", b.token("from-m0"),
                "--fingerprint", b.fingerprint())
        yield c
    finally:
        c.stop(dump=failed(request) or request.session.testsfailed > failures)


def test_ha_restarts_on_the_replica_host_with_the_data(ha: HACluster) -> None:
    a, b = ha.hosts[0], ha.hosts[1]
    a.xenia("volume", "create", "-f", "raw", "--replica", "m1", "hav", "16M")
    path = a.xenia("volume", "path", "hav").stdout.strip()
    a.xenia("create", str(a.write_cfg(NAME, ha=1, memory=128,
                                      disk=[f"format=raw,vdev=xvda,target={path}"])))
    a.wait_console(NAME, READY)
    wait_state(a, "hav", "in-sync")
    written = a.run(NAME, WRITE).strip()
    assert len(written) == 32

    ha.kill_host(0)
    where = wait_for(lambda: ha.running_on(NAME, [1, 2]), 60, "the HA guest elsewhere")
    assert where == [1], "restarted where no copy of its disk is"
    b.wait_console(NAME, READY)
    assert b.run(NAME, READ).strip() == written
    # m1's copy is its own volume now, with no replica until a resync.
    r = replica(b, "hav")
    assert (r["role"], r["state"], r["host"]) == ("primary", "degraded", "m0")
