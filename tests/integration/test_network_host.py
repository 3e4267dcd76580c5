"""Networks on the real host, no guests: bridges, NAT, dnsmasq, taps, rate limits.

Guests are stood in for by network namespaces joined to the bridges with veth pairs (test
scaffolding may use `ip` by argv). All traffic stays on this machine: private subnets
between namespaces and bridges here, picked free of the host's routes. Every bridge,
namespace, veth, nft table and dnsmasq a test makes is removed at the end, also on
failure. Names start with "xt" and carry a random suffix.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from tests.integration.harness import Host, Image
from xenia.config.model import VifSpec
from xenia.config.vifspec import parse_rate
from xenia.errors import InUse, InvalidConfig, NotFound
from xenia.network import netlink as nl
from xenia.network import ratelimit
from xenia.network.manager import NetworkManager
from xenia.network.subnet import Claim, pick_free
from xenia.paths import Paths
from xenia.store.sqlite import SqliteStore

BUSYBOX = "/bin/busybox"
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (bridges, netns, nft)"),
    pytest.mark.skipif(shutil.which("dnsmasq", path="/usr/sbin:/usr/bin:/sbin:/bin") is None
                       or shutil.which("nft", path="/usr/sbin:/usr/bin:/sbin:/bin") is None,
                       reason="needs dnsmasq and nft"),
]


# -- scaffolding -----------------------------------------------------------------------------
def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr}")
    return res


def link_json(name: str) -> dict[str, Any] | None:
    res = sh("ip", "-j", "-d", "addr", "show", "dev", name, check=False)
    if res.returncode != 0:
        return None
    (info,) = json.loads(res.stdout)
    return info  # type: ignore[no-any-return]


def dnsmasq_pids(bridge: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"dnsmasq") and f"--interface={bridge}".encode() in argv:
            pids.append(int(proc.name))
    return pids


def nft_table(name: str) -> bool:
    return sh("nft", "list", "table", "ip", f"xenia-{name}", check=False).returncode == 0


class Scaffold:
    """Namespaces, veths and processes a test makes; cleanup() removes all of them."""

    def __init__(self) -> None:
        self.sfx = secrets.token_hex(2)
        self.netns: list[str] = []
        self.links: list[str] = []
        self.networks: list[str] = []
        self.procs: list[subprocess.Popen[str]] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="xt-net-", dir="/tmp"))

    def name(self, prefix: str) -> str:
        return f"xt{prefix}{self.sfx}"

    def network(self, prefix: str) -> str:
        """A network name the test will create; purged at the end whatever happens."""
        name = self.name(prefix)
        self.networks.append(name)
        return name

    def add_netns(self, ns: str) -> None:
        sh("ip", "netns", "add", ns)
        self.netns.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")

    def veth_to_ns(self, ns: str, host_end: str, ns_end: str) -> None:
        sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        self.links.append(host_end)
        sh("ip", "link", "set", ns_end, "netns", ns)
        sh("ip", "-n", ns, "link", "set", ns_end, "up")
        sh("ip", "link", "set", host_end, "up")

    def in_ns(self, ns: str, *argv: str, check: bool = True, timeout: float = 30
              ) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", ns, *argv, check=check, timeout=timeout)

    def popen_in_ns(self, ns: str, *argv: str) -> subprocess.Popen[str]:
        p = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        return p

    def popen(self, *argv: str) -> subprocess.Popen[str]:
        p = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        self.procs.append(p)
        return p

    def free_subnet(self) -> IPv4Network:
        with IPRoute() as ipr:
            claims = nl.claims(ipr)
        net = pick_free(claims + [Claim(IPv4Network("10.122.0.0/20"), "xenia's first picks")])
        assert net is not None
        return net

    def dhcp(self, ns: str, ifname: str) -> dict[str, str]:
        """A lease for `ifname` in `ns` from busybox udhcpc: ip, subnet mask, router, dns."""
        out = self.tmp / f"lease-{ifname}"
        script = self.tmp / "udhcpc.script"
        script.write_text('#!/bin/sh\n[ "$1" = bound ] && echo "$ip $subnet $router $dns" '
                          f'> {out}\nexit 0\n')
        script.chmod(0o755)
        out.unlink(missing_ok=True)
        res = self.in_ns(ns, BUSYBOX, "udhcpc", "-i", ifname, "-f", "-q", "-n", "-t", "6",
                         "-T", "2", "-s", str(script), check=False, timeout=60)
        assert out.exists(), f"no lease on {ifname}: {res.stdout}{res.stderr}"
        ip, mask, router, dns = (out.read_text().split() + ["", "", "", ""])[:4]
        return {"ip": ip, "mask": mask, "router": router, "dns": dns}

    def cleanup(self, host: Host) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.communicate(timeout=10)
        for name in self.networks:
            # Through xeniad first, so its store forgets the network too.
            host.xenia("network", "delete", name, check=False)
            purge_network(name)
        for link in self.links:
            delete_link(link)
        for ns in self.netns:
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)


def delete_link(name: str) -> None:
    """Delete a device and the rate-limit IFB Xenia may have made for it."""
    try:
        index = int(Path(f"/sys/class/net/{name}/ifindex").read_text())
    except (OSError, ValueError):
        return
    sh("ip", "link", "del", name, check=False)
    sh("ip", "link", "del", ratelimit.ifb_name(index), check=False)


def purge_network(name: str) -> None:
    """Remove what a network `name` may have left: its taps, dnsmasq, nft table, bridge."""
    for pid in dnsmasq_pids(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    sh("nft", "delete", "table", "ip", f"xenia-{name}", check=False)
    if Path(f"/sys/class/net/{name}/brif").is_dir():
        for port in os.listdir(f"/sys/class/net/{name}/brif"):
            if Path(f"/sys/class/net/{port}/tun_flags").exists():
                delete_link(port)
    delete_link(name)


@pytest.fixture(scope="module")
def xhost() -> Iterator[Host]:
    """One xeniad for the module; no guest image (networks need none)."""
    h = Host(Image(Path("/x"), Path("/y")))
    try:
        h.start_daemon()
        yield h
    finally:
        h.cleanup()


@pytest.fixture
def net(request: pytest.FixtureRequest, xhost: Host) -> Iterator[Scaffold]:
    s = Scaffold()
    try:
        yield s
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(f"\n===== xeniad log ({xhost.daemon_log}) =====")
            with contextlib.suppress(OSError):
                print(xhost.daemon_log.read_text(errors="replace")[-8000:])
        if xhost.daemon is None:
            xhost.start_daemon()
        s.cleanup(xhost)


@pytest.fixture
def nm(xhost: Host) -> Iterator[NetworkManager]:
    """A NetworkManager in this process on the daemon's store (for plug/unplug)."""
    paths = Paths(state=xhost.root / "state", run=xhost.root / "run")
    store = SqliteStore(paths.db)
    m = NetworkManager(paths, store)
    try:
        yield m
    finally:
        asyncio.run(m.stop())
        store.close()


