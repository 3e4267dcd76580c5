"""QemuConfinement: what the QEMU driver does to confine a domain's QEMU (qemu/confine.py
has the layers): give it its files, set up its device cgroup, wrap its argv in the jail;
and undo all of it when the domain ends.

Ordering: the files are given before QEMU starts (it opens them as its own user), and
given back only after it has exited (release); a hot-plugged disk is given before
blockdev-add and given back after blockdev-del.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
from pathlib import Path

from xenia.config.model import DiskSpec
from xenia.devices import disk as diskdev
from xenia.devices import display, spice
from xenia.errors import BackendError, XeniaError
from xenia.hostos.ownership import Identity
from xenia.hostos.qemuids import UidRange, UidsAndLedger
from xenia.paths import Paths
from xenia.qemu import confine, vscsi, xldevices
from xenia.qemu.cmdline import RunFiles
from xenia.store.base import DomainRecord
from xenia.tools import find_tool, run_tool

log = logging.getLogger(__name__)

# Formats whose images may name a backing file QEMU opens by itself.
_BACKED = ("qcow2", "qed", "vmdk")


def backing_chain(path: Path, fmt: str) -> list[str]:
    """The backing files below image `path` (all of them, lowest last)."""
    if fmt not in _BACKED:
        return []
    doing = f"to read the backing chain of {path}"
    img = find_tool("qemu-img", "qemu-utils", doing)
    # -f: the format the config gives, never probed from the content (a guest can write
    # a qcow2 header naming any host file into a raw disk it owns).
    res = run_tool([img, "info", "--backing-chain", "--output=json", "-U", "-f", fmt, "--",
                    str(path)], doing)
    try:
        chain = json.loads(res.stdout)
    except ValueError:
        return []
    return [str(i["filename"]) for i in chain[1:] if isinstance(i, dict) and "filename" in i]


def disk_files(spec: DiskSpec, path: Path | None) -> tuple[list[str], list[str]]:
    """(written, read) files of one disk."""
    if path is None:
        return [], []
    below = backing_chain(path, spec.format)
    if spec.readonly or spec.is_cdrom:
        return [], [str(path), *below]
    return [str(path)], below


def _is_block(node: str, pid: int) -> bool:
    """Whether `node` is a block device on the host or in QEMU `pid`'s private /dev (never
    one of its base nodes, which a disk may name too: `target=/dev/zero`)."""
    for where in (node, f"/proc/{pid}/root{node}"):
        with contextlib.suppress(OSError):
            if stat.S_ISBLK(os.stat(where).st_mode):
                return True
    return False


class QemuConfinement(UidsAndLedger):
    def __init__(self, paths: Paths, user: str = confine.QEMU_USER,
                 uids: UidRange | None = None) -> None:
        super().__init__(paths.state / "ownership.json", uids)
        self.paths = paths
        self.user = user

    def assign(self, rec: DomainRecord) -> Identity:
        """Give the domain's QEMU a uid of its own (group: the QEMU user's), recorded in
        rec.runtime["confinement"] so a restarted xeniad knows it. Undo: release()."""
        group = confine.qemu_identity(self.user).gid
        old = (rec.runtime.get("confinement") or {}).get("uid")
        if isinstance(old, int) and self.uids.stale(old):
            # A new QEMU for the same record (a restart after a crash) whose last one
            # was not released: its claim would otherwise stay while xeniad runs.
            self.uids.free(old, rec.uuid)
        uid = self.uids.allocate(rec.uuid)
        rec.runtime["confinement"] = {"user": self.user, "uid": uid, "gid": group}
        return Identity(uid, group)

    @staticmethod
    def identity(rec: DomainRecord) -> Identity:
        """Who the domain's QEMU runs as (from its record). A QEMU confined by an older
        xeniad (all as xenia-qemu) has its uid there but no gid: the QEMU user's."""
        conf = rec.runtime.get("confinement") or {}
        if not isinstance(conf.get("uid"), int):
            raise BackendError(f"Failed to find the QEMU uid of '{rec.name}': its record "
                               "has none (a QEMU started by an older Xenia?)")
        gid = conf.get("gid")
        if not isinstance(gid, int):
            gid = confine.qemu_identity(str(conf.get("user") or confine.QEMU_USER)).gid
        return Identity(conf["uid"], gid)

    @staticmethod
    def tap_owner(rec: DomainRecord) -> tuple[int, int | None]:
        """The owner of the domain's taps: its QEMU's uid, and no group (never the QEMU
        group, through which every other QEMU could attach to the tap; nor group 0: the
        kernel wants the owner and the group to match when both are set)."""
        conf = rec.runtime.get("confinement") or {}
        uid = conf.get("uid")
        return (uid, None) if isinstance(uid, int) else (0, 0)

    def given_files(self, rec: DomainRecord, nvram: Path | None) -> tuple[list[str], list[str]]:
        """(written, read) files domain `rec` is given at start."""
        cfg = rec.config
        write: list[str] = []
        read = [p for p in (cfg.kernel, cfg.ramdisk) if p]
        if cfg.type == "hvm" and display.firmware_kind(cfg) == "path" and cfg.firmware:
            read.append(str(cfg.firmware))
        if nvram is not None:
            write.append(str(nvram))
        for spec in cfg.disks:
            if not diskdev.has_host_file(spec):
                continue
            w, r = disk_files(spec, diskdev.target_path(spec))
            write += w
            read += r
        w, r = xldevices.usb_storage_files(cfg.usbdev)
        # A p9 share's directory is written (security_model none and mapped both create
        # the guest's files as QEMU's own user).
        read += spice.tls_files(rec.runtime.get(spice.RUNTIME_TLS_DIR))
        return write + w + xldevices.p9_dirs(cfg) + vscsi.paths(cfg), read + r

    def prepare(self, rec: DomainRecord, files: RunFiles, nvram: Path | None, accel: str,
                argv: list[str]) -> list[str]:
        """Give the domain its files and run dir, make its device cgroup; the argv that
        starts its QEMU confined. Undo: release()."""
        who = self.identity(rec)
        write, read = self.given_files(rec, nvram)
        nodes = confine.device_nodes(accel, bool(rec.config.pci))
        nodes += [(p, True) for p in read + write if Path(p).is_block_device()]
        try:
            self.ledger.give(rec.uuid, write=[*write, str(files.dir)], read=read, who=who)
            procs, layers = confine.setup_device_cgroup(rec.uuid, nodes)
        except XeniaError:
            self.release(rec)
            raise
        rec.runtime["confinement"] = {
            "user": self.user, "uid": who.uid, "gid": who.gid, "sandbox": confine.SANDBOX,
            "private_dev": [p for p, _ in nodes],
            # "v1" devices.allow, "bpf" the v2 program; False where neither could be
            # made (docs/security.md).
            "device_cgroup": bool(layers), "device_cgroup_layers": layers,
        }
        return confine.jail_argv(who, nodes, procs, argv, files.stderr)

    def give(self, rec: DomainRecord, spec: DiskSpec, path: Path | None) -> list[str]:
        """Give a hot-plugged disk or an inserted cdrom; the paths to give back on undo."""
        if not self.confined(rec):
            return []
        write, read = disk_files(spec, path)
        given = self.ledger.give(rec.uuid, write=write, read=read, who=self.identity(rec))
        pid = rec.runtime.get("pid")
        conf = rec.runtime["confinement"]
        for p in write + read:
            if p in conf.get("private_dev", []):
                continue  # another disk of this domain has it in QEMU's /dev already
            if Path(p).is_block_device() and isinstance(pid, int):
                try:
                    confine.add_block_device(rec.uuid, pid, p, self.identity(rec),
                                             list(conf.get("private_dev", [])))
                    conf["private_dev"] = [*conf.get("private_dev", []), p]
                except XeniaError:
                    # Allowed in the cgroups, maybe made in QEMU's /dev: undone first.
                    with contextlib.suppress(XeniaError):
                        confine.remove_block_device(rec.uuid, pid, p,
                                                    list(conf.get("private_dev", [])))
                    self.give_back(rec, given)
                    raise
        return given

    def give_files(self, rec: DomainRecord, write: list[str], read: list[str]) -> list[str]:
        """Give files a hot-plugged device's QEMU node opens (a USB stick's image)."""
        if not self.confined(rec):
            return []
        return self.ledger.give(rec.uuid, write=write, read=read, who=self.identity(rec))

    def give_file(self, rec: DomainRecord, path: Path) -> list[str]:
        """Let QEMU read a file for a while (a migration's PSK file): read only, so a QEMU
        taken over cannot change the key it is handed."""
        if not self.confined(rec):
            return []
        return self.ledger.give(rec.uuid, read=[str(path)], who=self.identity(rec))

    def give_back(self, rec: DomainRecord, paths: list[str]) -> None:
        """Give back `paths` (after QEMU closed them); a block device among them is first
        taken out of QEMU's private /dev and its device cgroups, or QEMU could reopen it."""
        if not paths:
            return
        self._remove_nodes(rec, {os.path.realpath(p) for p in paths})
        self.ledger.give_back(rec.uuid, only=paths)

    def _remove_nodes(self, rec: DomainRecord, paths: set[str]) -> None:
        conf = rec.runtime.get("confinement") or {}
        pid = rec.runtime.get("pid")
        if not isinstance(pid, int):
            return
        for node in list(conf.get("private_dev", [])):
            if os.path.realpath(node) not in paths or not _is_block(node, pid):
                continue
            rest = [p for p in conf["private_dev"] if p != node]
            try:
                confine.remove_block_device(rec.uuid, pid, node, rest)
            except XeniaError as e:
                # The disk is gone from QEMU already: the detach goes on; the node
                # stays listed, so the domain's end still drops its cgroups.
                log.error("domain %s: %s is still in its QEMU's /dev: %s", rec.name, node, e)
                continue
            conf["private_dev"] = rest

    def give_back_disk(self, rec: DomainRecord, spec: DiskSpec) -> None:
        """After a disk's blockdev-del: give back its files no other disk still uses."""
        if not self.confined(rec) or not diskdev.has_host_file(spec):
            return
        write, read = disk_files(spec, diskdev.target_path(spec))
        keep: set[str] = set()
        for other in rec.config.disks:
            if other is not spec and diskdev.has_host_file(other):
                w, r = disk_files(other, diskdev.target_path(other))
                keep.update(w + r)
        gone = [p for p in write + read if p not in keep]
        self.give_back(rec, [os.path.realpath(p) for p in gone])

    @staticmethod
    def confined(rec: DomainRecord) -> bool:
        """An older xeniad's QEMU (adopted, running as root) has no confinement record;
        it keeps running as it was until restarted."""
        return bool(rec.runtime.get("confinement"))

    def release(self, rec: DomainRecord) -> None:
        """After QEMU exited: its files back to their owners, its device cgroup gone."""
        try:
            self.ledger.give_back(rec.uuid)
        except XeniaError as e:
            log.warning("domain %s: giving its files back failed: %s", rec.name, e)
        confine.remove_device_cgroup(rec.uuid)
        self.free_uid(rec)

    def adopt(self, rec: DomainRecord) -> None:
        """A restarted xeniad found the domain's QEMU running: the uid's claim names this
        xeniad now. Otherwise it names the dead one, and once the QEMU dies the claim is
        stale and its uid could go to a new domain before this one's files are given
        back (release frees the uid only after)."""
        uid = (rec.runtime.get("confinement") or {}).get("uid")
        if isinstance(uid, int) and self.uids.holds(uid):
            self.uids.adopt(uid, rec.uuid)

    def free_uid(self, rec: DomainRecord) -> None:
        """The domain's QEMU uid back to the range (after QEMU exited: a uid handed on
        while its QEMU runs would give the next domain its files)."""
        uid = (rec.runtime.get("confinement") or {}).get("uid")
        if isinstance(uid, int) and self.uids.holds(uid):
            self.uids.free(uid, rec.uuid)
