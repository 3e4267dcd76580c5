"""Three Xenia cluster members, each in a network namespace: an etcd member (made with
the real init/join through etcd_cluster.py's agents, which then exit: etcd runs on in its
own session) and a xeniad that adopts it and runs the member agent (lease, fencing,
leader, HA). A directory every namespace sees is each host's pool `shared`, marked shared.

The cluster verbs (`xenia cluster init/join`) are not used here: this tests the foundation
under them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.integration.etcd_cluster import EtcdNet
from tests.integration.harness import Image, qemu_pids_with
from tests.integration.multihost import NetHost, stop_hosts
from xenia.cluster.etcd_member import ClusterFiles
from xenia.paths import Paths


class HACluster:
    def __init__(self, image: Image, n: int = 3) -> None:
        self.etcd = EtcdNet(n)
        self.shared = Path(tempfile.mkdtemp(prefix="xha-shared-", dir="/tmp"))
        self.hosts = [NetHost(image, self.etcd.ns[i], self.etcd.addresses[i],
                              allow=(self.shared,)) for i in range(n)]
        # etcd's files where each host's xeniad looks for them (ClusterFiles.of).
        self.etcd.files = [ClusterFiles.of(Paths.from_env(str(h.root))) for h in self.hosts]

    def start(self) -> None:
        self.etcd.start()
        for a in self.etcd.agents:
            a.crash()  # the agent goes; its etcd member stays, for xeniad to adopt
        for h in self.hosts:
            h.start_daemon()
            h.xenia("pool", "create", "shared", "--path", str(self.shared), "--shared")
        for i in range(len(self.hosts)):
            self.wait_status(i, lambda s: s.get("lease_state") == "live", 30, "lease")

    def status(self, i: int) -> dict[str, Any]:
        res = self.hosts[i].xenia("ha", "status", check=False, timeout=20)
        return json.loads(res.stdout) if res.returncode == 0 else {}

    def wait_status(self, i: int, cond: Any, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            st = self.status(i)
            if st and cond(st):
                return st
            if time.monotonic() > deadline:
                raise AssertionError(f"host {i}: timed out waiting for {what}: {st}")
            time.sleep(0.1)

    def leader(self, among: list[int]) -> int:
        for i in among:
            if self.status(i).get("leading"):
                return i
        raise AssertionError("no member leads")

    def running_on(self, name: str, among: list[int]) -> list[int]:
        """The hosts (of `among`) whose xeniad lists domain `name` as running."""
        out = []
        for i in among:
            with contextlib.suppress(AssertionError):
                if self.hosts[i].domain(name)["state"] == "running":
                    out.append(i)
        return out

    def kill_host(self, i: int) -> None:
        """Host death: its xeniad, its etcd and its QEMUs, all SIGKILL at once."""
        h = self.hosts[i]
        pids = [*qemu_pids_with(str(h.root))]
        etcd = self.etcd_pid(i)
        if etcd:
            pids.append(etcd)
        assert h.daemon is not None
        pids.append(h.daemon.pid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        h.daemon.wait(10)
        h.daemon = None

    def etcd_pid(self, i: int) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(self.etcd.files[i].pidfile.read_text().split()[0])
        return None

    def stop(self, dump: bool = False) -> None:
        stop_hosts(self.hosts, dump)
        self.etcd.stop(dump=dump)
        shutil.rmtree(self.shared, ignore_errors=True)
