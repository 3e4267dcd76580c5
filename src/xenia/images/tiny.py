"""The "tiny" guest image: a Debian cloud kernel and a busybox initramfs, built from .debs.

Main entry points: `build_tiny()` (build or return the cached image), `list_images()`,
`find_image()` and the `ImageInfo` dataclass.

Build
-----
The kernel comes from Debian's `linux-image-cloud-amd64` metapackage (followed to the
`linux-image-<version>-cloud-amd64` package it depends on) and busybox from `busybox-static`;
both are fetched with `apt-get download` into a cache (default `images_dir/cache`), unpacked
with `dpkg-deb -x` into a temporary directory and never installed on the host. Module
dependencies are resolved in Python from each module's `.modinfo` (see `kmod`), and the
initramfs (newc cpio, gzip) is written in Python (see `initramfs`). The result,
`images_dir/tiny/{vmlinuz,initrd.img,manifest.json}`, appears atomically: it is built in a
temporary directory and renamed into place; concurrent builds serialise on a lock file.

Guest contract (other code relies on this; the scripts are in `images/data/tiny-*`)
-----------------------------------------------------------------------------------
- Boot: direct kernel boot with `-kernel vmlinuz -initrd initrd.img`; the command line must
  include `console=ttyS0` (`ImageInfo.cmdline` is the suggested base). On microvm add
  `tsc_early_khz=<host TSC kHz>` (it hangs sometimes without).
- Console: init prints `xenia-tiny: <step>` progress lines and then exactly the line
  `xenia-tiny: ready` (READY_LINE) once everything below is done. Then a root login shell
  (busybox ash, with a controlling tty via cttyhack) runs on the console, respawned whenever
  it exits. Its prompt is `<cwd> # `, i.e. `/ # ` at start (PROMPT). Input sent right after
  the ready line is buffered by the tty until the shell reads it. For scripted use: the
  shell echoes input (wrapping it at 80 columns) and after each prompt may send `ESC[6n`
  (a cursor position query; no answer is needed), so bracket a command's output with
  markers, e.g. `echo "BEG""IN"; cmd; echo "E""ND $?"`. A client connected to the console
  must keep reading, or QEMU stalls the guest's UART (a panic took 43 s to print).
- Kernel messages: just before the ready line the console loglevel drops to 4 (errors and
  worse) so they do not interleave with shell output; `xenia.loglevel=N` picks another
  level, and `loglevel=`, `debug` or `ignore_loglevel` on the command line keep the kernel's.
- Filesystems: proc, sysfs, devtmpfs on /dev (+ devpts, /dev/shm), tmpfs on /tmp and /run.
  The root is the initramfs itself (writable, in RAM).
- Hostname: `xenia.hostname=NAME`, else the hostname field of `ip=`, else `tiny`.
- Modules loaded at boot (those that exist in the kernel; see `ImageInfo.boot_modules` and
  `ImageInfo.missing_modules`): virtio_pci, virtio_mmio, virtio_blk, virtio_net,
  virtio_balloon, virtio_console, virtio_rng, pvpanic_mmio (QEMU `-device pvpanic`),
  pvpanic_pci, button, evdev, sd_mod, sr_mod, cdrom, isofs, ata_piix, ata_generic, loop,
  virtio_scsi, with their dependencies (virtio_pci_modern_dev, virtio_pci_legacy_dev,
  net_failover, failover, scsi_mod, libata, ...). Not in the Debian cloud kernel: ahci,
  libahci, e1000, e1000e, 8139cp, 8139too (so no disk or cdrom on q35's built-in AHCI;
  use virtio-blk/virtio-scsi, or IDE on `pc`). ext4 is built in and also mounts ext2.
  Also in the image, loaded on demand: virtio_mem, virtio_input,
  vmw_vsock_virtio_transport, virtiofs, sg. After the fixed list every device's modalias
  is probed once (coldplug). The kernel stays untainted (modules keep their signatures).
- Hotplug (busybox `uevent` on netlink; this kernel has no /proc/sys/kernel/hotplug): a
  hot-added CPU is onlined (`/sys$DEVPATH/online`), hot-added memory is onlined (also
  `auto_online_blocks=online`), a new device's module is loaded (`modprobe $MODALIAS`),
  and a new ethN is configured like at boot. Log: /run/xenia/hotplug.log.
- Power: the ACPI power button (QMP `system_powerdown`) runs `poweroff` via busybox acpid
  (evdev); busybox init runs /etc/init.d/rcK (sync, unmount disks) and powers off, so QEMU
  exits. sysrq is enabled (`echo c > /proc/sysrq-trigger` panics; with pvpanic loaded QEMU
  reports GUEST_PANICKED). kernel.panic is left at 0.
- Network: lo up. Each ethN (at boot and when hot-added), first match wins:
  `xenia.ip.ethN=ADDR/PREFIX|dhcp|off`; for eth0 `xenia.ip=ADDR/PREFIX|dhcp|off`
  (with `xenia.gw=GW`, `xenia.dns=IP[,IP]`); the kernel's
  `ip=<client>:<server>:<gw>:<netmask>:<hostname>:<device>:<autoconf>[:<dns0>[:<dns1>]]`
  (device defaults to eth0; `ip=dhcp`/`ip=off` apply to all); else DHCP. Static addresses
  are set before the ready line; DHCP (busybox udhcpc, applying address, router and DNS)
  runs in the background so a missing DHCP server never delays the ready line. A prefix-less
  address gets /24.
- Tools: busybox 1.35 with all its applets (sh, nc, md5sum, sha256sum, dd, mke2fs,
  mount, ping, ip, free, top, modprobe, udhcpc, ...) plus `mkfs.ext2` (runs mke2fs).
- Files: /etc/xenia/release (image, kernel and package versions), /etc/xenia/modules
  (the boot module groups); logs in /run/xenia (hotplug.log, acpid.log, udhcpc.ethN.log).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from xenia.errors import BackendError, NotFound
from xenia.images.cache import (
    MANIFEST,
    build_dir,
    build_errors,
    build_lock,
    read_manifest,
    replace_dir,
)
from xenia.images.debs import DebFetcher, DebPackage, sha256_file
from xenia.images.initramfs import Initramfs
from xenia.images.kmod import ModinfoError, ModuleTree, modules_alias, modules_dep

NAME = "tiny"
READY_LINE = "xenia-tiny: ready"
PROMPT = "/ # "
CMDLINE = "console=ttyS0"
KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
ARCH = "amd64"
KERNEL_FILE = "vmlinuz"
INITRD_FILE = "initrd.img"

# Bump when the image's contents change in a way the data files and module lists don't show;
# a cached image with another recipe is rebuilt.
FORMAT = 1

# Loaded at boot; those missing from the kernel are reported, not fatal. The guest loads
# the first two groups in parallel (their dependency closures must not overlap; a module of
# the second group that would share one moves to the third) and the third after both.
BOOT_MODULE_GROUPS: tuple[tuple[str, ...], ...] = (
    (
        "virtio_pci",
        "virtio_mmio",  # microvm's virtio devices (found via ACPI with microvm,acpi=on)
        "virtio_blk",
        "virtio_net",
        "virtio_balloon",
        "virtio_console",
        "virtio_rng",
        "pvpanic_mmio",  # QEMU -device pvpanic (ISA, described by ACPI)
        "pvpanic_pci",  # QEMU -device pvpanic-pci
        "button",  # ACPI power button -> acpid -> poweroff
        "evdev",
    ),
    (
        "sd_mod",
        "sr_mod",
        "cdrom",
        "isofs",
        "ahci",
        "libahci",
        "ata_piix",
        "ata_generic",
        "loop",
        "e1000",
        "e1000e",
        "8139cp",
        "8139too",
        "ext4",  # built in; it also mounts ext2 (CONFIG_EXT4_USE_FOR_EXT2)
    ),
    ("virtio_scsi",),
)
BOOT_MODULES: tuple[str, ...] = tuple(m for group in BOOT_MODULE_GROUPS for m in group)
# In the image, loaded when a matching device shows up (coldplug at boot, or hotplug).
ON_DEMAND_MODULES: tuple[str, ...] = (
    "virtio_mem",
    "virtio_input",
    "vmw_vsock_virtio_transport",
    "virtiofs",
    "sg",
)

# data file -> (path in the image, mode)
DATA_FILES: dict[str, tuple[str, int]] = {
    "tiny-inittab": ("etc/inittab", 0o644),
    "tiny-rcS": ("etc/init.d/rcS", 0o755),
    "tiny-rcK": ("etc/init.d/rcK", 0o755),
    "tiny-profile": ("etc/profile", 0o644),
    "tiny-hotplug": ("sbin/xenia-hotplug", 0o755),
    "tiny-netup": ("sbin/xenia-netup", 0o755),
    "tiny-udhcpc.script": ("usr/share/udhcpc/default.script", 0o755),
    "tiny-powerbtn": ("etc/acpi/PWRF/00000080", 0o755),
}
INLINE_FILES: dict[str, tuple[str, int]] = {
    "etc/passwd": ("root::0:0:root:/root:/bin/sh\n", 0o644),
    "etc/group": ("root:x:0:\ntty:x:5:\n", 0o644),
    "etc/shells": ("/bin/sh\n/bin/ash\n", 0o644),
    "etc/resolv.conf": ("", 0o644),
    "sbin/mkfs.ext2": ('#!/bin/sh\nexec /bin/busybox mke2fs "$@"\n', 0o755),
}
DIRS = (
    "proc",
    "sys",
    "dev",
    "tmp",
    "run",
    "root",
    "mnt",
    "media",
    "var/log",
    "usr/bin",
    "usr/sbin",
    "bin",
    "sbin",
    "etc/xenia",
)


@dataclass(frozen=True)
class ImageInfo:
    name: str
    kernel: Path
    initrd: Path
    kernel_version: str
    size: int  # bytes, kernel + initrd
    built: dt.datetime  # UTC
    packages: dict[str, str] = field(default_factory=dict)  # Debian package -> version
    boot_modules: tuple[str, ...] = ()  # loaded at boot
    missing_modules: tuple[str, ...] = ()  # requested but not in this kernel (nor built in)
    cmdline: str = CMDLINE  # suggested base kernel command line
    ready_line: str = READY_LINE

    @property
    def path(self) -> Path:
        return self.kernel.parent

    @classmethod
    def from_manifest(cls, image_dir: Path, manifest: dict) -> ImageInfo:  # type: ignore[type-arg]
        files = manifest["files"]
        return cls(
            name=manifest["name"],
            kernel=image_dir / KERNEL_FILE,
            initrd=image_dir / INITRD_FILE,
            kernel_version=manifest["kernel_version"],
            size=sum(int(f["size"]) for f in files.values()),
            built=dt.datetime.fromisoformat(manifest["built"]),
            packages=dict(manifest.get("packages", {})),
            boot_modules=tuple(manifest.get("modules", {}).get("boot", ())),
            missing_modules=tuple(manifest.get("modules", {}).get("missing", ())),
            cmdline=manifest.get("cmdline", CMDLINE),
            ready_line=manifest.get("ready_line", READY_LINE),
        )


@dataclass(frozen=True)
class Variant:
    """What a variant of the tiny image changes: its name (and directory), the kernel
    metapackage, and modules added to the on-demand list. The default is the tiny image
    itself; a test that needs drivers the cloud kernel lacks (9p, USB) builds one from
    Debian's generic kernel (`linux-image-amd64`) under another name."""

    name: str = NAME
    kernel_package: str = KERNEL_METAPACKAGE
    extra_modules: tuple[str, ...] = ()


