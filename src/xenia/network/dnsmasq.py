"""Dnsmasq: the DHCP and DNS server of one NAT network, as libvirt runs one per network.

It is bound to the network's bridge only and reads no config file but its argv, so it
neither serves other interfaces nor picks up /etc/dnsmasq.conf. It daemonizes itself and
outlives xeniad; a restarted xeniad finds it again by its pidfile and command line
(adopt, never a second copy). Its files: pidfile and startup errors in the run dir,
leases and log in the state dir (leases survive a reboot, so guests keep their address).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path

from xenia.errors import BackendError
from xenia.hostos.procfs import cmdline, pid_alive, read_pid
from xenia.network.subnet import dhcp_range, dhcp_size
from xenia.tools import find_tool

LEASE_TIME = "1h"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0


@dataclass(frozen=True)
class DnsmasqFiles:
    pidfile: Path
    errfile: Path
    leasefile: Path
    logfile: Path

    @classmethod
    def under(cls, run_dir: Path, state_dir: Path) -> DnsmasqFiles:
        return cls(pidfile=run_dir / "dnsmasq.pid", errfile=run_dir / "dnsmasq.err",
                   leasefile=state_dir / "dnsmasq.leases", logfile=state_dir / "dnsmasq.log")


def dnsmasq_argv(binary: str, bridge: str, subnet: IPv4Network, files: DnsmasqFiles) -> list[str]:
    start, end = dhcp_range(subnet)
    return [
        binary,
        # First, so nothing else is read: not /etc/dnsmasq.conf, not /etc/dnsmasq.d.
        "--conf-file=/dev/null",
        f"--pid-file={files.pidfile}",
        f"--dhcp-leasefile={files.leasefile}",
        f"--log-facility={files.logfile}",
        # Only this bridge: bound to its address, so other dnsmasqs (libvirt's, another
        # network's) can serve other interfaces on the same host.
        "--bind-interfaces",
        f"--interface={bridge}",
        "--except-interface=lo",
        "--strict-order",
        f"--dhcp-range={start},{end},{subnet.netmask},{LEASE_TIME}",
        f"--dhcp-lease-max={dhcp_size(subnet)}",
        # The only DHCP server on this segment: answer at once, also to clients asking
        # for a lease another server gave (after a lease file was lost).
        "--dhcp-authoritative",
        "--dhcp-no-override",
    ]


class Dnsmasq:
    """The dnsmasq of one network: start, find (adopt), stop."""

    def __init__(self, network: str, bridge: str, subnet: IPv4Network, files: DnsmasqFiles,
                 binary: str | None = None) -> None:
        self.network = network
        self.bridge = bridge
        self.subnet = subnet
        self.files = files
        self._binary = binary

    def _ours(self, pid: int) -> bool:
        """Whether `pid` is this network's dnsmasq: a pid in a pidfile may be reused."""
        argv = cmdline(pid)
        return (bool(argv) and os.path.basename(argv[0]) == "dnsmasq"
                and f"--pid-file={self.files.pidfile}" in argv and pid_alive(pid))

    def pids(self) -> list[int]:
        """Every running dnsmasq of this network (normally one; the pidfile's first)."""
        found: list[int] = []
        pid = read_pid(self.files.pidfile)
        if pid is not None and self._ours(pid):
            found.append(pid)
        # Also those the pidfile does not name (it was removed, or a start raced).
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) not in found and self._ours(
                    int(entry.name)):
                found.append(int(entry.name))
        return found

    def pid(self) -> int | None:
        pids = self.pids()
        return pids[0] if pids else None

    def start(self) -> int:
        doing = f"to start dnsmasq for network '{self.network}'"
        binary = self._binary or find_tool("dnsmasq", "dnsmasq-base", doing)
        for d in {self.files.pidfile.parent, self.files.leasefile.parent}:
            d.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.files.pidfile.unlink()
        argv = dnsmasq_argv(binary, self.bridge, self.subnet, self.files)
        # stderr to a file, not a pipe: the daemonized child would hold a pipe open.
        with open(self.files.errfile, "wb") as err:
            try:
                # dnsmasq's parent exits once the daemon is set up (non-zero if it failed).
                res = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=err, timeout=START_TIMEOUT, check=False,
                                     start_new_session=True)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise BackendError(f"Failed {doing}: {e}") from e
        if res.returncode != 0:
            text = self.files.errfile.read_text(errors="replace").strip()
            raise BackendError(f"Failed {doing}: {text or f'exit status {res.returncode}'}"
                               f" (see {self.files.logfile})")
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            pid = self.pid()
            if pid is not None:
                return pid
            time.sleep(0.05)
        raise BackendError(f"Failed {doing}: it did not write {self.files.pidfile}")

    def ensure(self, restart: bool = False) -> int:
        """Adopt the running dnsmasq (killing extra copies), or start one.

        restart: stop a running one first (its sockets are stale after the bridge was
        recreated: they were bound to the old device).
        """
        if restart:
            self.stop()
        pids = self.pids()
        if len(pids) > 1:
            _kill(pids[1:])
        return pids[0] if pids else self.start()

    def stop(self) -> None:
        """Stop every dnsmasq of this network; idempotent."""
        _kill(self.pids())
        with contextlib.suppress(FileNotFoundError):
            self.files.pidfile.unlink()


def _kill(pids: list[int]) -> None:
    """SIGTERM, then SIGKILL what is still there after STOP_TIMEOUT."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
