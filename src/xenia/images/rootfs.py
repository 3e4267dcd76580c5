"""The "rootfs" image: a busybox root filesystem for container domains (`type = "container"`).

Main entry points: `build_rootfs()` (build, or return the cached tree) and `RootfsInfo`.

Build
-----
busybox comes from Debian's `busybox-static`, fetched with `apt-get download` into a cache
and unpacked with `dpkg-deb -x` (images/debs.py, as the tiny image does), never installed
on the host. The tree is written to `images_dir/.rootfs-build-*` and renamed to
`images_dir/rootfs` (what a config's `rootfs =` names); `images_dir/rootfs/manifest.json`
records what went in, and a tree matching it and the current recipe is reused. When run
as root the tree is owned by uid/gid 100000 (USERNS_BASE), LXC's shifted layout; a
container sees its files owned by its own root whoever owns them (containers/idmount.py).
Rebuilding (--force) moves the old tree aside; it is deleted unless a running container
still has it as its lower layer.

Container contract (tests and users rely on it)
-----------------------------------------------
- init is busybox init (`/sbin/init`, the default `init`). /etc/init.d/rcS prints
  `xenia-rootfs: <step>` lines and then exactly `xenia-rootfs: ready` (READY_LINE); then a
  root login shell (busybox ash, with the console as its controlling tty) runs on the
  console, respawned whenever it exits. Prompt `<cwd> # ` (`/ # ` at start).
- Power: SIGPWR (`xenia shutdown`) halts, SIGINT (`xenia reboot`) runs `reboot`; both
  run /etc/init.d/rcK, then busybox kills every process and calls reboot(2), which in a
  pid namespace ends the container with the status Xenia reads as poweroff or reboot.
  `poweroff`, `halt` and `reboot` typed in the container do the same.
- Network: lo up. Xenia brings the links up and sets static addresses from the host before
  the init runs (a container has no CAP_NET_ADMIN); an address already there is left as
  it is. Each ethN, first match wins, from $XENIA_CMDLINE (the config's `extra`
  or `cmdline`, the same keys as the tiny VM image's kernel command line):
  `xenia.ip.ethN=ADDR/PREFIX|dhcp|off`; for eth0 `xenia.ip=ADDR/PREFIX|dhcp|off` (with
  `xenia.gw=GW`, `xenia.dns=IP[,IP]`); the kernel's `ip=<client>:<server>:<gw>:<netmask>:
  <hostname>:<device>:<autoconf>[:<dns0>[:<dns1>]]`; else DHCP (busybox udhcpc, in the
  background, so a missing DHCP server never delays the ready line). Static addresses are
  set before the ready line. A prefix-less address gets /24.
- Hostname: the domain's name (set by the runtime).
- Tools: busybox 1.35 with all its applets (sh, nc, ps, top, free, dd, ping, ip, udhcpc...).
- Files: /etc/xenia/release; logs in /run/xenia (udhcpc.ethN.log).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from xenia.errors import BackendError
from xenia.files import fsync_dir
from xenia.images.cache import MANIFEST, build_dir, build_errors, build_lock, read_manifest
from xenia.images.debs import DebFetcher, sha256_file

NAME = "rootfs"
READY_LINE = "xenia-rootfs: ready"
PROMPT = "/ # "
BUSYBOX_PACKAGE = "busybox-static"
USERNS_BASE = 100000
# Bump when the tree's recipe changes in a way the files below do not show.
FORMAT = 1

INITTAB = """\
# Xenia rootfs: busybox init's table. rcS runs once and ends with "xenia-rootfs: ready";
# then a root login shell runs on /dev/console (opened anew, so it is the shell's
# controlling tty), respawned whenever it exits. SIGINT (xenia reboot) runs ctrlaltdel.
::sysinit:/etc/init.d/rcS
console::respawn:-/bin/sh
::ctrlaltdel:/sbin/reboot
::shutdown:/etc/init.d/rcK
"""

RCS = """\
#!/bin/sh
# Xenia rootfs: container start, run once by busybox init (inittab ::sysinit).
# The runtime has mounted /proc, /sys, /dev, /run and /tmp and set the hostname.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
umask 022
say() { echo "xenia-rootfs: $*"; }
mkdir -p /run/xenia /var/log
read -r host < /proc/sys/kernel/hostname
say "init in container $host"
printf '127.0.0.1\\tlocalhost\\n127.0.1.1\\t%s\\n::1\\tlocalhost\\n' "$host" > /etc/hosts
# Xenia brings the links up and sets static addresses from the host (a container has no
# CAP_NET_ADMIN unless its config adds it); this only covers a runtime that does not.
ip link set lo up 2>/dev/null
for d in /sys/class/net/eth*; do
    [ -e "$d" ] && /sbin/xenia-netup "${d##*/}"
