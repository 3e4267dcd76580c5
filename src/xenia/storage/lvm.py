"""LvmDriver: a pool that is an LVM volume group; volumes are logical volumes.

Where the VG has a thin pool (config "thin_pool"), volumes are thin LVs and clones and
snapshots are thin snapshots (instant, sharing blocks). Otherwise volumes are linear LVs,
snapshots classic LVM snapshots (copy-on-write, sized like their origin) and clones full
copies. Volumes are raw (QEMU opens /dev/VG/LV as a host_device).

Snapshot LVs are named "<vol>_snap_<snap>" and tagged "xenia_snap" and "xenia_of_<vol>"; the
tags, not the name, say what they are, so a volume named like a snapshot is still a volume.

LVM activates LVs through the kernel's device-mapper. Without it (as in some containers
and micro-VMs) `pvcreate`/`vgcreate`/`vgs` still work but no LV can be created or opened:
creating or mounting such a pool fails at once and says so (`dm_available`).

`LvmCommands` builds every argv (golden files test it); `LvmDriver` runs them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from xenia.errors import AlreadyExists, BackendError, InvalidConfig, NotFound, NotSupported
from xenia.storage.driver import PoolDriver, PoolUsage, SnapshotInfo, VolumeInfo
from xenia.storage.units import valid_name

DM_CONTROL = Path("/dev/mapper/control")
SNAP_TAG = "xenia_snap"
OF_TAG = "xenia_of_"
LV_FIELDS = "lv_name,lv_attr,lv_size,lv_tags,origin,pool_lv,lv_time"
TIMEOUT = 120.0
INSTALL_HINT = "install it with `apt-get install lvm2`"


def dm_available(control: Path = DM_CONTROL, misc: Path = Path("/proc/misc")) -> bool:
    """Whether the kernel has device-mapper: its misc device is registered (module loaded
    or built in), or its control node opens. The node alone proves nothing: libdevmapper
    makes it with mknod even where the kernel has no driver behind it (open: ENODEV)."""
    try:
        if any(line.split()[-1:] == ["device-mapper"] for line in misc.read_text().splitlines()):
            return True
    except OSError:
        pass
    try:
        fd = os.open(control, os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


def snap_lv(vol: str, snap: str) -> str:
    return f"{vol}_snap_{snap}"


class LvmCommands:
    """The argv of each LVM operation on volume group `vg` (no shell, sizes in bytes)."""

    REPORT = ["--reportformat", "json", "--units", "b", "--nosuffix"]

    def __init__(self, vg: str, thin_pool: str | None = None) -> None:
        self.vg = vg
        self.thin_pool = thin_pool

    def vgs(self) -> list[str]:
        return ["vgs", *self.REPORT, "-o", "vg_name,vg_size,vg_free", "--", self.vg]

    def lvs(self) -> list[str]:
        return ["lvs", *self.REPORT, "-o", LV_FIELDS, "--", self.vg]

    def create(self, name: str, size: int) -> list[str]:
        if self.thin_pool:
            return ["lvcreate", "--yes", "--virtualsize", f"{size}b", "--thin",
                    "--name", name, f"{self.vg}/{self.thin_pool}"]
        return ["lvcreate", "--yes", "--size", f"{size}b", "--name", name, "--", self.vg]

    def remove(self, name: str) -> list[str]:
        return ["lvremove", "--yes", f"{self.vg}/{name}"]

    def snapshot(self, origin: str, name: str, tags: list[str], size: int) -> list[str]:
        """A thin snapshot needs no size and is made without the activation-skip flag
        (-kn) so it opens like any LV; a classic one gets its origin's size, so it can
        never overflow and be dropped by LVM."""
        args = ["lvcreate", "--yes", "--snapshot", "--name", name]
        for tag in tags:
            args += ["--addtag", tag]
        if self.thin_pool:
            args += ["--setactivationskip", "n"]
        else:
            args += ["--size", f"{size}b"]
        return [*args, f"{self.vg}/{origin}"]

    def activate(self, name: str) -> list[str]:
        return ["lvchange", "--activate", "y", "--ignoreactivationskip", f"{self.vg}/{name}"]

    def resize(self, name: str, size: int, shrink: bool) -> list[str]:
        args = ["lvresize", "--yes", "--size", f"{size}b"]
        if shrink:
            args.append("--force")
        return [*args, f"{self.vg}/{name}"]

    def copy(self, src: Path, dst: Path) -> list[str]:
        # -n: dst exists (an LV); raw to raw, never probed.
        return ["qemu-img", "convert", "-q", "-n", "-f", "raw", "-O", "raw", "--",
                str(src), str(dst)]


class LvmDriver(PoolDriver):
    kind = "lvm"
    formats = ("raw",)

    @property
    def vg(self) -> str:
        return str(self.config["vg"])

    @property
    def cmds(self) -> LvmCommands:
        return LvmCommands(self.vg, self.config.get("thin_pool"))

    @property
    def location(self) -> str:
        pool = self.config.get("thin_pool")
        return f"VG {self.vg}" + (f" (thin pool {pool})" if pool else "")

    def _run(self, argv: list[str], doing: str, timeout: float | None = TIMEOUT) -> str:
        binary = shutil.which(argv[0])
        if binary is None:
            raise NotSupported(f"Failed {doing}: {argv[0]} is not installed; {INSTALL_HINT}")
        # LVM warns about every inherited descriptor; ours are not leaks it should report.
        env = dict(os.environ, LVM_SUPPRESS_FD_WARNINGS="1")
        try:
            res = subprocess.run([binary, *argv[1:]], capture_output=True, text=True,
                                 timeout=timeout, stdin=subprocess.DEVNULL, env=env)
        except subprocess.TimeoutExpired as e:
            raise BackendError(f"Failed {doing}: {argv[0]} did not finish in {timeout}s") from e
        if res.returncode != 0:
            said = "; ".join(x.strip() for x in res.stderr.splitlines() if x.strip())
            if "already exists" in said:
                raise AlreadyExists(f"Failed {doing}: {said}")
            if "not found" in said:
                raise NotFound(f"Failed {doing}: {said}")
            raise BackendError(f"Failed {doing}: {said or f'{argv[0]} exited {res.returncode}'}")
        return res.stdout

    def _report(self, argv: list[str], key: str, doing: str) -> list[dict[str, str]]:
        out = self._run(argv, doing)
        try:
            rows: list[dict[str, str]] = json.loads(out)["report"][0][key]
        except (ValueError, KeyError, IndexError) as e:
            raise BackendError(f"Failed {doing}: {argv[0]} printed no report: {out[:200]!r}"
                               ) from e
        return rows

    def _require_dm(self, doing: str) -> None:
        if not dm_available():
            raise NotSupported(
                f"Failed {doing}: this host's kernel has no device-mapper ({DM_CONTROL} is "
                "missing), and LVM needs it to activate logical volumes; load it "
                "(`modprobe dm_mod`) where the kernel has it, or use a dir or block pool"
            )

    # -- pool lifecycle ------------------------------------------------------------------
    def create(self) -> dict[str, Any]:
        doing = f"to create pool '{self.name}'"
        if not valid_name(self.vg):
            raise InvalidConfig(f"Failed {doing}: '{self.vg}' is not a volume group name")
        # Checked first: without device-mapper nothing below could ever be used.
        self._require_dm(doing)
        self._report(self.cmds.vgs(), "vg", doing)  # NotFound-like error names the VG
        thin = [lv["lv_name"] for lv in self._lvs(doing) if lv["lv_attr"].startswith("t")]
        return {"vg": self.vg, "thin_pool": thin[0] if thin else None}

    def delete(self) -> None:
        pass  # the VG is the user's; the caller checked that no volume is left

    def mount(self) -> None:
        doing = f"to mount pool '{self.name}'"
        self._require_dm(doing)
        self._report(self.cmds.vgs(), "vg", doing)

    def unmount(self) -> None:
        pass  # LVs stay active: running domains have them open

    def usage(self) -> PoolUsage:
        row = self._report(self.cmds.vgs(), "vg", f"to read pool '{self.name}'")[0]
        return PoolUsage(capacity=int(row["vg_size"]), available=int(row["vg_free"]))

    # -- volumes -------------------------------------------------------------------------
    def _lvs(self, doing: str) -> list[dict[str, str]]:
        return self._report(self.cmds.lvs(), "lv", doing)

    def _volumes(self) -> dict[str, dict[str, str]]:
        rows = self._lvs(f"to list pool '{self.name}'")
        return {lv["lv_name"]: lv for lv in rows
                if not lv["lv_attr"].startswith("t") and SNAP_TAG not in lv["lv_tags"].split(",")
                and valid_name(lv["lv_name"])}

    def _snapshots(self, vol: str) -> dict[str, dict[str, str]]:
        tag = OF_TAG + vol
        prefix = snap_lv(vol, "")
        return {lv["lv_name"][len(prefix):]: lv for lv in self._lvs(f"to list pool '{self.name}'")
                if tag in lv["lv_tags"].split(",") and lv["lv_name"].startswith(prefix)}

    def volume_names(self) -> list[str]:
        return sorted(self._volumes())

    def _lv(self, name: str) -> dict[str, str]:
        lv = self._volumes().get(name)
        if lv is None:
            raise NotFound(f"Failed to find volume '{name}' in pool '{self.name}': no such "
                           f"volume (see `xenia volume list --pool {self.name}`)")
        return lv

    def _info(self, name: str, lv: dict[str, str]) -> VolumeInfo:
        return VolumeInfo(name=name, pool=self.name, format="raw",
                          path=Path("/dev") / self.vg / name,
                          virtual_size=int(lv["lv_size"]), allocation=int(lv["lv_size"]),
                          snapshots=sorted(self._snapshots(name)))

    def list_volumes(self) -> list[VolumeInfo]:
        return [self._info(n, lv) for n, lv in sorted(self._volumes().items())]

    def volume_info(self, name: str) -> VolumeInfo:
        return self._info(name, self._lv(name))

    def volume_path(self, name: str) -> Path:
        self._lv(name)
        return Path("/dev") / self.vg / name

    def create_volume(self, name: str, size: int, fmt: str) -> VolumeInfo:
        doing = f"to create volume '{name}' in pool '{self.name}'"
        if fmt != "raw":
            raise InvalidConfig(f"Failed {doing}: LVM volumes are raw (use --format raw)")
        if name in self._volumes():
            raise AlreadyExists(f"Failed {doing}: pool '{self.name}' has a volume '{name}'")
        self._run(self.cmds.create(name, size), doing)
        return self.volume_info(name)

    def delete_volume(self, name: str) -> None:
        doing = f"to delete volume '{name}' in pool '{self.name}'"
        self._lv(name)
        # Snapshots first: a failure in between leaves a volume without some snapshots,
        # never snapshots without their volume.
        for snap in sorted(self._snapshots(name)):
            self._run(self.cmds.remove(snap_lv(name, snap)), doing)
        self._run(self.cmds.remove(name), doing)

    def clone_volume(self, src: str, new: str, linked: bool = True) -> VolumeInfo:
        doing = f"to clone volume '{src}' to '{new}' in pool '{self.name}'"
        lv = self._lv(src)
        if new in self._volumes():
            raise AlreadyExists(f"Failed {doing}: pool '{self.name}' has a volume '{new}'")
        if self.config.get("thin_pool") and linked:
            # A thin snapshot is a writable, independent volume sharing blocks.
            self._run(self.cmds.snapshot(src, new, [], int(lv["lv_size"])), doing)
            return self.volume_info(new)
        self._run(self.cmds.create(new, int(lv["lv_size"])), doing)
        try:
            self._run(self.cmds.copy(self.volume_path(src), self.volume_path(new)), doing,
                      timeout=None)
        except BackendError:
            self._run(self.cmds.remove(new), doing)
            raise
        return self.volume_info(new)

    def resize_volume(self, name: str, size: int, shrink: bool = False) -> VolumeInfo:
        doing = f"to resize volume '{name}' in pool '{self.name}'"
        current = int(self._lv(name)["lv_size"])
        if size < current and not shrink:
            raise InvalidConfig(f"Failed {doing}: shrinking cuts off the data at the end, so "
                                "it needs --shrink (shrink the filesystem inside first)")
        if size != current:
            self._run(self.cmds.resize(name, size, size < current), doing)
        return self.volume_info(name)

    def dependents(self, name: str) -> list[str]:
        return []  # LVM snapshots and thin clones are LVs of their own, not overlays

    # -- snapshots -----------------------------------------------------------------------
    def _snap_info(self, vol: str, snap: str, lv: dict[str, str]) -> SnapshotInfo:
        return SnapshotInfo(name=snap, volume=vol, path=Path("/dev") / self.vg / snap_lv(vol, snap),
                            format="raw", virtual_size=int(lv["lv_size"]),
                            allocation=int(lv["lv_size"]), created=0.0)

    def create_snapshot(self, name: str, snap: str) -> SnapshotInfo:
        doing = f"to snapshot volume '{name}' as '{snap}' in pool '{self.name}'"
        lv = self._lv(name)
        if snap in self._snapshots(name):
            raise AlreadyExists(f"Failed {doing}: volume '{name}' has a snapshot '{snap}'")
        self._run(self.cmds.snapshot(name, snap_lv(name, snap), [SNAP_TAG, OF_TAG + name],
                                     int(lv["lv_size"])), doing)
        return self._snap_info(name, snap, self._snapshots(name)[snap])

    def list_snapshots(self, name: str) -> list[SnapshotInfo]:
        self._lv(name)
        return [self._snap_info(name, s, lv) for s, lv in sorted(self._snapshots(name).items())]

    def _snap(self, name: str, snap: str) -> None:
        if snap not in self._snapshots(name):
            raise NotFound(f"Failed to find snapshot '{snap}' of volume '{name}' in pool "
                           f"'{self.name}'")

    def delete_snapshot(self, name: str, snap: str) -> None:
        self._snap(name, snap)
        self._run(self.cmds.remove(snap_lv(name, snap)),
                  f"to delete snapshot '{snap}' of volume '{name}'")

    def restore_snapshot(self, name: str, snap: str) -> VolumeInfo:
        doing = f"to restore volume '{name}' from snapshot '{snap}' in pool '{self.name}'"
        self._snap(name, snap)
        # A copy, not `lvconvert --merge`: merging consumes the snapshot, and the verb
        # promises the snapshot stays.
        if self.config.get("thin_pool"):
            self._run(self.cmds.activate(snap_lv(name, snap)), doing)
        self._run(self.cmds.copy(Path("/dev") / self.vg / snap_lv(name, snap),
                                 self.volume_path(name)), doing, timeout=None)
        return self.volume_info(name)
