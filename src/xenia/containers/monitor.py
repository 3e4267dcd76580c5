"""The container monitor: one detached process a container boot, like podman's conmon.

    python -m xenia.containers.monitor --dir RUN_DIR --id ID --crun CRUN --state-root DIR
        --status-fd FD --lower ROOTFS --upper DIR --work DIR --mount-base DIR
        [--lower-uid-map MAP --lower-gid-map MAP]
        [--cgroup-procs FILE ...] [--hide-unified] [--console-owner UID:GID]

Started by xeniad (drivers/container.py), it forks once and the parent exits, so it is
nobody's child but init's and outlives xeniad, as a daemonized QEMU does. It

1. enters a mount namespace of its own (private propagation): the container's root, an
   overlay of ROOTFS (read-only lower) and UPPER (the domain's writes), is mounted there
   with nodev, and disappears with the namespace when the container and this process
   are gone, whatever killed them. With --lower-uid-map/--lower-gid-map the lower layer
   is an idmapped mount of ROOTFS (idmount.py), so the tree's ids show as the
   container's own. It is mounted at MOUNT_BASE/ID on a tmpfs of this
   namespace's own at MOUNT_BASE (/run/xenia-containers, an empty directory on the
   host): crun 1.8 sets a user-namespaced container up by path as the container's root,
   which must be able to walk down to it, and the run directory is root's alone (0700).
   On a hybrid cgroup host it also unmounts
   /sys/fs/cgroup/unified in that namespace (--hide-unified): crun refuses to run while
   the v2 tree offers any controller, though a container here needs only v1 ones and
   crun is not even asked to touch cgroups (Xenia manages them);
2. makes the console: a pty whose slave becomes the init's stdin/stdout/stderr and the
   container's /dev/console (open_console: why not crun's `terminal: true`);
3. becomes a child subreaper and runs `crun create` (the container's init is then
   reparented to it, so it can wait for it and read its exit status) with the
   process moved into the domain's cgroups first (each --cgroup-procs file), so the
   container starts in them and its cgroup namespace is rooted there;
4. serves the pty master on RUN_DIR/console.sock: one client at a time (more wait),
   input goes to the pty, output to the client and always to RUN_DIR/console.log;
   output is dropped when no client is connected or one falls 1 MiB behind, so the
   container never blocks on its console (a client that connects within a second of the
   last one leaving gets that last second again: Relay._accept);
5. writes `{"ok": true, "pid": INIT}` (or `{"ok": false, "error": ...}`) as one line to
   --status-fd, then closes it: xeniad waits for that line;
6. when the init exits, writes RUN_DIR/exit.json (`{"pid": P, "code": N}` or
   `{"pid": P, "signal": S}`), and exits once the pty closes (every process of the
   container is gone; at most a few seconds after the init). It lives as long as the
   init does, console or not: only its parent can read the init's exit status.

Only the standard library: it starts for every container boot.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import errno
import fcntl
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from xenia import files
from xenia.containers import idmount

CLONE_NEWNS = 0x00020000
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
PR_SET_CHILD_SUBREAPER = 36
UNIFIED = "/sys/fs/cgroup/unified"

CREATE_TIMEOUT = 60.0
CLIENT_BACKLOG = 1 << 20  # output kept for a slow client
INPUT_BACKLOG = 1 << 16  # input kept for a pty nobody reads
DRAIN_AFTER_EXIT = 5.0  # how long the pty may stay open after the init exited
RECONNECT_GRACE = 1.0  # output replayed to a client that comes right back (Relay._accept)
CONSOLE_ROWS, CONSOLE_COLS = 24, 80

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def log(msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} monitor[{os.getpid()}]: {msg}",
          file=sys.stderr, flush=True)


def write_atomic(path: Path, text: str) -> None:
    files.write_atomic(path, text.encode(), 0o644)


# -- set-up ---------------------------------------------------------------------------------
def private_mounts(hide_unified: bool) -> None:
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    # Nothing mounted here may propagate back to the host, nor host mounts in here.
    _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None),
           "make / private")
    if hide_unified and os.path.ismount(UNIFIED):
        _check(_libc.umount2(UNIFIED.encode(), MNT_DETACH), f"umount {UNIFIED}")


def mount_root(lower: str, upper: str, work: str, base: str, cid: str,
               maps: tuple[str, str] | None = None) -> str:
    """The container's root at BASE/ID (on a fresh tmpfs at BASE); returns its path.
    `maps` (uid_map, gid_map lines): the lower layer is an idmapped mount of LOWER at
    BASE/ID.lower, so the container's ids own its files (idmount.py)."""
    os.makedirs(base, mode=0o755, exist_ok=True)
    _check(_libc.mount(b"tmpfs", base.encode(), b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                       b"mode=0755,size=64k"), f"mount tmpfs on {base}")
    merged = os.path.join(base, cid)
    os.mkdir(merged, 0o755)
    if maps is not None:
        mapped = merged + ".lower"
        os.mkdir(mapped, 0o755)
        idmount.idmapped_lower(lower, mapped, maps[0] + "\n", maps[1] + "\n")
        lower = mapped
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
    _check(_libc.mount(b"overlay", merged.encode(), b"overlay", MS_NODEV, opts.encode()),
           f"mount overlay on {merged} ({opts})")
    return merged


