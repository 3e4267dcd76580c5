"""Replication: replicated volumes on their primary host (`volume create --replica`,
`volume resync`), and the state each one is in (in-sync, syncing N%, degraded).

A replicated volume is a local volume plus a copy on a peer (the replica host), which
serves it over NBD with TLS-PSK (storage/replicas.py). Whenever a domain using the volume
boots here, its QEMU mirrors the disk into that copy with an active mirror
(drivers/qemu_replica.py): the first pass copies it all, then each write completes only
once both copies have it. A "replica" document a volume records where the copy is, its
PSK and its last seen state; a monitor task polls the domains' mirror jobs once a second
and writes state changes there, so `volume info` reads it without asking QEMU.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xenia.devices import disk as diskdev
from xenia.drivers.base import Instance
from xenia.drivers.qemu_replica import ReplicaLink
from xenia.errors import BackendError, InvalidConfig, NotFound, XeniaError
from xenia.host.manager import DomainManager
from xenia.peers.client import PeerClient
from xenia.peers.psk import make_psk, remove_psk_dir, write_psk_dir
from xenia.peers.secrets import PeerTokenFiles
from xenia.storage.manager import StorageManager
from xenia.storage.replica_records import REPLICA_KIND, export_key
from xenia.storage.units import check_name
from xenia.store.base import DomainRecord

log = logging.getLogger(__name__)

POLL = 1.0
# A replica whose host accepts no TCP connection for this long is cut off (its mirror
# connection yanked, the volume degraded): DRBD's default peer timeout is 6 s as well.
# Shorter would degrade volumes over a network blip (a resync copies the whole disk).
SILENT_AFTER = 6.0
PROBE_TIMEOUT = 1.0
IN_SYNC, SYNCING, DEGRADED, PENDING = "in-sync", "syncing", "degraded", "pending"


class Replication:
    def __init__(self, manager: DomainManager, storage: StorageManager) -> None:
        self.m = manager
        self.storage = storage
        # Set by xeniad on a cluster member: a member reachable without `host add`.
        self.cluster_peer: Callable[[str], PeerClient | None] | None = None
        manager.start_hooks.append(self.on_start)
        self._silent_since: dict[str, float] = {}  # export key -> first failed probe

    # -- helpers -------------------------------------------------------------------------
    def _dir(self, key: str) -> Path:
        return self.m.paths.run / "replicas-out" / key

    def _peer(self, name: str) -> PeerClient:
        try:
            return PeerClient.from_store(self.m.store, name,
                                         PeerTokenFiles(self.m.paths.peer_tokens))
        except NotFound:
            found = self.cluster_peer(name) if self.cluster_peer is not None else None
            if found is None:
                raise
            return found

    def record(self, pool: str, volume: str) -> dict[str, Any] | None:
        return self.m.store.obj_get(REPLICA_KIND, export_key(pool, volume))

    def _save(self, rec: dict[str, Any], **changes: Any) -> None:
        if all(rec.get(k) == v for k, v in changes.items()):
            return
        rec.update(changes, updated=time.time())
        self.m.store.obj_put(REPLICA_KIND, export_key(rec["pool"], rec["volume"]), rec)

    async def _serve_on(self, peer: PeerClient, pool: str, volume: str, doing: str
                        ) -> dict[str, Any]:
        """Have `peer` keep and export a copy of pool/volume; the record's new fields."""
        info = await asyncio.to_thread(self.storage.get_volume, pool, volume)
        identity, key = make_psk("xenia-repl")
        ans = await peer.arequest("POST", "/v1/replicas", {
            "pool": pool, "volume": volume, "size": info.virtual_size,
            "format": info.format, "listen_host": peer.host, "identity": identity,
            "key": key, "primary": os.uname().nodename,
            "primary_path": str(info.path)}, timeout=60)
        if not isinstance(ans, dict) or "port" not in ans:
            raise BackendError(f"Failed {doing}: the replica host answered {ans!r}")
        # A directory a key: QEMU is given the file it reads (ownership.py), and a file
        # renamed over a given one would be root's again.
        write_psk_dir(self._dir(export_key(pool, volume)) / identity, identity, key)
        return {"address": peer.host, "port": int(ans["port"]), "identity": identity,
                "key": key, "remote_path": ans.get("path")}

    # -- verbs ---------------------------------------------------------------------------
    async def create_volume(self, pool: str, name: str, size: str | int, fmt: str | None,
                            replica: str) -> dict[str, Any]:
        """A new volume here and its copy on host `replica`; both or neither."""
        doing = f"to create replicated volume '{name}' in pool '{pool}'"
        check_name("volume", name, doing)
        peer = self._peer(replica)
        await asyncio.to_thread(self.storage.create_volume, pool, name, size, fmt)
        try:
            link = await self._serve_on(peer, pool, name, doing)
        except BaseException:
            with contextlib.suppress(XeniaError):
                await asyncio.to_thread(self.storage.delete_volume, pool, name)
            raise
        # Both copies are new and empty: equal until the first write, which is mirrored.
        rec = {"pool": pool, "volume": name, "host": replica, **link, "state": IN_SYNC,
               "progress": 100.0, "error": None, "domain": None, "vdev": None,
               "created_at": time.time()}
        self.m.store.obj_put(REPLICA_KIND, export_key(pool, name), rec)
        return self.describe(pool, name)

    def describe(self, pool: str, name: str) -> dict[str, Any]:
        return self.storage.describe_volume(self.storage.get_volume(pool, name))

    async def resync(self, pool: str, name: str, replica: str | None = None
                     ) -> dict[str, Any]:
        """Make the copy anew, on the same host or on `replica`, while the guest runs."""
        doing = f"to resync volume '{name}' in pool '{pool}'"
        check_name("volume", name, doing)
        rec = self.record(pool, name)
        if rec is None:
            raise InvalidConfig(f"Failed {doing}: it is not replicated; create it with "
                                "`xenia volume create --replica HOST`")
        host = replica or str(rec["host"])
        peer = self._peer(host)
        link = await self._serve_on(peer, pool, name, doing)
        old = str(rec["host"])
        rec.update({"host": host, **link})
        inst, drec = self._user(rec)
        if inst is not None and drec is not None:
            drv = self.m.driver_for(drec.config)
            # The old mirror first: its node holds the old connection and the job name.
            await drv.detach_replica(inst, str(rec["vdev"]))
            self._save(rec, state=SYNCING, progress=0.0, error=None)
            await self._attach(drec, inst, rec)
        else:
            self._save(rec, state=PENDING, progress=0.0,
                       error="copied in full when a domain using the volume starts")
        if old != host:
            asyncio.get_running_loop().create_task(self._drop_old(old, pool, name))
        return self.describe(pool, name)

    async def _drop_old(self, host: str, pool: str, name: str) -> None:
        await asyncio.to_thread(self._drop, host, pool, name)

    def _drop(self, host: str, pool: str, name: str) -> None:
        """Tell the (former) replica host to stop serving its copy (it may well be dead);
        the copy stays there, an ordinary volume its user may delete."""
        try:
            peer = self._peer(host)
            peer.timeout = 5.0
            peer.request("DELETE", f"/v1/replicas/{pool}/{name}")
        except XeniaError as e:
            log.info("replica of %s/%s on %s not dropped: %s", pool, name, host, e.message)

    def forget(self, pool: str, name: str) -> None:
        """The volume was deleted here (blocking; from the API's thread pool): its
        record and keys go, and the replica host stops serving the copy."""
        rec = self.record(pool, name)
        if rec is None:
            return
        self.m.store.obj_delete(REPLICA_KIND, export_key(pool, name))
        for d in self._dir(export_key(pool, name)).glob("*"):
            remove_psk_dir(d)
        with contextlib.suppress(OSError):
            self._dir(export_key(pool, name)).rmdir()
        if rec.get("port"):
            self._drop(str(rec["host"]), pool, name)

    def replica_host_of(self, path: str) -> str | None:
        """The host keeping the copy of the volume at `path`, None if it has none: what
        HA accepts instead of a shared pool (the domain may restart there only)."""
        found = self.storage.volume_at(path)
        rec = self.record(*found) if found is not None else None
        return str(rec["host"]) if rec is not None else None

    # -- domains -------------------------------------------------------------------------
    def _user(self, rec: dict[str, Any]) -> tuple[Instance | None, DomainRecord | None]:
        uuid = rec.get("domain")
        if not uuid:
            return None, None
        inst = self.m.instance_of(str(uuid))
        return (inst, inst.record) if inst is not None else (None, None)

    async def _attach(self, drec: DomainRecord, inst: Instance, rec: dict[str, Any]) -> None:
        link = ReplicaLink(vdev=str(rec["vdev"]), host=str(rec["address"]),
                           port=int(rec["port"]), identity=str(rec["identity"]),
                           tls_dir=self._dir(export_key(rec["pool"], rec["volume"]))
                           / str(rec["identity"]))
        await self.m.driver_for(drec.config).attach_replica(inst, link)

    async def on_start(self, drec: DomainRecord, inst: Instance) -> None:
        """A domain boots: mirror each of its replicated disks. A replica that cannot be
        reached does not stop the boot: the volume is degraded until a resync."""
        for spec in drec.config.disks:
            if spec.target is None or spec.readonly or spec.is_cdrom:
                continue
            if diskdev.is_remote(spec):  # a path inside a driver domain, not the host's
                continue
            found = await asyncio.to_thread(self.storage.volume_at, spec.target)
            rec = self.record(*found) if found is not None else None
            if rec is None:
                continue
            rec.update(domain=drec.uuid, vdev=spec.vdev)
            if not rec.get("port"):  # a copy HA promoted: no replica until a resync
                self._save(rec, state=DEGRADED)
                continue
            try:
                await self._attach(drec, inst, rec)
                self._save(rec, state=SYNCING, progress=0.0, error=None)
            except XeniaError as e:
                log.warning("domain %s: replica of %s not reachable: %s", drec.name,
                            spec.vdev, e.message)
                self._save(rec, state=DEGRADED, error=e.message)

    async def poll(self) -> None:
        """One look at every replicated volume a running domain uses."""
        for rec in self.m.store.obj_list(REPLICA_KIND):
            inst, drec = self._user(rec)
            if inst is None or drec is None:
                continue
            try:
                jobs = await self.m.driver_for(drec.config).replica_status(inst)
            except XeniaError:
                continue  # the domain is going away; its last state stays
            st = jobs.get(str(rec["vdev"]))
            if st is None:
                if rec.get("state") != DEGRADED:
                    self._save(rec, state=DEGRADED, error="the mirror is not running")
                continue
            if st["state"] == DEGRADED and rec.get("state") != DEGRADED:
                log.warning("replica of %s/%s on %s lost: %s", rec["pool"], rec["volume"],
                            rec["host"], st.get("error"))
            self._save(rec, state=st["state"], progress=st["progress"],
                       error=st.get("error") or rec.get("error")
                       if st["state"] == DEGRADED else None)

    async def watch_peers(self) -> None:
        """Cut off the replicas whose host went silent. A dead host that sent no TCP reset
        leaves the mirror's NBD write unanswered, and the guest's write with it (the
        mirror is write-blocking); a host that refused the connection would have failed
        the write itself. So: a TCP connect to each live mirror's export, once a poll;
        silent for SILENT_AFTER seconds -> the connection is yanked."""
        live = [rec for rec in self.m.store.obj_list(REPLICA_KIND)
                if rec.get("state") in (IN_SYNC, SYNCING) and rec.get("port")]
        keys = {export_key(r["pool"], r["volume"]) for r in live}
        for gone in set(self._silent_since) - keys:
            del self._silent_since[gone]
        answers = await asyncio.gather(*(asyncio.to_thread(
            _answers, str(r["address"]), int(r["port"])) for r in live))
        now = time.monotonic()
        for rec, ok in zip(live, answers, strict=True):
            key = export_key(rec["pool"], rec["volume"])
            if ok:
                self._silent_since.pop(key, None)
                continue
            since = self._silent_since.setdefault(key, now)
            if now - since < SILENT_AFTER:
                continue
            inst, drec = self._user(rec)
            if inst is None or drec is None:
                continue
            why = (f"its host {rec['host']} ({rec['address']}) accepted no connection for "
                   f"{now - since:.0f} s")
            log.warning("replica of %s/%s cut off: %s; the guest goes on with the local "
                        "copy", rec["pool"], rec["volume"], why)
            try:
                await self.m.driver_for(drec.config).cut_replica(inst, str(rec["vdev"]))
            except XeniaError as e:
                log.warning("cutting off the replica of %s/%s failed: %s", rec["pool"],
                            rec["volume"], e.message)
                continue
            del self._silent_since[key]
            self._save(rec, state=DEGRADED, error=f"cut off: {why}")

    async def run(self) -> None:
        while True:
            try:
                await self.watch_peers()
                await self.poll()
            except Exception:  # noqa: BLE001 - the monitor must outlive one bad poll
                log.exception("replication monitor")
            await asyncio.sleep(POLL)


def _answers(address: str, port: int) -> bool:
    """Does the replica's export accept a TCP connection? (Closed at once: the storage
    daemon drops a client that never starts the NBD handshake, and says nothing.)"""
    try:
        with socket.create_connection((address, port), timeout=PROBE_TIMEOUT):
            return True
    except OSError:
        return False