def networks(h: Host, *args: str) -> list[dict[str, Any]]:
    return json.loads(h.xenia("network", "list", "--json", *args).stdout)  # type: ignore


def network(h: Host, name: str) -> dict[str, Any]:
    return json.loads(h.xenia("network", "show", name).stdout)  # type: ignore


def fails(h: Host, *args: str) -> str:
    res = h.xenia(*args, check=False)
    assert res.returncode != 0, f"xenia {' '.join(args)} succeeded: {res.stdout}"
    assert "Traceback" not in res.stderr
    return res.stderr.strip()


def join_bridge(s: Scaffold, bridge: str, tag: str) -> tuple[str, str]:
    """A namespace standing in for a guest, its veth enslaved to `bridge`: (ns, ifname)."""
    ns = s.name(tag)
    s.add_netns(ns)
    s.veth_to_ns(ns, f"{ns}h", f"{ns}g")
    sh("ip", "link", "set", f"{ns}h", "master", bridge)
    return ns, f"{ns}g"


# -- NAT networks ------------------------------------------------------------------------------
def test_nat_network_dhcp_and_masquerade(xhost: Host, net: Scaffold) -> None:
    name = net.network("n")
    out = xhost.xenia("network", "create", name, "--nat").stdout
    assert f"Created NAT network {name}" in out
    n = network(xhost, name)
    assert (n["type"], n["bridge"], n["dhcp"], n["state"]) == ("nat", name, True, "active")
    subnet = IPv4Network(n["subnet"])
    gw = IPv4Interface(n["address"])
    assert gw.ip == subnet.network_address + 1 and gw.network == subnet

    # The bridge, with the subnet's first address.
    info = link_json(name)
    assert info is not None and info["linkinfo"]["info_kind"] == "bridge"
    assert {(a["local"], a["prefixlen"]) for a in info["addr_info"] if a["family"] == "inet"} \
        == {(str(gw.ip), subnet.prefixlen)}
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
    assert nft_table(name)

    # One dnsmasq, bound to this bridge only, reading no config file.
    (pid,) = dnsmasq_pids(name)
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    for opt in ("--bind-interfaces", f"--interface={name}", "--except-interface=lo",
                "--conf-file=/dev/null", "--dhcp-authoritative"):
        assert opt in argv
    assert n["dnsmasq_pid"] == pid
    log = (xhost.root / "state" / "networks" / name / "dnsmasq.log").read_text()
    assert f"sockets bound exclusively to interface {name}" in log

    # A "guest" gets a lease from the right subnet, with the bridge as router and DNS.
    cns, cif = join_bridge(net, name, "c")
    lease = net.dhcp(cns, cif)
    guest = IPv4Interface(f"{lease['ip']}/{lease['mask']}")
    assert guest.network == subnet and guest.ip != gw.ip, lease
    assert lease["router"] == str(gw.ip) and lease["dns"] == str(gw.ip)
    leases = (xhost.root / "state" / "networks" / name / "dnsmasq.leases").read_text()
    assert lease["ip"] in leases
    assert network(xhost, name)["ports"] == [f"{cns}h"]
    assert network(xhost, name)["taps"] == []  # a veth is no tap
    net.in_ns(cns, "ip", "addr", "add", str(guest), "dev", cif)
    net.in_ns(cns, "ip", "route", "add", "default", "via", lease["router"])

    # A "server" outside the subnet, behind the host, in a namespace of its own.
    outside = net.free_subnet()
    host_side = IPv4Interface(f"{outside.network_address + 1}/{outside.prefixlen}")
    server_ip = str(outside.network_address + 2)
    sns = net.name("s")
    net.add_netns(sns)
    net.veth_to_ns(sns, f"{sns}h", f"{sns}g")
    sh("ip", "addr", "add", str(host_side), "dev", f"{sns}h")
    net.in_ns(sns, "ip", "addr", "add", f"{server_ip}/{outside.prefixlen}", "dev", f"{sns}g")
    server = net.popen_in_ns(sns, sys.executable, "-c", SERVER, server_ip, "5555")
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "listening"
    net.in_ns(cns, sys.executable, "-c", CLIENT, server_ip, "5555")
    peer = server.stdout.readline().strip()
    # Masqueraded: the server saw the host's address on its link, not the guest's.
    assert peer == str(host_side.ip), f"server saw {peer}, guest is {guest.ip}"

    # And the outside cannot open connections into the NAT network (forward chain).
    net.in_ns(sns, "ip", "route", "add", str(subnet), "via", str(host_side.ip))
    inner = net.popen_in_ns(cns, sys.executable, "-c", SERVER, str(guest.ip), "5556")
    assert inner.stdout is not None and inner.stdout.readline().strip() == "listening"
    res = net.in_ns(sns, sys.executable, "-c", CLIENT, str(guest.ip), "5556", check=False)
    assert res.returncode != 0 and "refused" in res.stderr.lower(), res.stderr

    sh("ip", "link", "del", f"{cns}h")
    net.links.remove(f"{cns}h")
    xhost.xenia("network", "delete", name)


SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("listening", flush=True)
c, addr = s.accept()
print(addr[0], flush=True)
"""

CLIENT = """
import socket, sys
socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10).close()
"""


def test_delete_removes_everything(xhost: Host, net: Scaffold) -> None:
    name = net.network("d")
    xhost.xenia("network", "create", name, "--nat")
    (pid,) = dnsmasq_pids(name)
    run_dir = xhost.root / "run" / "networks" / name
    state_dir = xhost.root / "state" / "networks" / name
    assert (run_dir / "dnsmasq.pid").exists() and (state_dir / "dnsmasq.leases").exists()
    xhost.xenia("network", "delete", name)
    assert link_json(name) is None
    assert not nft_table(name)
    assert dnsmasq_pids(name) == []
    assert pid not in dnsmasq_pids(name)
    assert not run_dir.exists() and not state_dir.exists()
    assert name not in [n["name"] for n in networks(xhost)]
    msg = fails(xhost, "network", "delete", name)
    assert msg == f"xenia: Failed to delete network '{name}': there is no network '{name}' " \
                  "(see `xenia network list`)"


def test_restart_adopts_and_restores(xhost: Host, net: Scaffold) -> None:
    name = net.network("r")
    xhost.xenia("network", "create", name, "--nat")
    n = network(xhost, name)
    (pid,) = dnsmasq_pids(name)

    # Stopping xeniad tears nothing down; the next one adopts dnsmasq (no second copy).
    xhost.kill_daemon(signal.SIGTERM)
    assert link_json(name) is not None and dnsmasq_pids(name) == [pid] and nft_table(name)
    xhost.start_daemon()
    assert dnsmasq_pids(name) == [pid]
    assert network(xhost, name)["state"] == "active"

    # The bridge deleted behind our back (dnsmasq left with stale sockets): recreated,
    # dnsmasq replaced by exactly one new one, and it serves leases again.
    xhost.kill_daemon(signal.SIGKILL)
    sh("ip", "link", "del", name)
    xhost.start_daemon()
    info = link_json(name)
    assert info is not None
    assert any(a["local"] == n["address"].split("/")[0] for a in info["addr_info"])
    pids = dnsmasq_pids(name)
    assert len(pids) == 1 and pids[0] != pid
    cns, cif = join_bridge(net, name, "c")
    assert IPv4Interface(f"{net.dhcp(cns, cif)['ip']}/24").network == IPv4Network(n["subnet"])

    # A host reboot: bridge, rules and dnsmasq all gone. All back after start.
    xhost.kill_daemon(signal.SIGKILL)
    purge_network(name)
    assert dnsmasq_pids(name) == [] and not nft_table(name) and link_json(name) is None
    xhost.start_daemon()
    assert link_json(name) is not None and nft_table(name) and len(dnsmasq_pids(name)) == 1
    got = network(xhost, name)
    assert (got["state"], got["problems"]) == ("active", [])
    assert got["ports"] == []  # the old veth went with the old bridge
    xhost.xenia("network", "delete", name)


# -- plain bridges, taps ---------------------------------------------------------------------
def test_plain_bridge_and_taps(xhost: Host, net: Scaffold, nm: NetworkManager,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    name = net.network("b")
    assert xhost.xenia("network", "create", name).stdout.strip() == f"Created bridge {name}"
    info = link_json(name)
    assert info is not None and info["linkinfo"]["info_kind"] == "bridge"
    assert [a for a in info["addr_info"] if a["family"] == "inet"] == []
    assert dnsmasq_pids(name) == [] and not nft_table(name)
    row = next(r for r in networks(xhost) if r["name"] == name)
    assert (row["type"], row["subnet"], row["dhcp"], row["taps"]) == ("bridge", None, False, [])
    table = xhost.xenia("network", "list").stdout.splitlines()
    assert table[0].split()[:3] == ["NAME", "BRIDGE", "TYPE"]
    assert any(line.split()[:3] == [name, name, "bridge"] for line in table)

    tap = net.name("t")
    mac = nm.generate_mac()
    vif = VifSpec(bridge=name, mac=mac, mtu=1400)
    nm.check_vif(vif)
    nm.plug(tap, vif)
    net.links.append(tap)
    t = link_json(tap)
    assert t is not None
    assert t["master"] == name and t["mtu"] == 1400 and "UP" in t["flags"]
    assert t["address"] == "fe" + mac[2:]
    tun = t["linkinfo"]["info_data"]
    assert (tun["type"], tun["pi"], tun["vnet_hdr"], tun["persist"], tun.get("user")) == \
        ("tap", False, True, True, "root")
    assert next(r for r in networks(xhost) if r["name"] == name)["taps"] == [tap]
    assert nm.tap_stats(tap).keys() >= {"rx_bytes", "rx_packets", "tx_bytes", "tx_packets"}

    # Duplicate MAC, and a tap name taken: refused, nothing left behind.
    tap2 = net.name("u")
    with pytest.raises(InUse, match=f"MAC {mac} is used by vif {tap}"):
        nm.plug(tap2, VifSpec(bridge=name, mac=mac))
    assert nm.mac_in_use(mac) == f"vif {tap}" and nm.mac_in_use(mac, ignore_tap=tap) is None
    with pytest.raises(InUse, match=f"a device named '{tap}' exists already"):
        nm.plug(tap, VifSpec(bridge=name))
    assert link_json(tap2) is None

    # Default MTU: the bridge's. A failure after the tap exists rolls it back.
    nm.plug(tap2, VifSpec(bridge=name))
    net.links.append(tap2)
    assert link_json(tap2)["mtu"] == link_json(name)["mtu"]  # type: ignore[index]
    nm.unplug(tap2)
    assert link_json(tap2) is None

    def boom(*a: Any, **k: Any) -> None:
        raise InvalidConfig("Failed to apply the vif rate: boom")

    monkeypatch.setattr(ratelimit, "apply_rate", boom)
    with pytest.raises(InvalidConfig, match="boom"):
        nm.plug(tap2, VifSpec(bridge=name, rate=parse_rate("10Mb/s")))
    assert link_json(tap2) is None
    monkeypatch.undo()

    # Delete refused while a tap is attached.
    msg = fails(xhost, "network", "delete", name)
    assert msg == f"xenia: Failed to delete network '{name}': 1 tap is attached ({tap}); " \
                  "destroy those domains or detach their vifs first"
    nm.unplug(tap)
    nm.unplug(tap)  # idempotent
    assert link_json(tap) is None
    with pytest.raises(NotFound):
        nm.tap_stats(tap)
    xhost.xenia("network", "delete", name)
    assert link_json(name) is None


def test_vifs_on_missing_and_host_bridges(xhost: Host, net: Scaffold,
                                          nm: NetworkManager) -> None:
    missing = net.name("m")
    with pytest.raises(NotFound) as e:
        nm.check_vif(VifSpec(bridge=missing))
    assert e.value.message == f"Failed to attach vif: bridge '{missing}' does not exist; " \
                              f"create it with `xenia network create {missing}`"
    # A bridge made outside Xenia is fine, as with Xen's vif-bridge.
    ext = net.name("e")
    sh("ip", "link", "add", ext, "type", "bridge")
    net.links.append(ext)
    nm.check_vif(VifSpec(bridge=ext))
    tap = net.name("t")
    nm.plug(tap, VifSpec(bridge=ext))
    net.links.append(tap)
    assert link_json(tap)["master"] == ext  # type: ignore[index]
    row = next(r for r in networks(xhost, "--all") if r["name"] == ext)
    assert (row["type"], row["taps"]) == ("host", [tap])
    nm.unplug(tap)
    # Not a bridge at all.
    with pytest.raises(InvalidConfig, match="is not a bridge"):
        nm.check_vif(VifSpec(bridge="lo"))
    with pytest.raises(InvalidConfig, match="not a tap; not deleting it"):
        nm.unplug("lo")
    msg = fails(xhost, "network", "create", ext)
    assert f"this host has a device named '{ext}' already; guests can use that bridge" in msg

    # A Xenia network whose bridge vanished: check_vif accepts it, plug brings it back.
    name = net.network("b")
    xhost.xenia("network", "create", name)
    sh("ip", "link", "del", name)
    nm.check_vif(VifSpec(bridge=name))
    nm.plug(tap, VifSpec(bridge=name))
    assert link_json(tap)["master"] == name  # type: ignore[index]
    assert network(xhost, name)["state"] == "active"
    nm.unplug(tap)
    xhost.xenia("network", "delete", name)


def test_uplink(xhost: Host, net: Scaffold) -> None:
    name = net.network("b")
    up = net.name("l")
    sh("ip", "link", "add", up, "type", "veth", "peer", "name", f"{up}p")
    net.links.append(up)
    # An uplink carrying an address is refused (it would stop working as a port).
    sh("ip", "addr", "add", f"{net.free_subnet().network_address + 1}/24", "dev", up)
    msg = fails(xhost, "network", "create", name, "--interface", up)
    assert f"'{up}' carries the address" in msg and "does not move a live address" in msg
    assert link_json(name) is None and name not in [n["name"] for n in networks(xhost)]
    sh("ip", "addr", "flush", "dev", up)
    out = xhost.xenia("network", "create", name, "--interface", up).stdout
    assert out.strip() == f"Created bridge {name}, uplink {up}"
    assert link_json(up)["master"] == name  # type: ignore[index]
    assert network(xhost, name)["uplink"] == up
    xhost.xenia("network", "delete", name)
    assert link_json(up) is not None and "master" not in link_json(up)  # type: ignore
    assert "there is no interface" in fails(xhost, "network", "create", name, "--interface",
                                            net.name("q"))


# -- rate limits -----------------------------------------------------------------------------
def iperf_once(s: Scaffold, ns: str, server: str, port: int, reverse: bool) -> dict[str, Any]:
    """One iperf3 run against a fresh one-off server: the client's JSON report."""
    srv = s.popen("iperf3", "-s", "-1", "-B", server, "-p", str(port))
    deadline = time.monotonic() + 10
    args = ["iperf3", "-c", server, "-p", str(port), "-t", "4", "-O", "1", "-J"]
    args += ["-R"] if reverse else []
    try:
        while True:
            res = s.in_ns(ns, *args, check=False, timeout=60)
            if res.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)  # the server was not listening yet
    finally:
        # A one-off server (-1) does not always exit by itself after the test (seen with
        # iperf3 3.12), so it is stopped rather than waited for.
        try:
            srv.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.communicate(timeout=10)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    report: dict[str, Any] = json.loads(res.stdout)
    return report


