"""HVM boot images: the tiny guest on a BIOS disk, a UEFI disk and a bootable ISO.

Main entry points: `build_hvm_images()` (build or return the cached images), `hvm_images()`
(the built ones, without building) and `ovmf_paths()` / `ovmf_qemu_args()` (which UEFI
firmware to give QEMU, and how).

An HVM guest boots like a PC: firmware (SeaBIOS, or OVMF for UEFI) reads a boot loader from
a disk or CD-ROM, which loads the kernel and initrd through firmware calls. These images
carry the tiny image's kernel and initrd (see `tiny`; built first) so an unmodified OS boot
path can be tested with nothing downloaded but Debian packages:

- `bios-disk.img` (64 MiB raw): MBR with SYSLINUX's `mbr.bin`, one bootable FAT16
  partition at 1 MiB holding `vmlinuz`, `initrd.img`, `syslinux.cfg` and SYSLINUX
  (`ldlinux.sys` + `ldlinux.c32`, put there by the `syslinux --install` from the package,
  run on the unmounted image; it writes through mtools).
- `uefi-disk.img` (64 MiB raw): GPT with one EFI System Partition (FAT16) holding
  `/EFI/BOOT/BOOTX64.EFI`, a unified kernel image: systemd's `linuxx64.efi.stub` with the
  kernel, initrd and command line as PE sections (see `uki`). No boot loader config, no
  boot menu, no NVRAM entry needed: firmware boots the removable-media path.
- `boot.iso`: ISO 9660 with two El Torito entries: BIOS (ISOLINUX, `isolinux.bin` +
  `ldlinux.c32` + `isolinux.cfg`, kernel and initrd as files) and UEFI (a FAT image with
  the same `BOOTX64.EFI`).

Each boots the kernel with the tiny image's command line (`console=ttyS0`), so the guest
behaves as with direct kernel boot: the ready line `xenia-tiny: ready` on the first serial
port, then a root shell there (SYSLINUX adds `BOOT_IMAGE=/vmlinuz initrd=/initrd.img`, and
also prints its banner on the serial port). The kernel needs no disk driver: the initramfs
is the root, so the Debian cloud kernel's lack of AHCI does not matter.

Host tools (installed by scripts/install-deps.sh; see `fstools`) write the partition tables
(sfdisk), the FAT filesystems (mkfs.fat, mtools) and the ISO (xorriso); `uki` writes the
unified kernel image. The boot loaders come from Debian packages fetched with `apt-get
download` and unpacked with `dpkg-deb -x`, never installed: syslinux, syslinux-common,
isolinux, systemd-boot-efi. Running the extracted `syslinux` needs an x86-64 host (it links
only against libc).

Cache: `images_dir/hvm/{bios-disk.img,uefi-disk.img,boot.iso,manifest.json}`; the manifest
records the hashes of the files, of the tiny kernel and initrd they carry and of the recipe;
anything that no longer matches is rebuilt. Built in a temporary directory and renamed into
place; concurrent builds serialise on `images_dir/.hvm.lock`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import re
import subprocess
import uuid
from collections.abc import Callable, Iterable, Sequence
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
from xenia.images.fstools import (
    MBR_CODE_SIZE,
    SECTOR,
    Partition,
    check_tools,
    fat_put,
    gpt_disk,
    make_fat,
    make_iso,
    mbr_disk,
    tool_env,
)
from xenia.images.tiny import ImageInfo, build_tiny
from xenia.images.uki import PeError, make_uki

NAME = "hvm"
BIOS_DISK = "bios-disk.img"
UEFI_DISK = "uefi-disk.img"
ISO = "boot.iso"
# build_hvm_images() keys -> file names
FILES = {"bios-disk": BIOS_DISK, "uefi-disk": UEFI_DISK, "iso": ISO}
# Which firmware boots which image (the ISO: both).
FIRMWARE = {"bios-disk": ("bios",), "uefi-disk": ("uefi",), "iso": ("bios", "uefi")}

DISK_SIZE = 64 * 1024 * 1024
ARCH = "amd64"
SYSLINUX = "syslinux"  # the installer (+ its embedded ldlinux.sys, ldlinux.c32)
SYSLINUX_COMMON = "syslinux-common"  # mbr.bin, and ldlinux.c32 for ISOLINUX
ISOLINUX = "isolinux"
SYSTEMD_BOOT_EFI = "systemd-boot-efi"  # linuxx64.efi.stub
PACKAGES = (SYSLINUX, SYSLINUX_COMMON, ISOLINUX, SYSTEMD_BOOT_EFI)
# Files taken from the unpacked packages.
MBR_BIN = "usr/lib/syslinux/mbr/mbr.bin"
LDLINUX_C32 = "usr/lib/syslinux/modules/bios/ldlinux.c32"
ISOLINUX_BIN = "usr/lib/ISOLINUX/isolinux.bin"
EFI_STUB = "usr/lib/systemd/boot/efi/linuxx64.efi.stub"
EFI_BOOT_PATH = "EFI/BOOT/BOOTX64.EFI"  # the removable-media path for x86-64

# Bump when the images change in a way the templates below don't show.
# 2: written by sfdisk, mkfs.fat, mtools and xorriso instead of Xenia's own writers.
FORMAT = 2
# SERIAL first: SYSLINUX then mirrors its console (banner, errors) to COM1.
SYSLINUX_CFG = """\
SERIAL 0 115200
DEFAULT tiny
PROMPT 0
TIMEOUT 0
LABEL tiny
  LINUX /vmlinuz
  INITRD /initrd.img
  APPEND {cmdline}