def subreaper() -> None:
    _check(_libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(PR_SET_CHILD_SUBREAPER)")


def listen(path: Path) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    sock.listen(8)
    return sock


def open_console(run: Path, owner: tuple[int, int] | None) -> tuple[int, int]:
    """A new pty (master, slave) for the container's console, bound to /dev/console in
    the container through a bind mount added to config.json.

    The pty is ours, not crun's (`terminal: false`, the slave as the init's stdio), so the
    init does not hold it as its controlling terminal: a console shell in a session of its
    own can then take it (busybox init's `console::respawn:`, a getty), as on a machine.
    LXC sets its consoles up the same way.
    """
    master, slave = os.openpty()
    os.set_inheritable(slave, False)
    if owner is not None:  # container root and its tty group, as the host sees them
        os.fchown(slave, *owner)
    os.fchmod(slave, 0o620)
    with contextlib.suppress(OSError):
        fcntl.ioctl(master, termios.TIOCSWINSZ,
                    struct.pack("HHHH", CONSOLE_ROWS, CONSOLE_COLS, 0, 0))
    config = run / "config.json"
    doc = json.loads(config.read_text())
    doc.setdefault("mounts", []).append({
        "destination": "/dev/console", "type": "bind", "source": os.ttyname(slave),
        "options": ["bind", "nosuid", "noexec"]})
    write_atomic(config, json.dumps(doc, indent=2) + "\n")
    return master, slave


def _pending(master: int) -> bytes:
    """What is in the pty now (crun's own messages, when it fails)."""
    out = b""
    while select.select([master], [], [], 0.1)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return out


def create_container(args: argparse.Namespace, run: Path, slave: int, master: int) -> int:
    """Run `crun create` with the console's slave as its (and so the init's) stdio;
    return the init's pid. Raises RuntimeError."""
    procs = list(args.cgroup_procs or [])

    def join_cgroups() -> None:  # in the child, before exec (this process has one thread)
        for f in procs:
            fd = os.open(f, os.O_WRONLY)
            try:
                os.write(fd, b"0")  # "0": the writing process itself
            finally:
                os.close(fd)

    argv = [args.crun, "--cgroup-manager=disabled", "--root", args.state_root, "create",
            "--bundle", str(run), "--pid-file", str(run / "init.pid"), "--", args.id]
    log("running " + " ".join(argv))
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave,
                            preexec_fn=join_cgroups, cwd=str(run))
    try:
        rc = proc.wait(timeout=CREATE_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"crun create did not finish in {CREATE_TIMEOUT:.0f} s") from None
    if rc != 0:
        # crun's messages went where the container's would have: the console.
        text = _pending(master).decode(errors="replace").replace("\r\n", "\n").strip()
        raise RuntimeError(f"crun create failed: {text or f'exit status {rc}'}")
    try:
        return int((run / "init.pid").read_text().strip())
    except (OSError, ValueError) as e:
        raise RuntimeError(f"crun create wrote no usable pid file: {e}") from None


