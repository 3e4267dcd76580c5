"""Three etcd members, each in a network namespace of its own, joined by a switch (a
bridge in a fourth namespace), TLS on: the cluster a test fixture gives. Each member is
driven by an agent process in its namespace (etcd_agent.py) that uses the real cluster
modules, as xeniad will. Addresses exist inside the namespaces only.

Member 0 runs `init`; 1 and 2 get certificates from the CA member 0 made (the part the
cluster verbs' join token will do) and `join` with etcd's member-add. stop() kills every
process left in the namespaces and deletes them.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from tests.integration.multihost import clear_stale_netns
from xenia.cluster.etcd_member import ClusterFiles, MemberConfig
from xenia.cluster.pki import ClusterCA, make_member

REPO = Path(__file__).resolve().parents[2]


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def nft(ns: str, script: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script, text=True,
                   check=True, capture_output=True)


def wait_for(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def report(name: str, value: float) -> None:
    print(f"\nMEASURED {name}: {value:.3f} s")


class AgentError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


class Agent:
    """One member's agent process, talked to over its stdin/stdout."""

    def __init__(self, ns: str, files: ClusterFiles) -> None:
        self.ns, self.files = ns, files
        self.events: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._pending: dict[int, Future[Any]] = {}
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.integration.etcd_agent",
             "--dir", str(files.dir), "--run", str(files.run)],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            stderr=open(files.dir.parent / f"agent-{ns}.err", "a"))  # noqa: SIM115
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            msg = json.loads(line)
            if "event" in msg:
                self.events.append(msg)
                continue
            with self._lock:
                fut = self._pending.pop(msg["id"])
            if "error" in msg:
                fut.set_exception(AgentError(msg["kind"], msg["error"]))
            else:
                fut.set_result(msg["ok"])
        with self._lock:
            for fut in self._pending.values():
                fut.set_exception(AgentError("gone", f"the agent in {self.ns} exited"))
            self._pending.clear()

    def send(self, op: str, **args: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        n = next(self._ids)
        with self._lock:
            self._pending[n] = fut
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"id": n, "op": op, "args": args}) + "\n")
        self.proc.stdin.flush()
        return fut

    def call(self, op: str, timeout: float = 60.0, **args: Any) -> Any:
        return self.send(op, **args).result(timeout)

    def crash(self) -> None:
        """The agent dies as a killed daemon does (its etcd, in its own session, stays)."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


class EtcdNet:
    def __init__(self, n: int = 3) -> None:
        tag = os.getpid() % 50 + 10
        self.tag = f"xet{tag}"
        self.net = f"10.{150 + tag % 40}.{tag}"
        self.n = n
        self.tmp = Path(tempfile.mkdtemp(prefix="xetcd-", dir="/tmp"))
        self.sw = f"{self.tag}sw"
        self.ns = [f"{self.tag}m{i}" for i in range(n)]
        self.names = [f"m{i}" for i in range(n)]
        self.addresses = [f"{self.net}.{i + 1}" for i in range(n)]
        self.urls = [f"https://{a}:2379" for a in self.addresses]
        self.files = [ClusterFiles(self.tmp / f"m{i}" / "cluster", self.tmp / f"m{i}" / "run")
                      for i in range(n)]
        self.agents: list[Agent] = []
        self.token = ""

    def start(self, static: bool = False) -> None:
        """With init and joins, as `xenia cluster init/join` do (~7 s: etcd refuses the
        next member-add until its leader has seen every voter for 5 s); `static`: all
        members at once from one initial cluster (~2 s), for tests of other things."""
        for ns in [self.sw, *self.ns]:
            clear_stale_netns(ns)  # left by an earlier run with the same pid tag
        ip("netns", "add", self.sw)
        ip("-n", self.sw, "link", "add", "sw", "type", "bridge")
        ip("-n", self.sw, "link", "set", "sw", "up")
        for i, ns in enumerate(self.ns):
            self.agents.append(self._host(ns, self.addresses[i], f"p{i}", self.files[i]))
        if static:
            self._start_static()
        else:
            first = self.agents[0].call("init", name=self.names[0],
                                        address=self.addresses[0], cluster="test")
            self.token = first["token"]
            ca = ClusterCA.load(self.files[0].tls.ca.parent)
            for i in range(1, self.n):
                self.issue(i, ca)
                self.join(i, self.urls[:i])
        for i, a in enumerate(self.agents):
            a.call("client", endpoints=self.own_first(i))
        if static:
            wait_for(lambda: self.agents[0].call("timed_put", key="up",
                                                 value="1")["error"] is None,
                     30, "the static cluster to serve")

    def _start_static(self) -> None:
        ca = ClusterCA.create("test")
        self.token = "xenia-test-static"
        initial = ",".join(f"{self.names[i]}=https://{a}:2380"
                           for i, a in enumerate(self.addresses))
        for i in range(self.n):
            make_member(self.files[i].tls.ca.parent, ca, self.names[i], self.addresses[i])
            MemberConfig(name=self.names[i], address=self.addresses[i], token=self.token,
                         initial_cluster=initial, state="new").save(self.files[i].config)
        for f in [a.send("ensure") for a in self.agents]:
            f.result(30)

    def add_clients(self, k: int) -> list[Agent]:
        """k more hosts, each in a namespace of its own on the switch, with a member
        certificate but no etcd member: cluster members that use the 3 voters as clients
        (what a large cluster does past its 3 or 5 etcd voters)."""
        ca = ClusterCA.load(self.files[0].tls.ca.parent)
        added = []
        for j in range(k):
            ns, address = f"{self.tag}c{j}", f"{self.net}.{20 + j}"
            files = ClusterFiles(self.tmp / f"c{j}" / "cluster", self.tmp / f"c{j}" / "run")
            self.ns.append(ns)
            added.append(self._host(ns, address, f"q{j}", files))
            make_member(files.tls.ca.parent, ca, f"c{j}", address)
        for a in added:
            a.call("client", endpoints=self.urls)
        self.agents += added
        return added

    def _host(self, ns: str, address: str, port: str, files: ClusterFiles) -> Agent:
        """Namespace `ns` on the switch (its end there named `port`), and its agent."""
        ip("netns", "add", ns)
        ip("-n", ns, "link", "set", "lo", "up")
        ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port,
           "netns", self.sw)
        ip("-n", self.sw, "link", "set", port, "master", "sw", "up")
        ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        for d in (files.dir, files.run):
            d.mkdir(parents=True, exist_ok=True)
        return Agent(ns, files)

    def own_first(self, i: int) -> list[str]:
        """The endpoints as member i's xeniad orders them: its own member first (on the
        same side of any partition as the host itself)."""
        return [self.urls[i]] + [u for j, u in enumerate(self.urls) if j != i]

    def issue(self, i: int, ca: ClusterCA | None = None) -> None:
        """Member i's certificate from the cluster CA (what the join token exchange does)."""
        ca = ca or ClusterCA.load(self.files[0].tls.ca.parent)
        make_member(self.files[i].tls.ca.parent, ca, self.names[i], self.addresses[i])

    def join(self, i: int, endpoints: list[str]) -> None:
        self.agents[i].call("join", name=self.names[i], address=self.addresses[i],
                            endpoints=endpoints, token=self.token)

    def leader(self) -> int:
        """Index of the member that leads etcd now."""
        for i, a in enumerate(self.agents):
            with contextlib.suppress(AgentError):
                st = a.call("status", url=self.urls[i])
                if st.get("leader") == st["header"]["member_id"]:
                    return i
        raise AssertionError("no etcd member leads")

    def etcd_pid(self, i: int) -> int | None:
        pid: int | None = self.agents[i].call("pid")
        return pid

    def kill_etcd(self, i: int) -> None:
        pid = self.etcd_pid(i)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)

    def cut(self, i: int) -> None:
        """Drop all of member i's traffic on its link (it keeps talking to itself)."""
        nft(self.ns[i], "table inet xcut {\n"
            " chain in { type filter hook input priority -10; iifname \"eth0\" drop; }\n"
            " chain out { type filter hook output priority -10; oifname \"eth0\" drop; }\n"
            "}\n")

    def heal(self, i: int) -> None:
        nft(self.ns[i], "delete table inet xcut\n")

    def stop(self, dump: bool = False) -> None:
        for a in self.agents:
            with contextlib.suppress(Exception):
                a.proc.kill()
        for ns in [*self.ns, self.sw]:
            pids = ip("netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        for ns in [*self.ns, self.sw]:
            deadline = time.monotonic() + 5
            while ip("netns", "pids", ns, check=False).stdout.strip() and \
                    time.monotonic() < deadline:
                time.sleep(0.05)
            ip("netns", "del", ns, check=False)
        if dump:
            for f in self.files:
                print(f"##### {f.log}\n" + (f.log.read_text()[-3000:] if f.log.exists() else ""))
            for err in self.tmp.glob("agent-*.err"):
                print(f"##### {err}\n{err.read_text()[-3000:]}")
        shutil.rmtree(self.tmp, ignore_errors=True)
