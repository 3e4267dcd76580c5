"""Container NICs on the real kernel: NetworkManager.plug_veth/unplug_veth with a network
namespace held by a sleeping process standing in for the container. Names start with
"xt" and carry a random suffix; everything is removed at the end."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from xenia.config.model import VifSpec
from xenia.config.vifspec import parse_rate
from xenia.errors import InUse, InvalidConfig
from xenia.network import ratelimit
from xenia.network.manager import NetworkManager
from xenia.paths import Paths
from xenia.store.sqlite import SqliteStore

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("nsenter") is None,
    reason="needs root, unshare and nsenter")


def ip_json(*args: str, netns_pid: int | None = None) -> list[dict[str, Any]]:
    argv = ["ip", "-j", "-d", *args]
    if netns_pid is not None:
        argv = ["nsenter", "-t", str(netns_pid), "-n", *argv]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        return []
    return json.loads(res.stdout or "[]")  # type: ignore[no-any-return]


def link(name: str, netns_pid: int | None = None) -> dict[str, Any] | None:
    found = ip_json("link", "show", "dev", name, netns_pid=netns_pid)
    return found[0] if found else None


class Env:
    def __init__(self, tmp: Path) -> None:
        tag = secrets.token_hex(2)
        self.bridge = f"xtbr{tag}"
        self.host = f"xtv{tag}"
        self.store = SqliteStore(tmp / "x.db")
        self.net = NetworkManager(Paths(state=tmp / "state", run=tmp / "run"), self.store)
        self.net.create_network(self.bridge)
        self.holders: list[subprocess.Popen[bytes]] = []

    def netns(self) -> int:
        """A process in a network namespace of its own (the container's stand-in)."""
        p = subprocess.Popen(["unshare", "--net", "sleep", "300"])
        self.holders.append(p)
        deadline = time.monotonic() + 10
        mine = os.readlink("/proc/self/ns/net")
        while os.readlink(f"/proc/{p.pid}/ns/net") == mine:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        return p.pid

    def close(self) -> None:
        for p in self.holders:
            p.kill()
            p.wait()
        for name in (self.host, self.host + "b"):
            try:
                self.net.unplug_veth(name)
            except Exception as e:  # noqa: BLE001 - keep cleaning
                print(f"cleanup {name}: {e}")
        self.net.delete_network(self.bridge)
        self.store.close()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    try:
        yield e
    finally:
        e.close()


def test_plug_veth_puts_the_guest_end_in_the_namespace(env: Env) -> None:
    pid = env.netns()
    vif = VifSpec(bridge=env.bridge, mac="00:16:3e:12:34:56", mtu=1400)
    env.net.plug_veth(env.host, vif, pid, "eth0")
    host = link(env.host)
    assert host is not None
    assert host["linkinfo"]["info_kind"] == "veth"
    assert host["master"] == env.bridge and host["mtu"] == 1400
    assert host["address"] == "fe:16:3e:12:34:56"  # as a tap's: the bridge MAC stays put
    assert "UP" in host["flags"]
    guest = link("eth0", netns_pid=pid)
    assert guest is not None and guest["address"] == "00:16:3e:12:34:56"
    assert guest["mtu"] == 1400
    assert link(env.host, netns_pid=pid) is None
    stats = env.net.tap_stats(env.host)
    assert set(stats) >= {"rx_bytes", "tx_bytes"}
    # A second pair of that name is refused, the first left alone.
    with pytest.raises(InUse, match="exists already"):
        env.net.plug_veth(env.host, VifSpec(bridge=env.bridge, mac="00:16:3e:12:34:57"),
                          env.netns(), "eth0")
    assert link(env.host) is not None
    env.net.unplug_veth(env.host)
    assert link(env.host) is None and link("eth0", netns_pid=pid) is None
    env.net.unplug_veth(env.host)  # idempotent


def test_rate_limit_and_its_ifb_outlive_nothing(env: Env) -> None:
    pid = env.netns()
    vif = VifSpec(bridge=env.bridge, mac="00:16:3e:12:34:58", rate=parse_rate("8Mb/s"))
    env.net.plug_veth(env.host, vif, pid, "eth1")
    index = link(env.host)["ifindex"]  # type: ignore[index]
    ifb = ratelimit.ifb_name(index)
    assert link(ifb) is not None
    # The container's last process exits: the kernel deletes the pair, the IFB stays...
    holder = env.holders.pop()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    deadline = time.monotonic() + 10
    while link(env.host) is not None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert link(ifb) is not None
    # ...until unplug finds it by its alias.
    env.net.unplug_veth(env.host)
    assert link(ifb) is None


def test_plug_veth_into_a_dead_namespace_leaves_nothing(env: Env) -> None:
    pid = env.netns()
    holder = env.holders.pop()
    holder.kill()
    holder.wait()
    with pytest.raises(Exception, match="vif|namespace|process|No such"):
        env.net.plug_veth(env.host, VifSpec(bridge=env.bridge, mac="00:16:3e:12:34:59"), pid,
                          "eth0")
    assert link(env.host) is None


def test_unplug_veth_refuses_other_devices(env: Env) -> None:
    with pytest.raises(InvalidConfig, match="not a veth"):
        env.net.unplug_veth(env.bridge)
    assert link(env.bridge) is not None
    with pytest.raises(InvalidConfig, match="has no MAC"):
        env.net.plug_veth(env.host, VifSpec(bridge=env.bridge), env.netns(), "eth0")
