"""Issue 11, the cluster's user-facing verbs: three xeniads, each in a network namespace
of its own with the etcd member it starts itself, made into a cluster with `xenia
cluster init/token/join`; the cluster-wide list, a verb on another member's domain,
placement and its refusal, evacuation of three guests, remove and leave. The 20-member
scale check is test_cluster_scale.py.

One module-scoped cluster for every test (they run in file order and build on each
other: the guests created early are the ones evacuated later).
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.etcd_cluster import nft, wait_for
from tests.integration.harness import READY, Image, qemu_pids_with, wait_until
from tests.integration.multihost import Cluster, NetHost, ip, tag

pytestmark = pytest.mark.integration

TAG = str(int(tag()) + 7)
MEM = 96  # MiB a guest: small, so migrations are quick under TCG
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def kill_netns(ns: str) -> None:
    """Everything left in the namespace (the etcd the daemon started outlives it)."""
    for pid in ip("netns", "pids", ns, check=False).stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    deadline = time.monotonic() + 5
    while ip("netns", "pids", ns, check=False).stdout.strip() and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture(scope="module")
def cl(request: pytest.FixtureRequest, tiny_image: Image) -> Iterator[Cluster]:
    c = Cluster(tiny_image, 3, TAG)
    failed_before = request.session.testsfailed
    try:
        c.start()
        yield c
    finally:
        dump = request.session.testsfailed > failed_before
        if dump:
            for h in c.hosts:
                log = h.root / "state" / "cluster" / "etcd.log"
                if log.exists():
                    print(f"##### {log}\n{log.read_text(errors='replace')[-3000:]}")
        for h in c.hosts:
            for d in json.loads(h.xenia("list", "--local", "-l", check=False).stdout or "[]"):
                h.xenia("destroy", d["name"], check=False, timeout=60)
        if dump:
            for h in c.hosts:
                print(f"\n##### host {h.ns}")
                h.dump_logs()
        # Before the namespaces go: the etcd members xeniad started outlive it.
        for h in c.hosts:
            kill_netns(h.ns)
        c.stop()


def status(h: NetHost) -> dict[str, Any]:
    return dict(json.loads(h.xenia("cluster", "status", "--json").stdout))


def status_or_none(h: NetHost) -> dict[str, Any] | None:
    """The status, or None while etcd cannot answer even from the member's own copy."""
    res = h.xenia("cluster", "status", "--json", check=False)
    if res.returncode != 0:
        print(f"cluster status on {h.ns}: {res.stderr.strip()}")
    return dict(json.loads(res.stdout)) if res.returncode == 0 else None


def cluster_list(h: NetHost, *args: str) -> list[dict[str, Any]]:
    """The domains `list -l` shows, without the Domain-0 row it adds as xl does."""
    rows = json.loads(h.xenia("list", "-l", *args).stdout)
    return [r for r in rows if r.get("type") != "host"]


def create(h: NetHost, name: str, *args: str, check: bool = True
           ) -> subprocess.CompletedProcess[str]:
    cfg = h.write_cfg(name, memory=MEM)
    return h.xenia("create", str(cfg), *args, check=check)


