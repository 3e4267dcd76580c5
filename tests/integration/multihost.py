"""Several Xenia hosts on one machine: each xeniad in a network namespace of its own, with
its own XENIA_ROOT, joined by veth pairs; optionally a private mount namespace so a
directory is NOT shared (for --copy-storage). Addresses live inside the namespaces only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.integration.harness import Host, Image

PORT = 8443
BOOT = Path(__file__).with_name("mountns_exec.py")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


class NetHost(Host):
    """A Host whose xeniad (and so its guests, taps and bridges) lives in netns `ns`."""

    def __init__(self, image: Image, ns: str, address: str,
                 private_dirs: tuple[Path, ...] = (), allow: tuple[Path, ...] = ()) -> None:
        super().__init__(image, Path(tempfile.mkdtemp(prefix="xm-", dir="/tmp")))
        self.ns, self.address, self.private_dirs = ns, address, private_dirs
        # What a peer may name over TCP (an incoming domain's kernel, initrd and disks):
        # the image's directories, and the test's shared and private directories.
        self.allow = tuple(dict.fromkeys([image.kernel.parent, image.initrd.parent,
                                          *private_dirs, *allow]))

    def daemon_argv(self, *args: str) -> list[str]:
        argv = ["ip", "netns", "exec", self.ns]
        if self.private_dirs:
            # A mount namespace of its own where these directories are empty tmpfs.
            argv += ["unshare", "--mount", "--propagation", "private", sys.executable,
                     str(BOOT), *[str(d) for d in self.private_dirs], "--"]
        allowed = [a for d in self.allow for a in ("--allow-path", str(d))]
        return argv + super().daemon_argv("--listen", f"{self.address}:{PORT}", *allowed,
                                          *args)

    def kill_daemon(self, sig: int = 9) -> None:
        # `ip netns exec` execs, but unshare + the boot helper exec too: one pid.
        super().kill_daemon(sig)

    def sees(self, path: Path) -> bool:
        """Whether `path` exists in this host's mount namespace."""
        if self.daemon is None:
            return path.exists()
        res = subprocess.run(["nsenter", "-t", str(self.daemon.pid), "-m", "test", "-e",
                              str(path)])
        return res.returncode == 0

    def fingerprint(self) -> str:
        return str(json.loads(self.xenia("host", "info", "--json").stdout)["fingerprint"])

    def token(self, name: str) -> str:
        return self.xenia("host", "token", "create", "--name", name).stdout.strip()


class Cluster:
    """Hosts h0..hN-1 in namespaces joined by a switch (a bridge in its own namespace),
    control addresses 10.<net>.0.(i+1)/24; plus a second switch joining each host's guest
    bridge `guest_bridge`, so guests on different hosts share one L2 segment."""

    def __init__(self, image: Image, n: int, tag: str,
                 private: dict[int, tuple[Path, ...]] | None = None,
                 allow: tuple[Path, ...] = ()) -> None:
        self.tag = tag
        self.net = f"10.{200 + int(tag) % 50}.{int(tag) % 250}"
        self.sw = f"xsw{tag}"
        self.hosts: list[NetHost] = []
        self.image = image
        self.private = private or {}
        self.allow = allow
        self.n = n
        self.links: list[str] = []

    def start(self, parallel: bool = False, wait: bool = True) -> None:
        """Make the switch and the hosts; their daemons one by one, or with `parallel` all
        launched first and then waited for (the start-up is mostly Python imports: on 2
        cores two run at once); without `wait` the caller waits for each (wait_daemon)."""
        # Namespaces of these names can only be left by an earlier run that died (the tag
        # is this process's pid modulo 40): clear them, or `netns add` fails every test of
        # the module with "File exists".
        for ns in [self.sw, *(f"xh{self.tag}{i}" for i in range(self.n))]:
            clear_stale_netns(ns)
        ip("netns", "add", self.sw)
        ip("-n", self.sw, "link", "add", "ctl", "type", "bridge")
        ip("-n", self.sw, "link", "add", "lan", "type", "bridge")
        ip("-n", self.sw, "link", "set", "ctl", "up")
        ip("-n", self.sw, "link", "set", "lan", "up")
        for i in range(self.n):
            ns = f"xh{self.tag}{i}"
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
            ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"c{i}",
               "netns", self.sw)
            ip("-n", self.sw, "link", "set", f"c{i}", "master", "ctl", "up")
            ip("-n", ns, "addr", "add", f"{self.net}.{i + 1}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            host = NetHost(self.image, ns, f"{self.net}.{i + 1}", self.private.get(i, ()),
                           self.allow)
            self.hosts.append(host)
            if parallel:
                host.launch_daemon()
            else:
                host.start_daemon()
        if parallel and wait:
            for host in self.hosts:
                host.wait_daemon(60.0)

    def guest_lan(self, bridge: str) -> None:
        """Create Xenia network `bridge` on every host and join them into one L2 segment."""
        for i, h in enumerate(self.hosts):
            h.xenia("network", "create", bridge)
            ip("link", "add", f"up{i}", "netns", h.ns, "type", "veth", "peer", "name",
               f"l{i}", "netns", self.sw)
            ip("-n", h.ns, "link", "set", f"up{i}", "master", bridge, "up")
            ip("-n", self.sw, "link", "set", f"l{i}", "master", "lan", "up")

    def peer(self, src: int, dst: int, name: str | None = None) -> str:
        """Make host dst known to host src as a peer; returns the peer name."""
        a, b = self.hosts[src], self.hosts[dst]
        name = name or f"h{dst}"
        a.xenia("host", "add", name, f"{b.address}:{PORT}", "--token", b.token(f"from-{src}"),
                "--fingerprint", b.fingerprint())
        return name

    def set_link(self, i: int, up: bool) -> None:
        ip("-n", self.hosts[i].ns, "link", "set", "eth0", "up" if up else "down")

    def stop(self, dump: bool = False) -> None:
        stop_hosts(self.hosts, dump)
        for h in self.hosts:
            ip("netns", "del", h.ns, check=False)
        ip("netns", "del", self.sw, check=False)


def stop_hosts(hosts: list[NetHost], dump: bool) -> None:
    """Stop each host's daemon and domains; with `dump`, print their logs first."""
    for h in hosts:
        if dump:
            print(f"\n##### host {h.ns}")
            h.dump_logs()
        with contextlib.suppress(Exception):
            h.cleanup()


def tag() -> str:
    return str(os.getpid() % 40 + 10)


def clear_stale_netns(ns: str) -> None:
    """Kill what still runs in namespace `ns` and delete it, if it exists."""
    if ns not in ip("netns", "list", check=False).stdout.split():
        return
    for pid in ip("netns", "pids", ns, check=False).stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    ip("netns", "del", ns, check=False)
