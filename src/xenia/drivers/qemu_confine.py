"""QemuConfinement: what the QEMU driver does to confine a domain's QEMU (qemu/confine.py
has the layers): give it its files, set up its device cgroup, wrap its argv in the jail;
and undo all of it when the domain ends.

Ordering: the files are given before QEMU starts (it opens them as its own user), and
given back only after it has exited (release); a hot-plugged disk is given before
blockdev-add and given back after blockdev-del.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from xenia.config.model import DiskSpec
from xenia.devices import disk as diskdev
from xenia.devices import display
from xenia.errors import XeniaError
from xenia.hostos.ownership import Identity, Ledger
from xenia.paths import Paths
from xenia.qemu import confine
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
    res = run_tool([img, "info", "--backing-chain", "--output=json", "-U", "--", str(path)],
                   doing)
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


class QemuConfinement:
    def __init__(self, paths: Paths, user: str = confine.QEMU_USER) -> None:
        self.paths = paths
        self.user = user
        self._ledger: Ledger | None = None

    def identity(self) -> Identity:
        return confine.qemu_identity(self.user)

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = Ledger(self.paths.state / "ownership.json", self.identity())
        return self._ledger

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
        return write, read

    def prepare(self, rec: DomainRecord, files: RunFiles, nvram: Path | None, accel: str,
                argv: list[str]) -> list[str]:
        """Give the domain its files and run dir, make its device cgroup; the argv that
        starts its QEMU confined. Undo: release()."""
        who = self.identity()
        write, read = self.given_files(rec, nvram)
        nodes = confine.device_nodes(accel, bool(rec.config.pci))
        nodes += [(p, True) for p in read + write if Path(p).is_block_device()]
        try:
            self.ledger.give(rec.uuid, write=[*write, str(files.dir)], read=read)
            procs = confine.setup_device_cgroup(rec.uuid, nodes)
        except XeniaError:
            self.release(rec)
            raise
        rec.runtime["confinement"] = {
            "user": self.user, "uid": who.uid, "sandbox": confine.SANDBOX,
            "private_dev": [p for p, _ in nodes],
            # False on cgroup v2 hosts: no devices.allow there (docs/security.md).
            "device_cgroup": procs is not None,
        }
        return confine.jail_argv(who, nodes, procs, argv, files.stderr)

    def give(self, rec: DomainRecord, spec: DiskSpec, path: Path | None) -> list[str]:
        """Give a hot-plugged disk or an inserted cdrom; the paths to give back on undo."""
        if not self.confined(rec):
            return []
        write, read = disk_files(spec, path)
        given = self.ledger.give(rec.uuid, write=write, read=read)
        pid = rec.runtime.get("pid")
        for p in write + read:
            if Path(p).is_block_device() and isinstance(pid, int):
                try:
                    confine.add_block_device(rec.uuid, pid, p,
                                             self.identity())
                except XeniaError:
                    self.give_back(rec, given)
                    raise
        return given

    def give_file(self, rec: DomainRecord, path: Path) -> list[str]:
        """Give a file QEMU writes for a while (a save file)."""
        if not self.confined(rec):
            return []
        return self.ledger.give(rec.uuid, write=[str(path)])

    def give_back(self, rec: DomainRecord, paths: list[str]) -> None:
        if paths:
            self.ledger.give_back(rec.uuid, only=paths)

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
