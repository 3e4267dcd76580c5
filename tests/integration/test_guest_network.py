"""Issue 3: guest networking on bridges, checked from inside real guests."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.integration.harness import GUEST_ARGS, Host, listen, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def host(shared_host: Host) -> Host:
    """One xeniad for this module's tests (conftest.py's shared_host)."""
    return shared_host

# virtio-net feature bits (virtio spec): checksum offload both ways, TSO both ways.
F_CSUM, F_GUEST_CSUM, F_GUEST_TSO4, F_HOST_TSO4 = 0, 1, 7, 11


def bridge_name() -> str:
    return f"xtb{os.getpid() % 10000}{int(time.time() * 1000) % 1000}"[:15]


@pytest.fixture
def bridge(host: Host) -> str:
    name = bridge_name()
    host.xenia("network", "create", name)
    return name


def features(host: Host, name: str) -> str:
    return host.run(name, "cat /sys/class/net/eth0/device/features").strip()


def send_file(host: Host, src: str, dst: str, dst_ip: str, size_mb: int, port: int,
              timeout: float = 300) -> tuple[str, str, float]:
    """Send size_mb of random data src -> dst over TCP; (md5 sent, md5 received, seconds)."""
    sent = host.run(src, f"dd if=/dev/urandom of=/tmp/f bs=1M count={size_mb} 2>/dev/null; "
                         "md5sum /tmp/f | cut -d' ' -f1", timeout=timeout).strip()
    listen(host, dst, port)
    t0 = time.monotonic()
    host.run(src, f"nc {dst_ip} {port} < /tmp/f", timeout=timeout)
    size = size_mb * 1024 * 1024
    wait_until(lambda: host.run(dst, "stat -c %s /tmp/r").strip() == str(size),
               timeout=timeout, what="all bytes at the receiver")
    took = time.monotonic() - t0
    got = host.run(dst, "md5sum /tmp/r | cut -d' ' -f1", timeout=timeout).strip()
    return sent, got, took


def test_two_guests_ping_and_move_100mb_verified(host: Host, bridge: str) -> None:
    for i in (1, 2):
        host.create(f"n{i}", memory=384, wait_ready=False, vif=[f"bridge={bridge}"],
                    extra=f"{GUEST_ARGS} xenia.ip=10.77.0.{i}/24")
    for i in (1, 2):
        host.wait_console(f"n{i}", "xenia-tiny: ready")
    assert "0% packet loss" in host.run("n1", "ping -c 3 -W 2 10.77.0.2")
    assert "0% packet loss" in host.run("n2", "ping -c 3 -W 2 10.77.0.1")
    # Checksum and segmentation offloads are on: the seed's netback checksum trouble
    # would show as a corrupted transfer here.
    feats = features(host, "n1")
    for bit in (F_CSUM, F_GUEST_CSUM, F_GUEST_TSO4, F_HOST_TSO4):
        assert feats[bit] == "1", (bit, feats)
    sent, got, took = send_file(host, "n1", "n2", "10.77.0.2", 100, 5001)
    assert sent == got
    print(f"100 MiB guest to guest in {took:.1f} s")


def test_rate_limits_throughput(host: Host, bridge: str) -> None:
    host.create("slow", vif=[f"bridge={bridge},rate=8Mb/s"], wait_ready=False,
                extra=f"{GUEST_ARGS} xenia.ip=10.78.0.1/24")
    host.create("fast", vif=[f"bridge={bridge}"], wait_ready=False,
                extra=f"{GUEST_ARGS} xenia.ip=10.78.0.2/24")
    host.create("sink", vif=[f"bridge={bridge}"], wait_ready=False,
                extra=f"{GUEST_ARGS} xenia.ip=10.78.0.3/24")
    for n in ("slow", "fast", "sink"):
        host.wait_console(n, "xenia-tiny: ready")
    # 4 MiB at 8 Mbit/s (1 MB/s) takes about 4 s; unlimited well under 2 s.
    s1, g1, limited = send_file(host, "slow", "sink", "10.78.0.3", 4, 5002)
    s2, g2, free = send_file(host, "fast", "sink", "10.78.0.3", 4, 5003)
    assert s1 == g1 and s2 == g2
    assert limited >= 3.0, limited
    assert free < limited / 2, (free, limited)


def test_vif_defaults_mtu_and_stable_mac(host: Host, bridge: str) -> None:
    dom = host.create("g1", vif=[f"bridge={bridge},mtu=1400"], on_reboot="restart")
    vif = dom["config"]["vifs"][0]
    assert vif["mac"].startswith("00:16:3e:")
    tap = f"vif{dom['domid']}.0"
    sys = Path("/sys/class/net") / tap
    assert sys.exists()
    assert (sys / "master").resolve().name == bridge
    assert (sys / "mtu").read_text().strip() == "1400"
    assert host.run("g1", "cat /sys/class/net/eth0/mtu").strip() == "1400"
    mac = host.run("g1", "cat /sys/class/net/eth0/address").strip()
    assert mac == vif["mac"]
    host.xenia("reboot", "g1")
    host.wait_console("g1", "xenia-tiny: ready", count=2)
    assert host.run("g1", "cat /sys/class/net/eth0/address").strip() == mac
    host.xenia("destroy", "g1")
    assert not sys.exists()  # the tap went with the domain


def test_nat_network_gives_dhcp_lease(host: Host) -> None:
    name = bridge_name()
    host.xenia("network", "create", name, "--nat", "--subnet", "10.123.45.0/24")
    host.create("g1", vif=[f"bridge={name}"])
    addr = wait_until(lambda: "10.123.45." in (out := host.run(
        "g1", "ip -4 -o addr show eth0")) and out, timeout=60, what="a DHCP lease")
    assert "10.123.45." in addr
    assert "0% packet loss" in host.run("g1", "ping -c 2 -W 2 10.123.45.1")


def test_network_hotplug_and_errors(host: Host, bridge: str) -> None:
    host.create("g1")
    links = host.run("g1", "ls /sys/class/net").split()
    assert "eth0" not in links
    host.xenia("network-attach", "g1", f"bridge={bridge}", "mac=00:16:3e:aa:bb:01")
    wait_until(lambda: "eth0" in host.run("g1", "ls /sys/class/net").split(),
               what="eth0 in the guest")
    assert host.run("g1", "cat /sys/class/net/eth0/address").strip() == "00:16:3e:aa:bb:01"
    listing = host.xenia("network-list", "g1").stdout
    assert "00:16:3e:aa:bb:01" in listing and bridge in listing

    def fails(args: list[str], match: str) -> None:
        res = host.xenia(*args, check=False)
        assert res.returncode != 0 and match in res.stderr, res.stderr

    fails(["network-attach", "g1", "bridge=nosuchbr0"], "bridge 'nosuchbr0' does not exist")
    fails(["network-attach", "g1", f"bridge={bridge}", "mac=00:16:3e:aa:bb:01"],
          "00:16:3e:aa:bb:01")
    fails(["network-detach", "g1", "7"], "it has no such vif")
    res = host.xenia("create", str(host.write_cfg("g2", vif=["bridge=nosuchbr0"])), check=False)
    assert res.returncode != 0 and "nosuchbr0" in res.stderr
    assert not host.has_domain("g2")
    assert len(host.domain("g1")["config"]["vifs"]) == 1
    host.xenia("network-detach", "g1", "00:16:3e:aa:bb:01")
    wait_until(lambda: "eth0" not in host.run("g1", "ls /sys/class/net").split(),
               what="eth0 to go")
    assert host.domain("g1")["config"]["vifs"] == []
