"""EtcdMember: the local etcd member xeniad runs on a cluster member, and its Supervisor.

etcd runs as its own process in a session of its own, like QEMU and dnsmasq: it outlives
xeniad (a daemon restart or upgrade never costs the cluster a voter), and a restarted
xeniad adopts it by pidfile and command line, never starting a second copy. While xeniad
runs, the Supervisor thread restarts an etcd that died, with a bounded back-off. Guests
never depend on etcd: QEMU does not talk to it; only HA decisions and the cluster view do.

Files (ClusterFiles): <state>/cluster/etcd.json (this member's settings; a client member,
past the voter cap, has etcd-client.json instead: voters.py), tls/ (pki.py),
etcd-data/ (etcd's data dir), etcd.log; <run>/etcd.pid.

etcd's settings that matter (docs/cluster.md, "Timeouts", says why):
- client and peer URLs on the host's cluster address only, https, with client-cert auth
  on both (the cluster CA is the only CA trusted);
- --pre-vote: a member that was cut off does not disrupt the leader when it comes back;
- heartbeat 100 ms, election timeout 1000 ms (etcd's LAN defaults);
- progress notifications every 2 s, so a silent watch stream is known dead in 6 s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from xenia.cluster import settings
from xenia.cluster.pki import MemberTLS, check_address
from xenia.cluster.watch import PROGRESS_INTERVAL
from xenia.errors import BackendError, InvalidConfig
from xenia.network.dnsmasq import pid_alive
from xenia.paths import Paths
from xenia.peers.identity import write_atomic
from xenia.tools import find_tool

log = logging.getLogger(__name__)

CLIENT_PORT, PEER_PORT = 2379, 2380
HEARTBEAT_MS, ELECTION_MS = 100, 1000
STOP_TIMEOUT = 10.0
# Supervisor: look 4 times a second (the quorum probe counts a dead etcd from when it was
# seen dead: quorum.py); restart after 1, 2, 4, ... up to 30 s of failures.
CHECK_EVERY, RESTART_MAX = 0.25, 30.0


@dataclass(frozen=True)
class ClusterFiles:
    dir: Path
    run: Path

    @classmethod
    def of(cls, paths: Paths) -> ClusterFiles:
        return cls(paths.state / "cluster", paths.run)

    @property
    def config(self) -> Path:
        return self.dir / "etcd.json"

    @property
    def client_config(self) -> Path:
        """A client member's settings (voters.ClientConfig): it runs no etcd member."""
        return self.dir / "etcd-client.json"

    @property
    def tls(self) -> MemberTLS:
        return MemberTLS.under(self.dir / "tls")

    @property
    def data(self) -> Path:
        return self.dir / "etcd-data"

    @property
    def log(self) -> Path:
        return self.dir / "etcd.log"

    @property
    def pidfile(self) -> Path:
        return self.run / "etcd.pid"


@dataclass(frozen=True)
class MemberConfig:
    """What this host's etcd member is started with. `initial_cluster` and `state` matter
    only for the very first start (etcd keeps its membership in its data dir after)."""

    name: str
    address: str
    token: str                      # --initial-cluster-token: unique per cluster
    initial_cluster: str            # name=https://addr:2380,...
    state: str = "new"              # new (cluster init) | existing (join)
    client_port: int = CLIENT_PORT
    peer_port: int = PEER_PORT
    heartbeat_ms: int = HEARTBEAT_MS
    election_ms: int = ELECTION_MS
    extra: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_address(self.address)
        if self.state not in ("new", "existing"):
            raise InvalidConfig(f"Failed to read the etcd member settings: state "
                                f"'{self.state}' is neither new nor existing")

    def _url(self, port: int) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"https://{host}:{port}"

    @property
    def client_url(self) -> str:
        return self._url(self.client_port)

    @property
    def peer_url(self) -> str:
        return self._url(self.peer_port)

    def save(self, path: Path) -> None:
        settings.save(self, path)

    @classmethod
    def load(cls, path: Path) -> MemberConfig:
        return settings.load(cls, path, "etcd member settings")


def etcd_argv(binary: str, cfg: MemberConfig, files: ClusterFiles) -> list[str]:
    tls = files.tls
    return [
        binary,
        f"--name={cfg.name}",
        f"--data-dir={files.data}",
        f"--listen-client-urls={cfg.client_url}",
        f"--advertise-client-urls={cfg.client_url}",
        f"--listen-peer-urls={cfg.peer_url}",
        f"--initial-advertise-peer-urls={cfg.peer_url}",
        f"--initial-cluster={cfg.initial_cluster}",
        f"--initial-cluster-state={cfg.state}",
        f"--initial-cluster-token={cfg.token}",
        "--client-cert-auth", f"--trusted-ca-file={tls.ca}",
        f"--cert-file={tls.cert}", f"--key-file={tls.key}",
        "--peer-client-cert-auth", f"--peer-trusted-ca-file={tls.ca}",
        f"--peer-cert-file={tls.cert}", f"--peer-key-file={tls.key}",
        "--pre-vote=true",
        f"--heartbeat-interval={cfg.heartbeat_ms}",
        f"--election-timeout={cfg.election_ms}",
        f"--experimental-watch-progress-notify-interval={int(PROGRESS_INTERVAL)}s",
        # Keep an hour of history: a watch that reconnects resumes from its revision.
        "--auto-compaction-mode=periodic", "--auto-compaction-retention=1h",
        # 3.5's default; 3.4's 100000 keeps that many entries in memory.
        "--snapshot-count=10000",
        "--logger=zap", "--log-outputs=stderr",
        *cfg.extra,
    ]


