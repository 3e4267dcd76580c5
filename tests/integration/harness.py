"""Test harness: a real xeniad under a private XENIA_ROOT, driven through the real CLI.

Like Firecracker's VM factory: every QEMU a test starts is found and killed at the end
(by pidfile and by the -uuid of each domain), and on failure the domains' console logs,
QEMU logs and the daemon log are printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

READY = "xenia-tiny: ready"
# A guest-side counter, ten steps a second, for "the same guest went on" checks. The first
# value is written before the loop is backgrounded and each later one is renamed into
# place: `echo $i > f` truncates then writes, and a reader between the two saw an empty
# file (it failed CI once).
COUNTER = ("echo 0 > /tmp/cnt; (i=0; while :; do i=$((i+1)); echo $i > /tmp/cnt.new; "
           "mv /tmp/cnt.new /tmp/cnt; sleep 0.1; done) >/dev/null 2>&1 &")


@dataclass
class Image:
    kernel: Path
    initrd: Path


def qemu_pids_with(text: str) -> list[int]:
    """Pids of QEMU processes (and qemu-storage-daemons, which serve replicated volumes'
    copies) whose command line contains `text`."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if (b"qemu-system" in argv or b"qemu-storage-daemon" in argv) \
                and text.encode() in argv:
            pids.append(int(proc.name))
    return pids


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def write_xl_cfg(path: Path, cfg: dict[str, Any]) -> Path:
    """Write `cfg` as an xl.cfg file: strings double-quoted, lists of single-quoted
    strings, booleans as 1/0, None left out (to drop a default key), anything else as it
    prints."""
    lines = []
    for k, v in cfg.items():
        if v is None:
            continue
        if isinstance(v, str):
            lines.append(f'{k} = "{v}"')
        elif isinstance(v, list):
            lines.append(f"{k} = [ " + ", ".join(f"'{x}'" for x in v) + " ]")
        else:
            lines.append(f"{k} = {int(v) if isinstance(v, bool) else v}")
    path.write_text("\n".join(lines) + "\n")
    return path