"""
OS_RELEASE = 'NAME="Xenia tiny"\nID=xenia-tiny\nVERSION_ID="{kernel}"\n'
INSTALL_TIMEOUT = 120  # seconds for syslinux --install

# Where distributions put OVMF, and its file names there: (code, vars template), best first.
# The 4 MiB builds come first (QEMU's descriptors name them on Debian 12, and Debian 13 and
# Ubuntu 24.04 ship only those); a code file pairs only with the vars file of its size.
OVMF_DIRS = (
    Path("/usr/share/OVMF"),
    Path("/usr/share/edk2/ovmf"),
    Path("/usr/share/edk2/x64"),
    Path("/usr/share/ovmf"),
)
OVMF_PAIRS = (
    ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"),
    ("OVMF_CODE.fd", "OVMF_VARS.fd"),
)
FIRMWARE_DESCRIPTOR_DIRS = (
    Path("/etc/qemu/firmware"),
    Path("/usr/share/qemu/firmware"),
)
# Descriptor features that rule a firmware out for plain q35 guests without extra setup.
_UNWANTED_FEATURES = frozenset(
    {"secure-boot", "enrolled-keys", "requires-smm", "amd-sev-es", "amd-sev-snp", "intel-tdx"}
)


def _fail(cause: str) -> BackendError:
    return BackendError(f"Failed building HVM images: {cause}")


def recipe_hash(cmdline: str) -> str:
    """Identifies how the images are made, besides packages and the tiny image."""
    h = hashlib.sha256(f"format={FORMAT}\ndisk={DISK_SIZE}\ncmdline={cmdline}\n".encode())
    for text in (SYSLINUX_CFG, OS_RELEASE, EFI_BOOT_PATH, " ".join(PACKAGES)):
        h.update(text.encode() + b"\0")
    return h.hexdigest()


# -- cache -----------------------------------------------------------------------------------

def _tiny_ref(tiny: ImageInfo) -> dict[str, str]:
    return {
        "kernel_version": tiny.kernel_version,
        "vmlinuz": sha256_file(tiny.kernel),
        "initrd.img": sha256_file(tiny.initrd),
    }


def _valid(image_dir: Path, tiny_ref: dict[str, str] | None, cmdline: str | None) -> bool:
    """Whether the images in `image_dir` match their manifest (and, when given, the tiny
    image and command line they must carry)."""
    manifest = read_manifest(image_dir)
    if manifest is None or manifest.get("format") != FORMAT:
        return False
    if cmdline is not None and (
        manifest.get("cmdline") != cmdline or manifest.get("recipe") != recipe_hash(cmdline)
    ):
        return False
    if tiny_ref is not None and manifest.get("tiny") != tiny_ref:
        return False
    try:
        for fname in FILES.values():
            want = manifest["files"][fname]
            path = image_dir / fname
            if path.stat().st_size != int(want["size"]) or sha256_file(path) != want["sha256"]:
                return False
    except (OSError, KeyError, TypeError, ValueError):
        return False
    return True


def _paths(image_dir: Path) -> dict[str, Path]:
    return {key: image_dir / fname for key, fname in FILES.items()}


def hvm_images(images_dir: Path) -> dict[str, Path]:
    """The built HVM images (keys as `build_hvm_images()`); NotFound if there are none or
    they do not match their manifest. Builds nothing, runs no apt."""
    image_dir = Path(images_dir) / NAME
    if not _valid(image_dir, None, None):
        raise NotFound(
            f"Failed finding the HVM images: not built in {images_dir}; run "
            "`xenia image build hvm-disk`"
        )
    return _paths(image_dir)


def build_hvm_images(
    images_dir: Path,
    *,
    cache_dir: Path | None = None,
    force: bool = False,
    progress: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Build the HVM images into `images_dir/hvm` (or return them if built and valid).

    Returns {"bios-disk": .../bios-disk.img, "uefi-disk": .../uefi-disk.img,
    "iso": .../boot.iso}. The tiny image is built first if needed (into `images_dir/tiny`,
    with the same .deb cache, default `images_dir/cache`); `force` rebuilds the HVM images,
    not the tiny image.
    """
    images_dir = Path(images_dir)
    tiny = build_tiny(images_dir, cache_dir=cache_dir, progress=progress)
    ref = _tiny_ref(tiny)
    target = images_dir / NAME
    if not force and _valid(target, ref, tiny.cmdline):
        return _paths(target)
    with build_lock(images_dir, NAME):
        # Another process may have built them while we waited for the lock.
        if not force and _valid(target, ref, tiny.cmdline):
            return _paths(target)
        cache = Path(cache_dir) if cache_dir is not None else images_dir / "cache"
        failures = (PeError, ValueError)
        with build_dir(images_dir, NAME) as tmp, build_errors("HVM images", *failures):
            replace_dir(_build(tmp, cache, tiny, ref, progress), target, NAME)
    progress(f"HVM images ready in {target}")
    if not _valid(target, ref, tiny.cmdline):  # pragma: no cover - we just wrote them
        raise _fail(f"{target} does not match its manifest after the build")
    return _paths(target)