def _cmdline(pid: int) -> list[str]:
    try:
        return [a.decode(errors="replace")
                for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return []


class EtcdMember:
    """Start, adopt, stop this host's etcd process. `launcher`: argv put before etcd's
    (tests run each member in a network namespace with `ip netns exec NS`)."""

    def __init__(self, files: ClusterFiles, cfg: MemberConfig, binary: str | None = None,
                 launcher: Sequence[str] = ()) -> None:
        self.files = files
        self.cfg = cfg
        self._binary = binary
        self.launcher = list(launcher)
        self._child: subprocess.Popen[bytes] | None = None

    def _ours(self, pid: int) -> bool:
        argv = _cmdline(pid)
        return (bool(argv) and os.path.basename(argv[0]) == "etcd"
                and f"--data-dir={self.files.data}" in argv and pid_alive(pid))

    def pid(self) -> int | None:
        if self._child is not None:
            self._child.poll()  # reap a child that died, so it is not a zombie
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.files.pidfile.read_text().strip())
            if self._ours(pid):
                return pid
        return None

    def start(self) -> int:
        doing = f"to start the etcd member {self.cfg.name}"
        binary = self._binary or find_tool("etcd", "etcd-server", doing)
        missing = self.files.tls.missing()
        if missing:
            raise InvalidConfig(f"Failed {doing}: {', '.join(map(str, missing))} missing; "
                                "join the cluster again")
        self.files.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.files.run.mkdir(parents=True, exist_ok=True)
        argv = [*self.launcher, *etcd_argv(binary, self.cfg, self.files)]
        fd = os.open(self.files.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                                     start_new_session=True)
        except OSError as e:
            raise BackendError(f"Failed {doing}: {e}") from e
        finally:
            os.close(fd)
        self._child = child
        write_atomic(self.files.pidfile, f"{child.pid}\n".encode(), 0o644)
        return child.pid

    def ensure(self) -> tuple[int, bool]:
        """(pid, adopted): the running member, or a new one."""
        pid = self.pid()
        if pid is not None:
            return pid, True
        return self.start(), False

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM (etcd leaves its data consistent), SIGKILL after `timeout`; idempotent."""
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self._alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while self._alive(pid):
                time.sleep(0.02)
        with contextlib.suppress(FileNotFoundError):
            self.files.pidfile.unlink()

    def _alive(self, pid: int) -> bool:
        if self._child is not None and self._child.pid == pid:
            return self._child.poll() is None
        return pid_alive(pid)

    def wipe(self) -> None:
        """Forget the member's data (after it was removed from the cluster)."""
        shutil.rmtree(self.files.data, ignore_errors=True)

    def log_tail(self, lines: int = 5) -> str:
        try:
            with open(self.files.log, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
                tail = f.read().decode(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n".join(tail)


class Supervisor:
    """Restarts the member when its process dies, until stop(); restarts counts them."""

    def __init__(self, member: EtcdMember) -> None:
        self.member = member
        self.restarts = 0
        # Since when (monotonic) the member was seen not running, and the pid of the etcd
        # restarted after that: the quorum probe's "dead for N s" (quorum.py) reads them.
        # An etcd restarted without a quorum never serves clients (it waits to publish
        # itself through raft), so until it answers it counts as still dead.
        self.down_since: float | None = None
        self.restarted_pid: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="etcd-supervisor", daemon=True)

    def start(self) -> Supervisor:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop supervising (the member keeps running)."""
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        delay = 1.0
        while not self._stop.wait(CHECK_EVERY):
            pid = self.member.pid()
            if pid is not None:
                delay = 1.0
                if pid != self.restarted_pid:
                    self.down_since = None
                continue
            if self.down_since is None or self.restarted_pid is not None:
                self.down_since, self.restarted_pid = time.monotonic(), None
            log.error("etcd member %s is not running; restarting it in %.0f s. Its log "
                      "ends:\n%s", self.member.cfg.name, delay, self.member.log_tail())
            if self._stop.wait(delay):
                return
            try:
                self.restarted_pid = self.member.start()
                self.restarts += 1
            except (BackendError, InvalidConfig) as e:
                log.error("%s", e)
            delay = min(delay * 2, RESTART_MAX)