def iperf(s: Scaffold, ns: str, server: str, port: int, reverse: bool) -> float:
    """Bytes/s an iperf3 client in `ns` measured over TCP (reverse: the server sends).

    iperf3 3.12 now and then ends a run with exit status 0 but a report without totals
    (seen once in CI: no end.sum_received); such a run is repeated, up to three times."""
    for _ in range(3):
        report = iperf_once(s, ns, server, port, reverse)
        total = report.get("end", {}).get("sum_received", {}).get("bits_per_second")
        if total is not None:
            return float(total) / 8
        time.sleep(1)
    raise AssertionError(f"iperf3 gave no totals in three runs; last report: "
                         f"{json.dumps(report)[-2000:]}")


@pytest.mark.skipif(shutil.which("iperf3") is None, reason="needs iperf3")
def test_rate_limit_throughput(net: Scaffold) -> None:
    """The tc setup plug() applies, measured on a veth whose host end stands in for a tap
    (host ingress = guest transmit, host egress = guest receive)."""
    ns = net.name("r")
    net.add_netns(ns)
    host_end, guest_end = f"{ns}h", f"{ns}g"
    net.veth_to_ns(ns, host_end, guest_end)
    sub = net.free_subnet()
    host_ip, guest_ip = str(sub.network_address + 1), str(sub.network_address + 2)
    sh("ip", "addr", "add", f"{host_ip}/{sub.prefixlen}", "dev", host_end)
    net.in_ns(ns, "ip", "addr", "add", f"{guest_ip}/{sub.prefixlen}", "dev", guest_end)

    unlimited = iperf(net, ns, host_ip, 5201, reverse=False)
    rate = parse_rate("16Mb/s")  # 2 MB/s, 100 KB of credit every 50 ms
    assert rate.bytes_per_second == 2_000_000
    assert unlimited > 5 * rate.bytes_per_second, "host too slow to tell limited from not"

    with IPRoute() as ipr:
        (index,) = ipr.link_lookup(ifname=host_end)
        plan = ratelimit.apply_rate(ipr, index, host_end, rate, 1500)
    assert (plan.rate, plan.burst) == (2_000_000, 100_000)
    qd = json.loads(sh("tc", "-j", "qdisc", "show", "dev", host_end).stdout)
    assert {q["kind"] for q in qd} >= {"tbf", "ingress"}
    ifb = ratelimit.ifb_name(index)
    assert any(q["kind"] == "tbf" for q in json.loads(sh("tc", "-j", "qdisc", "show", "dev",
                                                         ifb).stdout))
    filt = sh("tc", "filter", "show", "dev", host_end, "ingress").stdout
    assert f"Redirect to device {ifb}" in filt

    guest_tx = iperf(net, ns, host_ip, 5202, reverse=False)
    guest_rx = iperf(net, ns, host_ip, 5203, reverse=True)
    print(f"unlimited {unlimited:.0f} B/s; at {rate.bytes_per_second} B/s: guest transmit "
          f"{guest_tx:.0f}, guest receive {guest_rx:.0f}")
    for what, got in (("guest transmit", guest_tx), ("guest receive", guest_rx)):
        ratio = got / rate.bytes_per_second
        assert 0.7 <= ratio <= 1.1, f"{what}: {got:.0f} B/s is {ratio:.2f} x the rate"

    with IPRoute() as ipr:
        ratelimit.clear_rate(ipr, index)
        assert ipr.link_lookup(ifname=ifb) == []