# -- the console relay -----------------------------------------------------------------------
class Relay:
    """Copies between the pty master, console.log and at most one console.sock client."""

    def __init__(self, run: Path, master: int, init_pid: int) -> None:
        self.run = run
        self.master = master
        self.init_pid = init_pid
        self.log = open(run / "console.log", "ab", buffering=0)  # noqa: SIM115
        self.listener = listen(run / "console.sock")
        self._sock_ino = os.stat(run / "console.sock").st_ino
        self.client: socket.socket | None = None
        self.to_client = bytearray()
        # Output of the last seconds, and when the last client left (see _accept).
        self.recent: collections.deque[tuple[float, bytes]] = collections.deque()
        self.recent_size = 0
        self.left_at = 0.0
        self.to_pty = bytearray()
        self.exited_at: float | None = None
        self.pidfd: int | None = None
        with contextlib.suppress(OSError):
            self.pidfd = os.pidfd_open(init_pid)
        os.set_blocking(master, False)

    def reap(self) -> None:
        """Wait for every child that has exited (the init and anything reparented)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.init_pid:
                if os.WIFSIGNALED(status):
                    rec = {"pid": pid, "signal": os.WTERMSIG(status)}
                else:
                    rec = {"pid": pid, "code": os.WEXITSTATUS(status)}
                write_atomic(self.run / "exit.json", json.dumps(rec) + "\n")
                log(f"init {pid} exited: {rec}")
                self.exited_at = time.monotonic()

    def _drop_client(self, grace: bool = False) -> None:
        """Forget the client; with `grace`, the next one may get what it was sent last."""
        if self.client is not None:
            self.client.close()
        self.client = None
        self.to_client.clear()
        self.left_at = time.monotonic() if grace else 0.0

    def _accept(self) -> None:
        """Take the next client. One that comes within RECONNECT_GRACE of the last one
        leaving first gets the output of that last second (and since): `xenia create -c`
        connects, unpauses, closes and connects again, and a container starts faster than
        that, so its first lines went to a client that never read them."""
        with contextlib.suppress(OSError):
            self.client, _ = self.listener.accept()
            self.client.setblocking(False)
            now = time.monotonic()
            if now - self.left_at <= RECONNECT_GRACE:
                since = self.left_at - RECONNECT_GRACE
                self.to_client += b"".join(chunk for t, chunk in self.recent if t >= since)

    def _output(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.log.write(data)
        now = time.monotonic()
        self.recent.append((now, data))
        self.recent_size += len(data)
        while self.recent and (self.recent[0][0] < now - 2 * RECONNECT_GRACE
                               or self.recent_size > CLIENT_BACKLOG):
            self.recent_size -= len(self.recent.popleft()[1])
        if self.client is not None:
            if len(self.to_client) + len(data) > CLIENT_BACKLOG:
                return  # a client that does not read loses output, the container goes on
            self.to_client += data

    def _read_pty(self) -> bool:
        """False once the pty is closed (no process of the container holds it)."""
        while True:
            try:
                data = os.read(self.master, 65536)
            except BlockingIOError:
                return True
            except OSError as e:
                if e.errno == errno.EIO:
                    return False
                raise
            if not data:
                return False
            self._output(data)

    def loop(self) -> None:
        """Relay until the init has exited and the pty is closed (or DRAIN_AFTER_EXIT
        after the exit). A pty nobody holds (EIO) is not the end while the init lives:
        it may open /dev/console again (busybox init does, shutting down)."""
        hung_up = False
        while True:
            if self.exited_at is not None and (
                    hung_up or time.monotonic() - self.exited_at > DRAIN_AFTER_EXIT):
                break
            rlist: list[int | socket.socket] = [] if hung_up else [self.master]
            wlist: list[int | socket.socket] = []
            if self.pidfd is not None:
                rlist.append(self.pidfd)
            if self.client is None:
                rlist.append(self.listener)
            else:
                if len(self.to_pty) < INPUT_BACKLOG:
                    rlist.append(self.client)
                if self.to_client:
                    wlist.append(self.client)
            if self.to_pty and not hung_up:
                wlist.append(self.master)
            try:
                readable, writable, _ = select.select(rlist, wlist, [],
                                                      0.2 if hung_up else 1.0)
            except InterruptedError:
                continue
            self.reap()
            if self.pidfd is not None and self.pidfd in readable:
                os.close(self.pidfd)
                self.pidfd = None
            if hung_up or self.master in readable:
                # While hung up, a read is the cheap way to see the slave come back.
                hung_up = not self._read_pty()
            if self.listener in readable and self.client is None:
                self._accept()
            if self.client is not None and self.client in readable:
                try:
                    data = self.client.recv(65536)
                except BlockingIOError:
                    data = None
                except OSError:
                    data = b""
                if data == b"":
                    self._drop_client(grace=True)
                elif data:
                    self.to_pty += data
            if self.client is not None and self.client in writable and self.to_client:
                try:
                    sent = self.client.send(self.to_client)
                    del self.to_client[:sent]
                except BlockingIOError:
                    pass
                except OSError:
                    self._drop_client()
            if self.master in writable and self.to_pty:
                try:
                    written = os.write(self.master, self.to_pty)
                    del self.to_pty[:written]
                except BlockingIOError:
                    pass
                except OSError:
                    self.to_pty.clear()
        self.close()

    def close(self) -> None:
        self.reap()
        if self.client is not None:
            with contextlib.suppress(OSError):
                self.client.setblocking(True)
                self.client.settimeout(1.0)
                self.client.sendall(self.to_client)
        self._drop_client()
        self.listener.close()
        # A new boot (reboot) may have put its own socket there already.
        with contextlib.suppress(OSError):
            if os.stat(self.run / "console.sock").st_ino == self._sock_ino:
                (self.run / "console.sock").unlink()
        with contextlib.suppress(OSError):
            os.close(self.master)
        self.log.close()


# -- main ---------------------------------------------------------------------------------------
def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="xenia-container-monitor")
    p.add_argument("--dir", required=True)
    p.add_argument("--id", required=True)
    p.add_argument("--crun", required=True)
    p.add_argument("--state-root", required=True)
    p.add_argument("--status-fd", type=int, required=True)
    p.add_argument("--lower", required=True)
    p.add_argument("--lower-uid-map", help="uid_map line of an idmapped lower layer")
    p.add_argument("--lower-gid-map", help="gid_map line of an idmapped lower layer")
    p.add_argument("--upper", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--mount-base", required=True)
    p.add_argument("--cgroup-procs", action="append")
    p.add_argument("--hide-unified", action="store_true")
    p.add_argument("--console-owner", help="UID:GID for the console pty")
    p.add_argument("--no-fork", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


_reported = False


def report(fd: int, msg: dict[str, object]) -> None:
    """The one status line for xeniad; later calls do nothing (the fd number may be
    another file's by then)."""
    global _reported
    if _reported:
        return
    _reported = True
    with contextlib.suppress(OSError):
        os.write(fd, (json.dumps(msg) + "\n").encode())
    with contextlib.suppress(OSError):
        os.close(fd)


def run(args: argparse.Namespace) -> int:
    run_dir = Path(args.dir)
    os.chdir("/")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    write_atomic(run_dir / "monitor.pid", f"{os.getpid()}\n")
    master = slave = -1
    try:
        private_mounts(args.hide_unified)
        maps = None
        if args.lower_uid_map and args.lower_gid_map:
            maps = (args.lower_uid_map, args.lower_gid_map)
        mount_root(args.lower, args.upper, args.work, args.mount_base, args.id, maps)
        subreaper()
        owner = None
        if args.console_owner:
            uid, _, gid = args.console_owner.partition(":")
            owner = (int(uid), int(gid))
        master, slave = open_console(run_dir, owner)
        pid = create_container(args, run_dir, slave, master)
        # Only the container holds the slave now: the pty closes when it is gone.
        os.close(slave)
        slave = -1
        relay = Relay(run_dir, master, pid)
    except (OSError, RuntimeError, ValueError) as e:
        log(f"failed: {e}")
        report(args.status_fd, {"ok": False, "error": str(e)})
        return 1
    finally:
        if slave >= 0:
            os.close(slave)
    log(f"container {args.id} created, init pid {pid}")
    report(args.status_fd, {"ok": True, "pid": pid})
    try:
        relay.loop()
    finally:
        relay.reap()
    log("console closed; exiting")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if not args.no_fork and os.fork() > 0:
        # The launcher returns at once; the monitor carries on as init's child.
        os._exit(0)
    try:
        return run(args)
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - the status line must go out
        log(f"crashed: {e!r}")
        report(args.status_fd, {"ok": False, "error": f"monitor crashed: {e!r}"})
        return 1


if __name__ == "__main__":
    sys.exit(main())