done
say ready
"""

RCK = """\
#!/bin/sh
# Xenia rootfs: run by busybox init before it stops every process (inittab ::shutdown).
echo "xenia-rootfs: stopping"
sync
"""

NETUP = """\
#!/bin/sh
# Xenia rootfs: xenia-netup IFACE - configure one NIC from $XENIA_CMDLINE (the domain's
# extra=/cmdline=), with the keys of the tiny VM image's kernel command line:
#   xenia.ip.IFACE=ADDR/PREFIX|dhcp|off   this interface
#   xenia.ip=ADDR/PREFIX|dhcp|off         eth0
#   xenia.gw=GW  xenia.dns=IP[,IP]        for the xenia.ip* addresses
#   ip=CLIENT:SERVER:GW:NETMASK:HOSTNAME:DEVICE:AUTOCONF[:DNS0[:DNS1]]
# First match in that order wins; with none, DHCP (udhcpc in the background).
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
set -f
oldifs=$IFS
iface=$1
[ -n "$iface" ] && [ -e "/sys/class/net/$iface" ] || exit 1
say() { echo "xenia-rootfs: $iface: $*"; }

conf= conf0= gw= dns= kip=
for arg in $XENIA_CMDLINE; do
    case "$arg" in
    "xenia.ip.$iface="*) conf=${arg#*=} ;;
    xenia.ip=*) conf0=${arg#*=} ;;
    xenia.gw=*) gw=${arg#*=} ;;
    xenia.dns=*) dns=${arg#*=} ;;
    ip=*) kip=${arg#ip=} ;;
    esac
done
[ -z "$conf" ] && [ "$iface" = eth0 ] && conf=$conf0
if [ -z "$conf" ] && [ -n "$kip" ]; then
    case "$kip" in
    off | none) conf=off ;;
    on | any | dhcp | bootp | rarp | both) conf=dhcp ;;
    *)
        IFS=:
        set -- $kip
        IFS=$oldifs
        if [ "${6:-eth0}" = "$iface" ]; then
            case "${7:-off}" in
            off | none | static)
                if [ -n "$1" ]; then
                    prefix=24
                    [ -n "$4" ] && prefix=$(ipcalc -p "$1" "$4") && prefix=${prefix#PREFIX=}
                    conf=$1/$prefix gw=$3 dns=$8${9:+,$9}
                else
                    conf=off
                fi
                ;;
            *) conf=dhcp ;;
            esac
        fi
        ;;
    esac
fi

ip link set "$iface" up 2>/dev/null
case "${conf:-dhcp}" in
off | none)
    say "not configured"
    ;;
dhcp)
    pidfile=/run/udhcpc.$iface.pid
    read -r host < /proc/sys/kernel/hostname
    udhcpc -f -i "$iface" -p "$pidfile" -s /usr/share/udhcpc/default.script \\
        -x hostname:"$host" > "/run/xenia/udhcpc.$iface.log" 2>&1 < /dev/null &
    say "DHCP in the background"
    ;;