def test_bad_input(xhost: Host, net: Scaffold) -> None:
    a, b = net.network("a"), net.network("b")
    xhost.xenia("network", "create", a, "--nat")
    sub = network(xhost, a)["subnet"]
    assert fails(xhost, "network", "create", a) == \
        f"xenia: Failed to create network '{a}': it exists already (see `xenia network list`)"
    assert fails(xhost, "network", "create", b, "--nat", "--subnet", sub) == (
        f"xenia: Failed to create network '{b}': subnet {sub} overlaps network '{a}'; pick "
        "another with --subnet, or leave it out to get a free one")
    # Overlapping a route of the host (not one of ours).
    with IPRoute() as ipr:
        routed = next(c for c in nl.claims(ipr) if c.net.prefixlen <= 30
                      and not c.net.is_loopback and not c.net.overlaps(IPv4Network(sub)))
    msg = fails(xhost, "network", "create", b, "--nat", "--subnet", str(routed.net))
    assert "overlaps the host route" in msg or "overlaps the address" in msg
    assert "host bits set" in fails(xhost, "network", "create", b, "--nat", "--subnet",
                                    "10.9.9.1/24")
    assert "IPv6" in fails(xhost, "network", "create", b, "--nat", "--subnet", "fd00::/64")
    assert "invalid network name" in fails(xhost, "network", "create", "x" * 16)
    assert "invalid network name" in fails(xhost, "network", "create", "--", "-x")
    assert "there is no network 'xtnothere'" in fails(xhost, "network", "delete", "xtnothere")
    assert link_json(b) is None and [n["name"] for n in networks(xhost)] == [a]
    xhost.xenia("network", "delete", a)