DEFAULT = Variant()


def _fail(cause: str, name: str = NAME) -> BackendError:
    return BackendError(f"Failed building image {name}: {cause}")


def _data(name: str) -> bytes:
    return (resources.files("xenia.images") / "data" / name).read_bytes()


def recipe_hash(variant: Variant = DEFAULT) -> str:
    """Identifies what goes into the image besides the packages; part of the manifest."""
    h = hashlib.sha256(f"format={FORMAT}\n".encode())
    if variant != DEFAULT:  # the default's hash stays what it was: no rebuild
        h.update(f"{variant.kernel_package}|{' '.join(variant.extra_modules)}\n".encode())
    for name in sorted(DATA_FILES):
        h.update(f"{name} {DATA_FILES[name]}\n".encode())
        h.update(_data(name))
    for path in sorted(INLINE_FILES):
        h.update(f"{path} {INLINE_FILES[path]}\n".encode())
    for group in BOOT_MODULE_GROUPS + (ON_DEMAND_MODULES,):
        h.update((" ".join(group) + "|").encode())
    return h.hexdigest()


def _valid(image_dir: Path, variant: Variant = DEFAULT) -> ImageInfo | None:
    """The image in `image_dir` if its manifest matches its files and the current recipe."""
    manifest = read_manifest(image_dir)
    if manifest is None or manifest.get("format") != FORMAT:
        return None
    if manifest.get("recipe") != recipe_hash(variant):
        return None
    try:
        for fname in (KERNEL_FILE, INITRD_FILE):
            want = manifest["files"][fname]
            path = image_dir / fname
            if path.stat().st_size != int(want["size"]) or sha256_file(path) != want["sha256"]:
                return None
        return ImageInfo.from_manifest(image_dir, manifest)
    except (OSError, KeyError, TypeError, ValueError):
        return None