*)
    case "$conf" in */*) ;; *) conf=$conf/24 ;; esac
    if ip -4 -o addr show dev "$iface" | grep -q " inet $conf "; then
        :  # set by the host already (Xenia does, before the init runs)
    else
        ip -4 addr flush dev "$iface"
        if ! ip addr add "$conf" dev "$iface"; then
            say "bad address $conf"
            exit 1
        fi
        [ -n "$gw" ] && ip route add default via "$gw" dev "$iface" 2>/dev/null
    fi
    if [ -n "$dns" ]; then
        IFS=,
        for d in $dns; do echo "nameserver $d"; done > /etc/resolv.conf
        IFS=$oldifs
    fi
    say "$conf${gw:+ gw $gw}"
    ;;
esac
exit 0
"""

UDHCPC_SCRIPT = """\
#!/bin/sh
# Xenia rootfs: udhcpc event script. Applies the lease's address, router and DNS.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
bound | renew)
    if ! ip -4 addr show dev "$interface" | grep -q "inet $ip/${mask:-24} "; then
        ip -4 addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" dev "$interface"
    fi
    if [ -n "$router" ]; then
        while ip route del default dev "$interface" 2>/dev/null; do :; done
        for r in $router; do
            ip route add default via "$r" dev "$interface" && break
        done
    fi
    if [ -n "$dns" ]; then
        {
            [ -n "$domain" ] && echo "search $domain"
            for d in $dns; do echo "nameserver $d"; done
        } > /etc/resolv.conf
    fi
    echo "xenia-rootfs: $interface: DHCP $ip/${mask:-24}${router:+ gw $router}"
    ;;
esac
exit 0
"""

PROFILE = """\
# Xenia rootfs: login shell setup.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
export HOME=/root
export PS1='\\w # '
"""

# path in the tree -> (contents, mode)
FILES: dict[str, tuple[str, int]] = {
    "etc/inittab": (INITTAB, 0o644),
    "etc/init.d/rcS": (RCS, 0o755),
    "etc/init.d/rcK": (RCK, 0o755),
    "sbin/xenia-netup": (NETUP, 0o755),
    "usr/share/udhcpc/default.script": (UDHCPC_SCRIPT, 0o755),
    "etc/profile": (PROFILE, 0o644),
    "etc/passwd": ("root::0:0:root:/root:/bin/sh\n", 0o644),
    "etc/group": ("root:x:0:\ntty:x:5:\n", 0o644),
    "etc/shells": ("/bin/sh\n/bin/ash\n", 0o644),
    "etc/hostname": ("xenia\n", 0o644),
    "etc/hosts": ("127.0.0.1\tlocalhost\n", 0o644),
    "etc/resolv.conf": ("", 0o644),
}
DIRS: dict[str, int] = {
    "bin": 0o755, "sbin": 0o755, "usr": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755,
    "usr/share": 0o755, "usr/share/udhcpc": 0o755, "etc": 0o755, "etc/init.d": 0o755,
    "etc/xenia": 0o755, "proc": 0o555, "sys": 0o555, "dev": 0o755, "run": 0o755,
    "tmp": 0o1777, "root": 0o700, "home": 0o755, "mnt": 0o755, "var": 0o755,
    "var/log": 0o755, "var/tmp": 0o1777,
}
SYMLINKS = {"var/run": "../run"}


@dataclass(frozen=True)
class RootfsInfo:
    name: str
    path: Path  # what `rootfs =` names
    busybox_version: str
    size: int  # bytes of regular files
    built: dt.datetime
    owner: int  # uid owning the tree (0: containers of it run without a user namespace)
    ready_line: str = READY_LINE


def _fail(cause: str) -> BackendError:
    return BackendError(f"Failed building image {NAME}: {cause}")


def recipe_hash() -> str:
    h = hashlib.sha256(f"format={FORMAT}\n".encode())
    for path in sorted(FILES):
        text, mode = FILES[path]
        h.update(f"{path} {mode:o}\n{text}\n".encode())
    for path in sorted(DIRS):
        h.update(f"dir {path} {DIRS[path]:o}\n".encode())
    for path in sorted(SYMLINKS):
        h.update(f"link {path} {SYMLINKS[path]}\n".encode())
    return h.hexdigest()



def _info(tree: Path, manifest: dict) -> RootfsInfo:  # type: ignore[type-arg]
    return RootfsInfo(
        name=NAME, path=tree, busybox_version=manifest["packages"][BUSYBOX_PACKAGE],
        size=int(manifest["files"]["rootfs"]["size"]),
        built=dt.datetime.fromisoformat(manifest["built"]), owner=int(manifest["owner"]))


def _valid(tree: Path, owner: int) -> RootfsInfo | None:
    """The tree if its manifest matches the recipe, its owner and its busybox binary."""
    m = read_manifest(tree)
    if m is None or m.get("format") != FORMAT or m.get("recipe") != recipe_hash():
        return None
    try:
        if int(m["owner"]) != owner or tree.stat().st_uid != owner:
            return None
        if sha256_file(tree / "bin/busybox") != m["busybox_sha256"]:
            return None
        return _info(tree, m)
    except (OSError, KeyError, TypeError, ValueError):
        return None


def default_owner() -> int:
    """USERNS_BASE when we can chown (root), else our own uid (no shifting possible)."""
    return USERNS_BASE if os.geteuid() == 0 else os.geteuid()


def build_rootfs(images_dir: Path, *, cache_dir: Path | None = None, force: bool = False,
                 owner: int | None = None,
                 progress: Callable[[str], None] = print) -> RootfsInfo:
    """Build the rootfs into `images_dir/rootfs` (or return it if built and valid).

    `owner`: uid (and gid) that owns the tree; default USERNS_BASE as root, so containers
    of it run in a user namespace. 0 makes a tree for containers without one.
    """
    images_dir = Path(images_dir)
    owner = default_owner() if owner is None else owner
    target = images_dir / NAME
    if not force and (info := _valid(target, owner)) is not None:
        return info
    try:
        images_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _fail(f"cannot create {images_dir}: {e.strerror}") from e
    with build_lock(images_dir, NAME):
        if not force and (info := _valid(target, owner)) is not None:
            return info
        cache = Path(cache_dir) if cache_dir is not None else images_dir / "cache"
        # Only killed builds are removed: a previous tree (.rootfs-old-*) may still be the
        # lower layer of running containers (_replace).
        with build_dir(images_dir, NAME, stale="build-*") as tmp, build_errors(f"image {NAME}"):
            _replace(_build(tmp, cache, owner, progress), target, progress)
    info = _valid(target, owner)
    if info is None:  # pragma: no cover - we just wrote it
        raise _fail(f"{target} does not match its manifest after the build")
    progress(f"Image {NAME} ready in {target}")
    return info


def lower_users(tree: Path) -> list[int]:
    """Pids of container monitors that have `tree` as their rootfs's lower layer."""
    users = []
    want = str(tree).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"xenia.containers.monitor" in argv and b"--lower" in argv:
            i = argv.index(b"--lower")
            if i + 1 < len(argv) and argv[i + 1] == want:
                users.append(int(proc.name))
    return users


def _replace(new: Path, target: Path, progress: Callable[[str], None]) -> None:
    """Put `new` at `target`. The old tree moves aside; running containers keep using it
    (an overlay holds its lower layer by reference), so it is deleted only if none does."""
    old = None
    if target.exists():
        old = target.with_name(f".{NAME}-old-{int(time.time())}-{os.getpid()}")
        os.rename(target, old)
    os.rename(new, target)
    fsync_dir(target.parent)
    if old is not None:
        users = lower_users(target)
        if users:
            progress(f"Kept the previous tree at {old}: running containers use it "
                     f"(monitor pids {', '.join(map(str, users))}); delete it once they "
                     "are gone")
        else:
            shutil.rmtree(old, ignore_errors=True)


def _applets(busybox: Path) -> list[str]:
    try:
        proc = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True,
                              timeout=30, check=False)
    except OSError:
        return []
    if proc.returncode != 0:
        return []
    return [a.strip().lstrip("/") for a in proc.stdout.splitlines() if a.strip()]


def _build(tmp: Path, cache: Path, owner: int, progress: Callable[[str], None]) -> Path:
    fetcher = DebFetcher(cache, progress)
    progress(f"Resolving {BUSYBOX_PACKAGE} with apt-cache")
    pkg = fetcher.show(BUSYBOX_PACKAGE)
    deb = fetcher.download(pkg)
    progress(f"Unpacking {deb.name}")
    unpacked = fetcher.extract(deb, tmp / "deb")
    busybox = unpacked / "bin/busybox"
    if not busybox.is_file():
        raise _fail(f"{pkg.name} has no bin/busybox")

    tree = tmp / "tree"
    tree.mkdir()
    for d, mode in DIRS.items():
        (tree / d).mkdir(parents=True, exist_ok=True)
        os.chmod(tree / d, mode)
    shutil.copyfile(busybox, tree / "bin/busybox")
    os.chmod(tree / "bin/busybox", 0o755)
    applets = _applets(tree / "bin/busybox")
    if not applets:
        raise _fail(f"cannot run {pkg.name}'s busybox here to list its applets (another "
                    "architecture?)")
    for applet in applets:
        if applet == "linuxrc" or (tree / applet).exists() or (tree / applet).is_symlink():
            continue
        (tree / applet).parent.mkdir(parents=True, exist_ok=True)
        os.symlink("/bin/busybox", tree / applet)
    for link, target in SYMLINKS.items():
        os.symlink(target, tree / link)
    for path, (text, mode) in FILES.items():
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).write_text(text)
        os.chmod(tree / path, mode)
    release = (f"XENIA_IMAGE={NAME}\nBUSYBOX_PACKAGE={pkg.name}={pkg.version}\n"
               f"OWNER={owner}\n")
    (tree / "etc/xenia/release").write_text(release)

    size = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file() and not p.is_symlink())
    progress(f"{len(applets)} busybox applets, {size // 1024} KiB")
    manifest = {
        "name": NAME,
        "format": FORMAT,
        "recipe": recipe_hash(),
        "built": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        # For `xenia image list`, which lists kernel images: a container image has none.
        "kernel_version": "(container rootfs)",
        "packages": {pkg.name: pkg.version},
        "debs": {pkg.name: {"filename": pkg.filename, "sha256": pkg.sha256}},
        "busybox_sha256": sha256_file(tree / "bin/busybox"),
        "owner": owner,
        "files": {"rootfs": {"size": size}},
        "ready_line": READY_LINE,
    }
    (tree / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    if owner != os.geteuid():
        progress(f"Giving the tree to uid/gid {owner} (containers of it run in a user "
                 "namespace)")
        for dirpath, dirnames, filenames in os.walk(tree):
            for n in [dirpath, *(os.path.join(dirpath, x) for x in dirnames + filenames)]:
                os.lchown(n, owner, owner)
    return tree