# -- build -----------------------------------------------------------------------------------
def _fetch(
    fetcher: DebFetcher, names: Sequence[str], tmp: Path, progress: Callable[[str], None]
) -> tuple[dict[str, Path], list[DebPackage]]:
    progress(f"Resolving {', '.join(names)} with apt-cache")
    pkgs = [fetcher.show(name) for name in names]
    for pkg in pkgs:
        if pkg.architecture not in (ARCH, "all"):
            raise _fail(
                f"{pkg.name} is for {pkg.architecture}; the HVM images need {ARCH} packages "
                f"(add the architecture: dpkg --add-architecture {ARCH} && apt-get update)"
            )
    # The installer's embedded ldlinux.sys and ISOLINUX must match the ldlinux.c32 they
    # load (from syslinux-common), which only the same upstream version guarantees.
    versions = {p.name: re.sub(r"\+b\d+$", "", p.version) for p in pkgs}  # binNMUs
    syslinux_family = {versions[n] for n in (SYSLINUX, SYSLINUX_COMMON, ISOLINUX) if n in versions}
    if len(syslinux_family) > 1:
        raise _fail(
            "syslinux, syslinux-common and isolinux have different versions "
            f"({', '.join(f'{n} {v}' for n, v in versions.items())}); they must match"
        )
    roots: dict[str, Path] = {}
    debs = [fetcher.download(pkg) for pkg in pkgs]
    progress(f"Unpacking {', '.join(d.name for d in debs)}")
    for pkg, deb in zip(pkgs, debs, strict=True):
        roots[pkg.name] = fetcher.extract(deb, tmp / "pkgs" / pkg.name)
    return roots, pkgs


