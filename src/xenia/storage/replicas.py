"""Replicated volumes, the replica host's side: ReplicaExports serves a copy over NBD.

A replicated volume lives on two hosts: the primary, where its domain runs, and the
replica host, which keeps a second copy. The replica host runs one qemu-storage-daemon
(QSD) a replicated volume: it opens the copy and exports it over NBD with TLS-PSK (the
key is made by the primary for this replica and handed over the authenticated peer API),
so only the primary's QEMU can read or write it. The primary's QEMU mirrors every write
into it (drivers/qemu_replica.py); migration/replication.py drives both sides.

The records ("replica-export" documents, one a volume: pool, volume, listen address,
port, PSK) are written before the QSD starts, so a restarted xeniad starts a QSD again
for each (supervise()). A QSD outlives xeniad like a domain's QEMU does: the primary's
writes must not stop because this xeniad restarts.

A QSD listens on the network, so it is confined as a domain's QEMU is (qemu/jail.py): a uid
of its own from the QEMU range (hostos/qemuids.py), the QEMU group, a private /dev,
no_new_privs; it is given the copy, its PSK and its pid directory through an ownership
ledger of its own (state/replica-ownership.json), and they go back when it is stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from xenia.errors import (
    AlreadyExists,
    BackendError,
    InUse,
    InvalidConfig,
    NotFound,
    PermissionDenied,
    XeniaError,
)
from xenia.hostos.ownership import Identity
from xenia.hostos.procfs import pid_alive
from xenia.hostos.qemuids import UidRange, UidsAndLedger
from xenia.paths import Paths
from xenia.peers.psk import PSK_FILE, remove_psk_dir, write_psk_dir
from xenia.qemu import confine
from xenia.storage.manager import StorageManager
from xenia.storage.replica_records import EXPORT_KIND, REPLICA_KIND, export_key
from xenia.storage.units import check_name
from xenia.store.base import Store
from xenia.tools import find_tool

log = logging.getLogger(__name__)

# The NBD export name every QSD uses (one export a QSD).
EXPORT_NAME = "replica"
# How long a new QSD may take to open the image and listen (it writes its pidfile then).
START_TIMEOUT = 10.0


def free_port(host: str) -> int:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def qsd_argv(qsd: str, image: Path, fmt: str, host: str, port: int, tls_dir: Path,
             pidfile: Path) -> list[str]:
    """The QSD command line: JSON forms only, so no name or path is spliced into an
    option (a volume name with a comma stays a name)."""
    obj = {"qom-type": "tls-creds-psk", "id": "tls0", "endpoint": "server",
           "dir": str(tls_dir)}
    node = {"driver": fmt, "node-name": "disk",
            "file": {"driver": "file", "filename": str(image)}}
    server = {"addr": {"type": "inet", "host": host, "port": str(port)},
              "tls-creds": "tls0"}
    export = {"type": "nbd", "id": "exp0", "node-name": "disk", "name": EXPORT_NAME,
              "writable": True}
    return [qsd, "--object", json.dumps(obj), "--blockdev", json.dumps(node),
            "--nbd-server", json.dumps(server), "--export", json.dumps(export),
            "--pidfile", str(pidfile)]


class ReplicaExports(UidsAndLedger):
    """The NBD exports of the replica copies this host keeps for other hosts."""

    def __init__(self, paths: Paths, store: Store, storage: StorageManager,
                 uids: UidRange | None = None) -> None:
        # Not the domains' ledger: two Ledger objects on one file would race.
        super().__init__(paths.state / "replica-ownership.json", uids)
        self.paths = paths
        self.store = store
        self.storage = storage

    def _dir(self, key: str) -> Path:
        return self.paths.run / "replicas" / key

    @staticmethod
    def _holder(key: str) -> str:
        return f"replica-{key}"  # its uid claim and its ledger entries

    def _pidfile(self, key: str) -> Path:
        # In a directory of its own: the confined QSD writes it, and may write nothing
        # else of the export's directory (its PSK, its log).
        return self._dir(key) / "pid" / "qsd.pid"

    def _pid(self, key: str) -> int | None:
        try:
            pid = int(self._pidfile(key).read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def list(self) -> list[dict[str, Any]]:
        out = []
        for rec in self.store.obj_list(EXPORT_KIND):
            shown = {k: v for k, v in rec.items() if k != "key"}
            shown["serving"] = self._pid(export_key(rec["pool"], rec["volume"])) is not None
            out.append(shown)
        return out

    def serve(self, pool: str, volume: str, size: int, fmt: str, host: str,
              identity: str, key: str, primary: str,
              primary_path: str = "", owner: str | None = None) -> dict[str, Any]:
        """Keep a copy of `pool`/`volume` for `primary` and export it; returns where.

        The volume is made if missing (a new replica) and kept if present only when it
        is a copy `owner` (the caller's token name; None: root on the UNIX socket) had
        served here before (a resync to the same host: the mirror overwrites it). Any
        other volume of the pool is refused: the export is writable by whoever chose the
        key, so serving a volume a peer did not make would hand it another's data.
        Serving a volume again restarts its QSD with the new key.
        """
        doing = f"to serve a replica of volume '{volume}' in pool '{pool}'"
        check_name("pool", pool, doing)
        check_name("volume", volume, doing)
        k = export_key(pool, volume)
        made = False
        try:
            self.storage.get_volume(pool, volume)
        except NotFound:
            self._check_space(pool, size, doing)
            self.storage.create_volume(pool, volume, size, fmt)
            made = True
        old = self.store.obj_get(EXPORT_KIND, k)
        if not made and owner is not None and (old is None or old.get("owner") != owner):
            raise AlreadyExists(
                f"Failed {doing}: the pool has a volume of that name already, and it is not "
                f"a copy token '{owner}' keeps here; pick another volume name (or the "
                "host's admin deletes that volume)")
        path = self.storage.volume_path(pool, volume)
        user = self.storage.describe_volume(self.storage.get_volume(pool, volume))["used_by"]
        if user:
            raise InUse(f"Failed {doing}: domain '{user}' uses the volume on this host; "
                        "a replica copy must not be written by anyone but the mirror")
        info = self.storage.get_volume(pool, volume)
        self.stop(pool, volume, forget=False)
        rec = {"pool": pool, "volume": volume, "host": host, "port": 0, "identity": identity,
               "key": key, "format": info.format, "path": str(path), "primary": primary,
               "primary_path": primary_path, "created_at": time.time(),
               "owner": owner if owner is not None else (old or {}).get("owner")}
        try:
            rec["port"] = self._launch(k, rec, doing)
        except Exception:
            if made:
                with contextlib.suppress(Exception):
                    self.storage.delete_volume(pool, volume)
            raise
        self.store.obj_put(EXPORT_KIND, k, rec)
        return {"host": host, "port": rec["port"], "export": EXPORT_NAME,
                "path": str(path), "format": info.format}

    def _check_space(self, pool: str, size: int, doing: str) -> None:
        """InvalidConfig if a copy of `size` bytes could not fit in the pool's free space
        (a peer must not fill this host's disk with one request)."""
        free = self.storage.get_pool(pool).available
        if size <= 0 or size > free:
            raise InvalidConfig(
                f"Failed {doing}: {size} bytes do not fit in pool '{pool}' ({free} bytes "
                "free); free space there or pick another pool")

    def drop(self, pool: str, volume: str, owner: str | None) -> None:
        """DELETE /v1/replicas/...: end an export and forget it. `owner` None (root, or an
        admin token) may end any; a peer's token only the exports it made."""
        doing = f"to stop serving the replica of volume '{volume}' in pool '{pool}'"
        check_name("pool", pool, doing)
        check_name("volume", volume, doing)
        rec = self.store.obj_get(EXPORT_KIND, export_key(pool, volume))
        if owner is not None:
            if rec is None:
                raise NotFound(f"Failed {doing}: this host serves no such replica "
                               "(`GET /v1/replicas` lists them)")
            if rec.get("owner") != owner:
                raise PermissionDenied(
                    f"Failed {doing}: token '{owner}' did not make that export; only its "
                    "maker or a token with the 'admin' scope may end it")
        self.stop(pool, volume)

    def _launch(self, k: str, rec: dict[str, Any], doing: str) -> int:
        """Start the QSD of record `rec`; its port (a free one unless the record has one)."""
        qsd = find_tool("qemu-storage-daemon", "qemu-utils", doing)
        d = self._dir(k)
        tls = write_psk_dir(d / "tls", rec["identity"], rec["key"])
        pidfile = self._pidfile(k)
        pidfile.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            pidfile.unlink()
        port = int(rec.get("port") or 0) or free_port(rec["host"])
        who = self._confine(k, Path(rec["path"]), tls, pidfile.parent)
        argv = qsd_argv(qsd, Path(rec["path"]), rec["format"], rec["host"], port, tls, pidfile)
        logf = d / "qsd.log"
        # The jail (qemu/jail.py) daemonizes the QSD with its stderr into the log, drops
        # to its uid and prints its pid.
        proc = subprocess.Popen(confine.jail_argv(who, [(n, False) for n in confine.BASE_NODES],
                                                  [], argv, logf, sandbox=False),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        out, err = proc.communicate(timeout=START_TIMEOUT)
        pid = int(out.split()[0]) if proc.returncode == 0 and out.split() else None
        # QSD writes the pidfile once the export listens: wait for that, or its exit.
        deadline = time.monotonic() + START_TIMEOUT
        while not pidfile.exists():
            if pid is None or not pid_alive(pid) or time.monotonic() > deadline:
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self._unconfine(k)
                tail = logf.read_text(errors="replace").strip().splitlines()[-3:] \
                    if logf.exists() else []
                why = " ".join(tail) or err.decode(errors="replace").strip() or "no output"
                raise BackendError(f"Failed {doing}: qemu-storage-daemon did not start: "
                                   f"{why}")
            time.sleep(0.02)
        log.info("serving replica %s/%s on %s:%d (pid %d, uid %d)", rec["pool"],
                 rec["volume"], rec["host"], port, pid, who.uid)
        return port

    def _confine(self, k: str, image: Path, tls: Path, piddir: Path) -> Identity:
        """A uid for the QSD of export `k`, and its files given to it (the copy and, for a
        qcow2 copy, nothing else: a replica has no backing file)."""
        holder = self._holder(k)
        self._unconfine(k)  # an earlier QSD of this export, gone without a stop
        uid = self.uids.allocate(holder)
        who = Identity(uid, confine.qemu_identity().gid)
        (self._dir(k) / "uid").write_text(f"{uid}\n")
        try:
            self.ledger.give(holder, write=[image, piddir], read=[tls / PSK_FILE], who=who)
        except BaseException:
            self._unconfine(k)
            raise
        return who

    def _unconfine(self, k: str) -> None:
        """The QSD's files back to their owners and its uid back to the range (after the
        QSD exited)."""
        holder = self._holder(k)
        try:
            self.ledger.give_back(holder)
        except XeniaError as e:
            log.warning("replica %s: giving its files back failed: %s", k, e)
        uidfile = self._dir(k) / "uid"
        with contextlib.suppress(OSError, ValueError):
            self.uids.free(int(uidfile.read_text()), holder)
            uidfile.unlink()

    def stop(self, pool: str, volume: str, forget: bool = True) -> None:
        """End the export (the copy stays); with `forget`, drop its record too."""
        k = export_key(pool, volume)
        pid = self._pid(k)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 5
                while pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.02)
        self._unconfine(k)
        if forget:
            self.store.obj_delete(EXPORT_KIND, k)
            remove_psk_dir(self._dir(k) / "tls")

    def supervise(self) -> None:
        """Start the QSD of every export whose QSD is not running (after a host restart
        or a crash of the QSD); on its old port, which the primary knows."""
        for rec in self.store.obj_list(EXPORT_KIND):
            k = export_key(rec["pool"], rec["volume"])
            if self._pid(k) is not None:
                continue
            try:
                self._launch(k, rec, f"to serve the replica {k} again")
            except (BackendError, OSError) as e:
                log.warning("replica %s: %s", k, e)

    def promote(self, primary_path: str, former: str) -> Path | None:
        """An HA failover starts the primary's domain here: the copy of the disk the
        primary had at `primary_path` becomes this host's own volume. Its export ends
        (the QSD holds the image) and it is recorded as replicated to `former`, the dead
        primary, and degraded, so `volume resync` makes a copy again. None if this host
        keeps no copy of that disk."""
        for rec in self.store.obj_list(EXPORT_KIND):
            if not primary_path or rec.get("primary_path") != primary_path:
                continue
            self.stop(rec["pool"], rec["volume"])
            self.store.obj_put(REPLICA_KIND, export_key(rec["pool"], rec["volume"]), {
                "pool": rec["pool"], "volume": rec["volume"], "host": former,
                "address": "", "port": 0, "identity": "", "key": "", "state": "degraded",
                "progress": 0.0, "domain": None, "vdev": None, "created_at": time.time(),
                "error": f"this copy took over from {former} (HA failover); "
                         f"`xenia volume resync {rec['volume']}` makes a new copy"})
            log.warning("replica %s/%s now serves the domain of %s here", rec["pool"],
                        rec["volume"], former)
            return Path(rec["path"])
        return None

    def psk_file(self, pool: str, volume: str) -> Path:
        return self._dir(export_key(pool, volume)) / "tls" / PSK_FILE