class Host:
    """One xeniad with its own root, and the `xenia` CLI pointed at it."""

    def __init__(self, image: Image, root: Path | None = None) -> None:
        # Short root: QEMU's sockets live under it and sun_path holds 107 bytes.
        self.root = root or Path(tempfile.mkdtemp(prefix="xt-", dir="/tmp"))
        self.image = image
        self.env = dict(os.environ, XENIA_ROOT=str(self.root), XENIA_NO_AUTOSTART="1")
        self.daemon: subprocess.Popen[bytes] | None = None
        self.cfgdir = self.root / "cfg"
        self.cfgdir.mkdir(parents=True, exist_ok=True)
        self.log_mark = 0  # where log_since_mark starts reading the daemon log

    # -- daemon --------------------------------------------------------------------------
    @property
    def daemon_log(self) -> Path:
        return self.root / "xeniad.test.log"

    def log_since_mark(self) -> str:
        """The daemon log from `log_mark` on: a host shared by a module's tests
        (conftest's shared_host) sets the mark as each test starts."""
        with contextlib.suppress(FileNotFoundError), self.daemon_log.open("rb") as f:
            f.seek(self.log_mark)
            return f.read().decode(errors="replace")
        return ""

    def daemon_argv(self, *args: str) -> list[str]:
        """How this host's xeniad is run (hosts in a namespace wrap it)."""
        return [sys.executable, "-m", "xenia.daemon", *args]

    def start_daemon(self, timeout: float = 20.0, *args: str) -> None:
        """Start xeniad (`args` are its options) and wait until its CLI answers."""
        self.launch_daemon(*args)
        self.wait_daemon(timeout, *args)

    def launch_daemon(self, *args: str) -> None:
        """Start xeniad without waiting (several hosts start at once: wait_daemon each)."""
        log = open(self.daemon_log, "ab")  # noqa: SIM115
        self.daemon = subprocess.Popen(self.daemon_argv(*args), env=self.env, stdout=log,
                                       stderr=log, start_new_session=True)
        log.close()

    def wait_daemon(self, timeout: float = 20.0, *args: str) -> None:
        assert self.daemon is not None
        sock = self.root / "run" / "xeniad.sock"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sock.exists() and self.xenia("info", check=False).returncode == 0:
                return
            if self.daemon.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"xeniad {' '.join(self.daemon_argv(*args))} did not come up:\n"
                             f"{self.daemon_log.read_text()}")

    def kill_daemon(self, sig: int = signal.SIGKILL) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(sig)
            self.daemon.wait(timeout=20)
        self.daemon = None

    # -- CLI -----------------------------------------------------------------------------
    def xenia(self, *args: str, check: bool = True, timeout: float = 180.0,
              input: str | None = None) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [sys.executable, "-m", "xenia.cli", *args], env=self.env, capture_output=True,
            text=True, timeout=timeout, input=input,
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"xenia {' '.join(args)} failed ({res.returncode}):\n{res.stdout}{res.stderr}"
            )
        return res

    def write_cfg(self, name: str, **keys: Any) -> Path:
        cfg: dict[str, Any] = {
            "name": name,
            "type": "pv",
            "kernel": str(self.image.kernel),
            "ramdisk": str(self.image.initrd),
            # quiet: the kernel's ~30 KB of boot messages cost each boot ~10-15% of its
            # CPU under TCG; tests that read kernel messages pass their own `extra`.
            "extra": "console=ttyS0 quiet",
            "memory": 256,
            "vcpus": 1,
        }
        cfg.update(keys)
        return write_xl_cfg(self.cfgdir / f"{name}.cfg", cfg)

    def create(self, name: str, wait_ready: bool = True, **keys: Any) -> dict[str, Any]:
        self.xenia("create", str(self.write_cfg(name, **keys)))
        if wait_ready:
            self.wait_console(name, READY)
        return self.domain(name)

    def domains(self) -> list[dict[str, Any]]:
        out = self.xenia("list", "-l").stdout
        # Domain-0 (the host, domid 0) is in `list -l` as in xl; tests mean the guests.
        return [d for d in json.loads(out) if d.get("domid") != 0]

    def domain(self, name: str) -> dict[str, Any]:
        for d in self.domains():
            if d["name"] == name:
                return d
        raise AssertionError(f"no domain {name} in {[d['name'] for d in self.domains()]}")

    def has_domain(self, name: str) -> bool:
        return any(d["name"] == name for d in self.domains())

    def console_log(self, name: str) -> str:
        return self.xenia("console", "--log", name).stdout

    def wait_console(self, name: str, text: str, timeout: float = 120.0,
                     count: int = 1) -> str:
        """Wait until `text` has appeared `count` times on the console log."""
        deadline = time.monotonic() + timeout
        log = ""
        while time.monotonic() < deadline:
            log = self.console_log(name)
            if log.count(text) >= count:
                return log
            time.sleep(0.3)
        raise AssertionError(f"'{text}' x{count} not on {name}'s console in {timeout}s:\n{log}")

    def run(self, name: str, command: str, timeout: float = 60.0) -> str:
        res = self.xenia("console", "--run", command, "--timeout", str(timeout), name,
                         check=False, timeout=timeout + 30)
        if res.returncode != 0:
            raise AssertionError(f"'{command}' in {name} exited {res.returncode}:\n"
                                 f"{res.stdout}{res.stderr}")
        return res.stdout

    def wait_gone(self, name: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.has_domain(name):
                return
            time.sleep(0.2)
        raise AssertionError(f"domain {name} still there after {timeout}s")

    # -- cleanup -------------------------------------------------------------------------
    def dump_logs(self) -> None:
        print(f"\n===== xeniad log ({self.daemon_log}) =====")
        with contextlib.suppress(OSError):
            print(self.daemon_log.read_text(errors="replace")[-20000:])
        for d in sorted((self.root / "run" / "domains").glob("*")):
            for f in ("console.log", "qemu.log"):
                p = d / f
                if p.exists():
                    print(f"===== {p} =====")
                    print(p.read_text(errors="replace")[-8000:])

    def clear(self) -> None:
        """Destroy every domain and delete every network, through the daemon."""
        # Through the daemon: destroying a domain removes its taps, deleting a network its
        # bridge, nft table and dnsmasq — host-wide things a kill would leak.
        if self.daemon is not None and self.daemon.poll() is None:
            with contextlib.suppress(Exception):
                for d in self.domains():
                    self.xenia("destroy", d["name"], check=False, timeout=60)
                nets = json.loads(self.xenia("network", "list", "--json").stdout or "[]")
                for n in nets:
                    self.xenia("network", "delete", n["name"], check=False, timeout=60)

    def cleanup(self) -> None:
        self.clear()
        self.kill_daemon()
        for pid in qemu_pids_with(str(self.root)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while qemu_pids_with(str(self.root)) and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(self.root, ignore_errors=True)


def wait_until(fn, timeout: float = 30.0, interval: float = 0.3, what: str = ""):  # type: ignore[no-untyped-def]
    """Poll fn() until it returns something truthy; that value is returned."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or fn}: last {last!r}")


def volume(host: Host, name: str, size: str, fmt: str = "qcow2") -> Path:
    host.xenia("volume", "create", "-f", fmt, name, size)
    return Path(host.xenia("volume", "path", name).stdout.strip())


def counter(host: Host, name: str) -> int:
    """The guest's COUNTER value."""
    out = host.run(name, "cat /tmp/cnt").strip()
    assert out.isdigit(), f"the counter in {name} reads {out!r}"
    return int(out)


def listen(host: Host, name: str, port: int, out: str = "/tmp/r") -> None:
    """Start `nc -l` on `port` in guest `name` (received bytes go to `out`), and return once
    it listens: a sender that connects first is refused, and a fixed sleep is a guess."""
    host.run(name, f"(sleep 900 | nc -l -p {port} > {out}) >/dev/null 2>&1 &")
    # /proc/net/tcp{,6} rows: sl local_address(hex addr:PORT) rem_address st(0A = LISTEN).
    # busybox nc listens on the IPv6 wildcard when the guest has IPv6, else on IPv4.
    def listening() -> bool:
        rows = host.run(name, "cat /proc/net/tcp /proc/net/tcp6 2>/dev/null; true")
        return any(len(f) > 3 and f[1].endswith(f":{port:04X}") and f[3] == "0A"
                   for f in (line.split() for line in rows.splitlines()))
    wait_until(listening, timeout=60, what=f"nc to listen on port {port} in {name}")