def _need(root: Path, relpath: str, package: str) -> Path:
    path = root / relpath
    if not path.is_file():
        raise _fail(f"{package} has no {relpath}")
    return path


def _guid(seed: str, what: str) -> uuid.UUID:
    """A GUID that depends only on the inputs, so a rebuild gives the same bytes."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"xenia-hvm:{seed}:{what}")


def _build(
    tmp: Path,
    cache: Path,
    tiny: ImageInfo,
    ref: dict[str, str],
    progress: Callable[[str], None],
) -> Path:
    check_tools("building HVM images")  # before anything is downloaded
    fetcher = DebFetcher(cache, progress)
    roots, pkgs = _fetch(fetcher, PACKAGES, tmp, progress)
    cmdline = tiny.cmdline
    seed = hashlib.sha256(
        (json.dumps(ref, sort_keys=True) + recipe_hash(cmdline)).encode()
    ).hexdigest()
    out = tmp / "image"
    out.mkdir()
    cfg = tmp / "syslinux.cfg"
    cfg.write_text(SYSLINUX_CFG.format(cmdline=cmdline))

    progress(f"Writing {BIOS_DISK} (MBR, FAT16, SYSLINUX)")
    _bios_disk(out / BIOS_DISK, tiny, cfg, roots, seed, tmp)

    progress(f"Writing {UEFI_DISK} (GPT, EFI System Partition, unified kernel image)")
    stub = _need(roots[SYSTEMD_BOOT_EFI], EFI_STUB, SYSTEMD_BOOT_EFI).read_bytes()
    uki = tmp / "BOOTX64.EFI"
    uki.write_bytes(make_uki(
        stub,
        tiny.kernel.read_bytes(),
        tiny.initrd.read_bytes(),
        cmdline,
        OS_RELEASE.format(kernel=tiny.kernel_version),
    ))  # fmt: skip
    _uefi_disk(out / UEFI_DISK, uki, seed, tmp)

    progress(f"Writing {ISO} (El Torito: ISOLINUX for BIOS, unified kernel image for UEFI)")
    _iso(out / ISO, tiny, cfg, uki, roots, tmp)

    files = {
        f: {"sha256": sha256_file(out / f), "size": (out / f).stat().st_size}
        for f in FILES.values()
    }
    manifest = {
        "name": NAME,
        "format": FORMAT,
        "recipe": recipe_hash(cmdline),
        "built": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cmdline": cmdline,
        "ready_line": tiny.ready_line,
        # Not at the top level: tiny.list_images() reads every manifest under images_dir
        # and must skip this one.
        "tiny": ref,
        "firmware": {FILES[k]: list(v) for k, v in FIRMWARE.items()},
        "packages": {p.name: p.version for p in pkgs},
        "debs": {p.name: {"filename": p.filename, "sha256": p.sha256} for p in pkgs},
        "files": files,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def _bios_disk(
    path: Path, tiny: ImageInfo, cfg: Path, roots: dict[str, Path], seed: str, tmp: Path
) -> None:
    boot_code = _need(roots[SYSLINUX_COMMON], MBR_BIN, SYSLINUX_COMMON).read_bytes()
    part = mbr_disk(path, DISK_SIZE, disk_signature=int(seed[8:16], 16),
                    boot_code=boot_code[:MBR_CODE_SIZE], scratch=tmp)  # fmt: skip
    make_fat(path, part, label="XENIA", volume_id=int(seed[:8], 16), fat_bits=16, scratch=tmp)
    files = {"syslinux.cfg": cfg, "vmlinuz": tiny.kernel, "initrd.img": tiny.initrd}
    fat_put(path, files, offset=part.offset, scratch=tmp)
    _install_syslinux(path, part.offset, roots, tmp)


def _install_syslinux(disk: Path, offset: int, roots: dict[str, Path], tmp: Path) -> None:
    """Run the packaged `syslinux --install` on the FAT at `offset` in `disk`.

    It writes ldlinux.sys and ldlinux.c32 through mtools (mcopy, mattrib: the host's, on
    the PATH `tool_env` gives), maps ldlinux.sys's sectors, patches them into it and writes
    its boot sector over the FAT's (keeping the BPB).
    """
    installer = _need(roots[SYSLINUX], "usr/bin/syslinux", SYSLINUX)
    argv = [str(installer), "--install", "--offset", str(offset), str(disk)]
    try:
        proc = subprocess.run(
            argv, env=tool_env(tmp), stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=INSTALL_TIMEOUT, check=False,
        )  # fmt: skip
    except OSError as e:
        raise _fail(
            f"cannot run {installer} from the {SYSLINUX} package ({e.strerror}); it needs an "
            f"{ARCH} host and an images directory that allows running programs (not noexec)"
        ) from e
    except subprocess.TimeoutExpired as e:
        raise _fail(f"syslinux --install did not finish within {INSTALL_TIMEOUT} s") from e
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()[-500:]
        raise _fail(f"syslinux --install failed ({proc.returncode}): {detail}")
    with open(disk, "rb") as f:
        f.seek(offset + 3)
        if f.read(8) != b"SYSLINUX":
            raise _fail("syslinux --install left no SYSLINUX boot sector")


def _uefi_disk(path: Path, uki: Path, seed: str, tmp: Path) -> None:
    part = gpt_disk(path, DISK_SIZE, disk_guid=_guid(seed, "disk"),
                    part_guid=_guid(seed, "esp"), scratch=tmp)  # fmt: skip
    make_fat(path, part, label="XENIA_ESP", volume_id=int(seed[16:24], 16), fat_bits=16,
             scratch=tmp)  # fmt: skip
    fat_put(path, {EFI_BOOT_PATH: uki}, offset=part.offset, scratch=tmp)


def _iso(
    path: Path, tiny: ImageInfo, cfg: Path, uki: Path, roots: dict[str, Path], tmp: Path
) -> None:
    # The UEFI El Torito image: a FAT just big enough for the UKI (1 MiB spare).
    efi_img = tmp / "efiboot.img"
    sectors = (uki.stat().st_size // (1 << 20) + 2) * (1 << 20) // SECTOR
    with open(efi_img, "wb") as f:
        f.truncate(sectors * SECTOR)
    make_fat(efi_img, Partition(0, sectors), label="XENIA_EFI", volume_id=0x58454649,
             scratch=tmp)  # fmt: skip
    fat_put(efi_img, {EFI_BOOT_PATH: uki}, scratch=tmp)

    files = {
        "isolinux/isolinux.bin": _need(roots[ISOLINUX], ISOLINUX_BIN, ISOLINUX),
        "isolinux/ldlinux.c32": _need(roots[SYSLINUX_COMMON], LDLINUX_C32, SYSLINUX_COMMON),
        "isolinux/isolinux.cfg": cfg,
        "vmlinuz": tiny.kernel,
        "initrd.img": tiny.initrd,
        "efi/efiboot.img": efi_img,
    }
    make_iso(path, files, volume_id="XENIA_TINY", isolinux_dir="isolinux",
             efi_image="efi/efiboot.img", scratch=tmp)  # fmt: skip


# -- firmware --------------------------------------------------------------------------------
def _from_descriptors(dirs: Iterable[Path]) -> tuple[Path, Path] | None:
    """The first non-secure-boot x86-64 q35 UEFI flash firmware in QEMU's firmware
    descriptors (docs/interop/firmware.json; files named NN-*.json, lowest NN first, a name
    in /etc overriding the same name in /usr/share)."""
    by_name: dict[str, Path] = {}
    for d in reversed(list(dirs)):
        with contextlib.suppress(OSError):
            for p in d.glob("*.json"):
                by_name[p.name] = p
    for name in sorted(by_name):
        try:
            desc = json.loads(by_name[name].read_text())
            mapping = desc["mapping"]
            if "uefi" not in desc.get("interface-types", ()):
                continue
            if mapping.get("device") != "flash" or mapping.get("mode", "split") != "split":
                continue
            if _UNWANTED_FEATURES & set(desc.get("features", ())):
                continue
            if not any(
                t.get("architecture") == "x86_64"
                and any(m.startswith("pc-q35") for m in t.get("machines", ()))
                for t in desc.get("targets", ())
            ):
                continue
            code, nvram = mapping["executable"], mapping["nvram-template"]
            if code.get("format", "raw") != "raw" or nvram.get("format", "raw") != "raw":
                continue
            code_path, vars_path = Path(code["filename"]), Path(nvram["filename"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if code_path.is_file() and vars_path.is_file():
            return code_path, vars_path
    return None


def ovmf_paths(
    *,
    descriptor_dirs: Iterable[Path] = FIRMWARE_DESCRIPTOR_DIRS,
    search_dirs: Iterable[Path] = OVMF_DIRS,
) -> tuple[Path, Path]:
    """(code, vars template) of the UEFI firmware for x86-64 guests, without secure boot.

    QEMU's firmware descriptors are asked first, then the usual places; on Debian 12 this
    is (/usr/share/OVMF/OVMF_CODE_4M.fd, /usr/share/OVMF/OVMF_VARS_4M.fd). The code is
    mapped read-only; each guest needs its own writable copy of the vars template.
    """
    found = _from_descriptors(descriptor_dirs)
    if found is not None:
        return found
    search = list(search_dirs)
    for d in search:
        for code, nvram in OVMF_PAIRS:
            if (d / code).is_file() and (d / nvram).is_file():
                return d / code, d / nvram
    raise NotFound(
        "Failed finding UEFI firmware (OVMF): no QEMU firmware descriptor for a "
        "non-secure-boot x86_64 UEFI and no "
        f"{' or '.join(c for c, _ in OVMF_PAIRS)} with its VARS file in "
        f"{', '.join(str(d) for d in search)}; install it: apt-get install ovmf"
    )


def ovmf_qemu_args(vars_file: Path, code: Path | None = None) -> list[str]:
    """QEMU arguments mapping OVMF as the machine's two flash chips: the code read-only,
    `vars_file` (the guest's own copy of the vars template) writable. Equivalent to
    `-drive if=pflash,format=raw,unit=0,readonly=on,file=CODE
     -drive if=pflash,format=raw,unit=1,file=VARS`; QEMU merges the `-machine` given here
    with the caller's (`-machine q35`)."""
    if code is None:
        code = ovmf_paths()[0]

    def node(name: str, filename: Path, read_only: bool) -> str:
        return json.dumps({
            "driver": "raw", "node-name": name, "read-only": read_only,
            "file": {"driver": "file", "filename": str(filename), "read-only": read_only},
        })  # fmt: skip

    return [
        "-blockdev", node("xenia-fw-code", code, True),
        "-blockdev", node("xenia-fw-vars", vars_file, False),
        "-machine", "pflash0=xenia-fw-code,pflash1=xenia-fw-vars",
    ]  # fmt: skip