def list_images(images_dir: Path) -> list[ImageInfo]:
    """Every built image under `images_dir` (manifests are read, files are not hashed)."""
    out: list[ImageInfo] = []
    if not images_dir.is_dir():
        return out
    for d in sorted(images_dir.iterdir()):
        if d.name.startswith(".") or not d.is_dir():
            continue
        manifest = read_manifest(d)
        if manifest is None:
            continue
        try:
            out.append(ImageInfo.from_manifest(d, manifest))
        except (KeyError, TypeError, ValueError):
            continue
    return out


def find_image(images_dir: Path, name: str) -> ImageInfo:
    for info in list_images(images_dir):
        if info.name == name:
            return info
    hint = f"run `xenia image build {name}`" if name == NAME else "no such image"
    raise NotFound(f"Failed finding image {name}: not built in {images_dir}; {hint}")


def build_tiny(
    images_dir: Path,
    *,
    cache_dir: Path | None = None,
    force: bool = False,
    progress: Callable[[str], None] = print,
    variant: Variant = DEFAULT,
) -> ImageInfo:
    """Build the tiny image (or `variant` of it) into `images_dir/<name>` (or return it if
    already built and valid)."""
    images_dir = Path(images_dir)
    name = variant.name
    target = images_dir / name
    if not force and (info := _valid(target, variant)) is not None:
        return info
    try:
        images_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _fail(f"cannot create {images_dir}: {e.strerror}", name) from e
    with build_lock(images_dir, name):
        # Another process may have built it while we waited for the lock.
        if not force and (info := _valid(target, variant)) is not None:
            return info
        cache = Path(cache_dir) if cache_dir is not None else images_dir / "cache"
        with build_dir(images_dir, name) as tmp, build_errors(f"image {name}", ModinfoError):
            replace_dir(_build(tmp, cache, progress, variant), target, name)
    progress(f"Image {name} ready in {target}")
    info = _valid(target, variant)
    if info is None:  # pragma: no cover - we just wrote it
        raise _fail(f"{target} does not match its manifest after the build", name)
    return info