def interactive_console(h: NetHost, args: list[str], typed: bytes, expect: bytes,
                        first: bytes = b"Connected to the console", timeout: float = 60.0
                        ) -> tuple[bytes, int]:
    """`xenia ARGS` (an interactive console) on a pseudo-terminal: type `typed` once
    `first` shows, wait for `expect`, then Ctrl-]. The terminal's output and the exit
    status."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI, as a person runs it
        os.execve(sys.executable, [sys.executable, "-m", "xenia.cli", *args], h.env)
    out, sent, detached, status = b"", False, False, None
    deadline = time.monotonic() + timeout
    try:
        while status is None and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                try:
                    out += os.read(fd, 65536)
                except OSError:  # EIO: the child closed the terminal (it exited)
                    pass
            if not sent and first in out:
                os.write(fd, typed)
                sent = True
            if sent and not detached and expect in out:
                os.write(fd, b"\x1d")
                detached = True
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(st)
    finally:
        if status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    assert detached and status is not None, f"the console did not answer: {out!r}"
    return out, status


def test_init_token_join_status(cl: Cluster) -> None:
    h0, h1, h2 = cl.hosts
    h0.xenia("cluster", "init", "--name", "h0", "--cluster", "t")
    for i, h in ((1, h1), (2, h2)):
        token = h0.xenia("cluster", "token").stdout.strip()
        h.xenia("cluster", "join", f"{h0.address}:8443", "--token", token, "--name", f"h{i}")
        # The join token is single use.
        again = h2.xenia("cluster", "join", f"{h0.address}:8443", "--token", token,
                         "--name", "hx", check=False) if i == 1 else None
        if again is not None:
            assert again.returncode != 0 and "not valid" in again.stderr
    st = status(h2)
    assert st["quorum"] and st["cluster"] == "t"
    assert [h["name"] for h in st["hosts"]] == ["h0", "h1", "h2"]
    assert len(st["etcd"]["members"]) == 3
    assert all(m["healthy"] and not m["learner"] for m in st["etcd"]["members"])
    assert st["etcd"]["leader"] in ("h0", "h1", "h2")
    wait_until(lambda: all(h["free_mib"] for h in status(h0)["hosts"]), 10,
               what="every member publishes its facts")
    text = h1.xenia("cluster", "status").stdout
    assert "quorum ok" in text and "*h1" in text and "h2" in text


def test_list_across_the_cluster_and_a_verb_on_a_remote_domain(cl: Cluster) -> None:
    h0, h1, _ = cl.hosts
    res = create(h0, "g1", "--host", "h1")
    assert "placed on cluster member h1" in res.stderr
    assert [d["name"] for d in cluster_list(h1, "--local")] == ["g1"]
    assert "g1" not in {d["name"] for d in cluster_list(h0, "--local")}
    wait_until(lambda: any(d["name"] == "g1" and d["host"] == "h1" for d in cluster_list(h0)),
               10, what="g1 in h0's cluster-wide list")
    text = h0.xenia("list").stdout
    assert "Host" in text.splitlines()[0]
    assert any(line.split()[:2] == ["g1", "h1"] for line in text.splitlines())
    h1.wait_console("g1", READY)
    # A verb from h0 on h1's domain: forwarded, and h1's own list shows its effect.
    h0.xenia("pause", "g1")
    assert cluster_list(h1, "--local")[0]["state"] == "paused"
    h0.xenia("unpause", "g1")
    assert cluster_list(h1, "--local")[0]["state"] == "running"
    # The console's --run from h0, on h1's guest.
    ran = h0.xenia("console", "--run", "echo on-$((40+2))", "g1", "--timeout", "60").stdout
    assert ran.count("on-42") == 1
    # The interactive console from h0, on h1's guest, on a terminal: relayed by h0's
    # xeniad from h1's; Ctrl-] detaches with status 0.
    out, rc = interactive_console(h0, ["console", "g1"], b"echo via-$((6*7))-pty\n",
                                  b"via-42-pty")
    assert rc == 0 and b"Connected to the console" in out, out
    # The detach closed h1's side too: QEMU takes one console client, and it is free.
    assert h1.run("g1", "echo free-$((1+1))").count("free-2") == 1
    # `create -c` placed on another member: its boot from the start, then a shell.
    cfg = h0.write_cfg("gc", memory=MEM, extra="console=ttyS0")  # not quiet: the banner
    out, rc = interactive_console(h0, ["create", "-c", str(cfg), "--host", "h2"],
                                  b"echo c-$((6*7))\n", b"c-42", first=READY.encode())
    assert rc == 0 and b"placed on cluster member h2" in out and b"Linux version" in out, out
    h0.xenia("destroy", "gc")
    assert not cluster_list(cl.hosts[2], "--local")
    info = json.loads(h0.xenia("list", "-l", "g1").stdout)
    assert info[0]["host"] == "h1"
    # A name taken on another member is refused.
    h2 = cl.hosts[2]
    res = create(h2, "g1", check=False)
    assert res.returncode != 0 and "member 'h1' has a domain of that name" in res.stderr
    assert not any(d["name"] == "g1" for d in cluster_list(h2, "--local"))


def test_placement_and_its_refusal(cl: Cluster) -> None:
    h0, h1, h2 = cl.hosts
    # h0 in maintenance; h1 has g1's memory committed: h2 has the most free memory.
    h1.xenia("host", "maintenance", "h0", "on")
    res = create(h0, "g2")
    assert "placed on cluster member h2" in res.stderr
    assert [d["name"] for d in cluster_list(h2, "--local")] == ["g2"]
    res = h0.xenia("create", str(h0.write_cfg("huge", memory=64 * 1024 * 1024)), check=False)
    assert res.returncode != 0
    msg = res.stderr
    assert "Failed to place 'huge': no cluster member can run it" in msg
    assert "h0: it is in maintenance" in msg
    assert "h1: 67108864 MiB needed" in msg and "h2: 67108864 MiB needed" in msg
    res = h0.xenia("create", str(h0.write_cfg("nonet", memory=MEM, vif=["bridge=nosuchbr"])),
                   check=False)
    assert "network nosuchbr not present" in res.stderr
    h2.xenia("host", "maintenance", "h0", "off")
    assert not any(h["maintenance"] for h in status(h0)["hosts"])


def test_evacuate_three_domains(cl: Cluster) -> None:
    h0, h1, h2 = cl.hosts
    create(h1, "g3", "--host", "h2")
    create(h1, "g4", "--host", "h2")
    names = {"g2", "g3", "g4"}
    assert {d["name"] for d in cluster_list(h2, "--local")} == names
    h2.wait_console("g4", READY)
    res = h0.xenia("host", "evacuate", "h2", "--parallel", "3", timeout=300)
    assert res.returncode == 0, res.stderr
    assert cluster_list(h2, "--local") == []

    def moved() -> dict[str, str]:
        return {d["name"]: d["host"] for d in cluster_list(h0) if d["name"] in names}

    # The members publish their new domains within a round trip of the migration's end.
    wait_until(lambda: set(moved()) == names and "h2" not in moved().values(), 10,
               what="the evacuated domains in the cluster-wide list")
    for name, where in moved().items():
        assert f"{name}: migrated to {where}" in res.stdout
        host = cl.hosts[int(where[1])]
        assert host.xenia("console", "--run", "echo alive-$((20+22))", name,
                          "--timeout", "60").stdout.count("alive-42") == 1
    assert next(h for h in status(h1)["hosts"] if h["name"] == "h2")["maintenance"]
    # No placement on h2 now.
    res = h0.xenia("create", str(h0.write_cfg("g5", memory=MEM)), "--host", "h2", check=False)
    assert "on host 'h2': it is in maintenance" in res.stderr


def etcd_pid(h: NetHost) -> int:
    from xenia.cluster.etcd_member import ClusterFiles
    from xenia.paths import Paths

    return int(ClusterFiles.of(Paths.from_env(str(h.root))).pidfile.read_text().split()[0])


# Every etcd peer packet of a host dropped, both ways: a killed etcd that its xeniad
# restarts stays out of the cluster. Its client port stays open to its own xeniad.
PEERS_CUT = ("table inet xq {\n chain i { type filter hook input priority -10;"
             " tcp dport 2380 drop; tcp sport 2380 drop; }\n"
             " chain o { type filter hook output priority -10;"
             " tcp dport 2380 drop; tcp sport 2380 drop; }\n}\n")
TICKS = re.compile(r"tick-(\d+)")


def test_quorum_loss_keeps_ha_guests_running(cl: Cluster) -> None:
    """Two of three etcd members killed (and kept out): nobody can fail anything over, so
    g1's host holds its HA guest past the fencing deadline instead of killing it; with
    etcd back the cluster goes on and the guest was never restarted."""
    h0, h1, h2 = cl.hosts
    h1.xenia("ha", "g1", "on")  # no disks: allowed
    uuid = h1.domain("g1")["uuid"]
    pids = qemu_pids_with(uuid)
    assert len(pids) == 1
    h1.run("g1", "(n=0; while :; do n=$((n+1)); echo tick-$n; usleep 100000; done)"
           " >/dev/ttyS0 2>&1 & echo $! >/tmp/ticker")

    def ticks() -> int:
        return max((int(n) for n in TICKS.findall(h1.console_log("g1"))), default=0)

    wait_until(lambda: ticks() >= 3, 20, what="the guest's ticks")
    for h in (h0, h2):
        nft(h.ns, PEERS_CUT)
        os.kill(etcd_pid(h), signal.SIGKILL)
    t_kill = time.monotonic()
    try:
        st = wait_for(lambda: (s := status_or_none(h1)) and s.get("hold") and s, 20,
                      "h1 to hold")
        assert not st["quorum"] and st["failover"] == "quorum lost, failover suspended"
        text = h1.xenia("cluster", "status").stdout
        assert "QUORUM LOST" in text and "quorum lost, failover suspended" in text
        # Past the fencing deadline (the lease's TTL after the last renewal, at most 5 s
        # after the kill) and 2 s more: no fence, same QEMU, the guest still ticking.
        wait_until(lambda: time.monotonic() - t_kill > 7, 10, what="the deadline to pass")
        seen = ticks()
        wait_until(lambda: ticks() >= seen + 5, 10, what="ticks past the deadline")
        ha = json.loads(h1.xenia("ha", "status").stdout)
        assert ha["fences"] == [] and ha["lease_state"] == "held"
        assert qemu_pids_with(uuid) == pids
        assert not any(d["name"] == "g1" for h in (h0, h2) for d in cluster_list(h, "--local"))
    finally:
        for h in (h0, h2):
            nft(h.ns, "delete table inet xq\n")
    try:
        # etcd back (the killed members were restarted by their xeniads): a new etcd
        # leader gives every lease a fresh TTL, renewals succeed, nothing fails over.
        wait_for(lambda: (s := status_or_none(h1)) and s["quorum"] and not s.get("hold"),
                 30, "quorum back")
        ha = json.loads(h1.xenia("ha", "status").stdout)
        assert ha["lease_state"] == "live" and ha["fences"] == []
        assert qemu_pids_with(uuid) == pids
        assert cluster_list(h1, "--local")[0]["state"] == "running"
        seen = ticks()
        wait_until(lambda: ticks() >= seen + 3, 10, what="ticks after the quorum came back")
        h1.run("g1", "kill $(cat /tmp/ticker)")
    finally:
        # The later tests need g1 plain again (leave refuses a host with HA domains).
        wait_until(lambda: h1.xenia("ha", "g1", "off", check=False).returncode == 0, 30,
                   what="g1's HA off")


def test_remove_a_dead_member_and_leave(cl: Cluster) -> None:
    h0, h1, h2 = cl.hosts
    # A live member is not removed.
    res = h0.xenia("cluster", "remove", "h2", check=False)
    assert res.returncode != 0 and "run `xenia cluster leave` on it" in res.stderr
    # h2 dies: its xeniad and its etcd; removed once its lease ran out.
    h2.kill_daemon()
    kill_netns(h2.ns)
    wait_until(lambda: not next(h for h in status(h0)["hosts"] if h["name"] == "h2")["alive"],
               15, what="h2's lease to run out")
    h0.xenia("cluster", "remove", "h2")
    st = status(h1)
    assert [h["name"] for h in st["hosts"]] == ["h0", "h1"] and st["quorum"]
    assert len(st["etcd"]["members"]) == 2
    # h1 leaves as etcd's leader; its domains stay on it, outside the cluster. It hands
    # the leadership over first, so h0 is not left leaderless (without quorum) meanwhile.
    make_leader(h1, "h1")
    local = {d["name"] for d in cluster_list(h1, "--local")}
    h1.xenia("cluster", "leave")
    assert not json.loads(h1.xenia("cluster", "status", "--json").stdout)["member"]
    assert {d["name"] for d in cluster_list(h1)} == local
    st = status(h0)
    assert [h["name"] for h in st["hosts"]] == ["h0"] and st["quorum"]
    assert not any(r["host"] == "h1" for r in cluster_list(h0))


def make_leader(h: NetHost, name: str) -> None:
    """Move etcd's leadership to h's member (`name`) (asked of the leader, as etcd requires)."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from xenia.cluster.client import EtcdClient\n"
        "from xenia.cluster.membership import member_id\n"
        "from xenia.cluster.pki import MemberTLS\n"
        "c = EtcdClient([sys.argv[2]], MemberTLS.under(Path(sys.argv[1])))\n"
        "me = member_id(c, sys.argv[3])\n"
        "lead = int(c.status(sys.argv[2])['leader'])\n"
        "if lead != me:\n"
        "    url = next(m['clientURLs'][0] for m in c.members() if int(m['ID']) == lead)\n"
        "    c.move_leader(url, me)\n"
        "assert int(c.status(sys.argv[2])['leader']) == me\n"
    )
    subprocess.run(["ip", "netns", "exec", h.ns, sys.executable, "-c", code,
                    str(h.root / "state" / "cluster" / "tls"), f"https://{h.address}:2379",
                    name], check=True, cwd=REPO, timeout=60)