def _build(tmp: Path, cache: Path, progress: Callable[[str], None],
           variant: Variant = DEFAULT) -> Path:
    fetcher = DebFetcher(cache, progress)
    progress(f"Resolving {variant.kernel_package} and {BUSYBOX_PACKAGE} with apt-cache")
    kpkg = fetcher.resolve_meta(variant.kernel_package, "linux-image-")
    bpkg = fetcher.show(BUSYBOX_PACKAGE)
    for pkg in (kpkg, bpkg):
        if pkg.architecture != ARCH:
            raise _fail(
                f"{pkg.name} is for {pkg.architecture}; the tiny image needs {ARCH} packages "
                f"(add the architecture: dpkg --add-architecture {ARCH} && apt-get update)"
            )
    kdeb = fetcher.download(kpkg)
    bdeb = fetcher.download(bpkg)

    progress(f"Unpacking {kdeb.name} and {bdeb.name}")
    kroot = fetcher.extract(kdeb, tmp / "kernel")
    broot = fetcher.extract(bdeb, tmp / "busybox")

    versions = [d.name for d in (kroot / "lib/modules").iterdir() if d.is_dir()]
    if len(versions) != 1:
        raise _fail(f"{kpkg.name} holds {len(versions)} module trees, expected one",
                    variant.name)
    kver = versions[0]
    vmlinuz = kroot / "boot" / f"vmlinuz-{kver}"
    if not vmlinuz.is_file():
        raise _fail(f"{kpkg.name} has no boot/vmlinuz-{kver}", variant.name)
    busybox = broot / "bin/busybox"
    if not busybox.is_file():
        raise _fail(f"{bpkg.name} has no bin/busybox", variant.name)

    out = tmp / "image"
    out.mkdir()
    fs, boot, missing = _initramfs(
        kroot / "lib/modules" / kver, kver, busybox, kpkg, bpkg, progress, variant
    )
    progress(f"Writing initramfs ({len(fs)} files)")
    fs.write(out / INITRD_FILE)
    progress(f"Copying kernel {kver}")
    shutil.copyfile(vmlinuz, out / KERNEL_FILE)

    files = {
        f: {"sha256": sha256_file(out / f), "size": (out / f).stat().st_size}
        for f in (KERNEL_FILE, INITRD_FILE)
    }
    manifest = {
        "name": variant.name,
        "format": FORMAT,
        "recipe": recipe_hash(variant),
        "built": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "kernel_version": kver,
        "packages": {kpkg.name: kpkg.version, bpkg.name: bpkg.version},
        "debs": {p.name: {"filename": p.filename, "sha256": p.sha256} for p in (kpkg, bpkg)},
        "files": files,
        "modules": {"boot": boot, "missing": missing},
        "cmdline": CMDLINE,
        "ready_line": READY_LINE,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def _initramfs(
    moddir: Path,
    kver: str,
    busybox: Path,
    kpkg: DebPackage,
    bpkg: DebPackage,
    progress: Callable[[str], None],
    variant: Variant = DEFAULT,
) -> tuple[Initramfs, list[str], list[str]]:
    fs = Initramfs()
    for d in DIRS:
        fs.add_dir(d)
    fs.add_dir("tmp", 0o1777)
    fs.add_symlink("var/run", "../run")
    fs.add_chardev("dev/console", 5, 1)
    fs.add_chardev("dev/null", 1, 3, 0o666)

    # busybox: the binary, /init, and one symlink per applet.
    fs.add_file("bin/busybox", busybox.read_bytes(), 0o755)
    fs.add_symlink("init", "bin/busybox")
    applets = _applets(busybox)
    if not applets:
        # Cannot run the binary here (another architecture): rcS installs them at boot.
        progress("Cannot list busybox applets on this host; the guest installs them at boot")
        applets = ["bin/sh"]
    for applet in applets:
        # --list-full names busybox itself too; linuxrc is for initrds of old.
        if applet not in fs and applet != "linuxrc":
            fs.add_symlink(applet, "/bin/busybox")

    for name, (path, mode) in DATA_FILES.items():
        fs.add_file(path, _data(name), mode)
    for path, (text, mode) in INLINE_FILES.items():
        if path not in fs:
            fs.add_file(path, text.encode(), mode)

    # Modules and the two files busybox modprobe reads.
    tree = ModuleTree(moddir)
    boot = [m for m in BOOT_MODULES if m in tree]
    builtin = [m for m in BOOT_MODULES if m not in tree and tree.is_builtin(m)]
    missing = [m for m in BOOT_MODULES if m not in tree and not tree.is_builtin(m)]
    wanted = ON_DEMAND_MODULES + variant.extra_modules
    on_demand = [m for m in wanted if m in tree]
    missing += [m for m in wanted if m not in tree and not tree.is_builtin(m)]
    mods = tree.closure(boot + on_demand)
    progress(
        f"Adding {len(mods)} kernel modules ({len(boot)} loaded at boot; "
        f"built in: {', '.join(builtin) or 'none'}; not in this kernel: "
        f"{', '.join(missing) or 'none'})"
    )
    base = f"lib/modules/{kver}"
    for mod in mods:
        fs.add_file(f"{base}/{mod.relpath}", (moddir / mod.relpath).read_bytes())
    fs.add_file(f"{base}/modules.dep", modules_dep(tree, mods).encode())
    fs.add_file(f"{base}/modules.alias", modules_alias(mods).encode())
    if (moddir / "modules.builtin").is_file():
        fs.add_file(f"{base}/modules.builtin", (moddir / "modules.builtin").read_bytes())
    fs.add_file("etc/xenia/modules", _boot_groups(tree).encode())
    release = (
        f"XENIA_IMAGE={variant.name}\nKERNEL={kver}\n"
        f"KERNEL_PACKAGE={kpkg.name}={kpkg.version}\nBUSYBOX_PACKAGE={bpkg.name}={bpkg.version}\n"
    )
    fs.add_file("etc/xenia/release", release.encode())
    return fs, boot, missing


def _boot_groups(tree: ModuleTree) -> str:
    """/etc/xenia/modules: three lines, see BOOT_MODULE_GROUPS."""
    first, second, third = ([m for m in g if m in tree] for g in BOOT_MODULE_GROUPS)
    taken = {m.name for m in tree.closure(first)}
    parallel = []
    for m in second:
        if taken.isdisjoint(d.name for d in tree.closure([m])):
            parallel.append(m)
        else:
            third.insert(0, m)
    return "\n".join(" ".join(g) for g in (first, parallel, third)) + "\n"


def _applets(busybox: Path) -> list[str]:
    """Applet paths (`bin/sh`, `sbin/ip`, ...) from the downloaded busybox, if it runs here."""
    try:
        proc = subprocess.run(
            [str(busybox), "--list-full"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except OSError:
        return []
    if proc.returncode != 0:
        return []
    return [a.strip().lstrip("/") for a in proc.stdout.splitlines() if a.strip()]
