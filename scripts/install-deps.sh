#!/bin/sh
# Installs the system packages Xenia needs (as root). Idempotent.
#   scripts/install-deps.sh           runtime packages
#   scripts/install-deps.sh --test    runtime + what the test suite uses
# On Debian 12 QEMU comes from bookworm-backports (QEMU 10): 7.2 corrupts live-migrated
# TCG guests (docs/decisions.md). Debian 13 and Ubuntu 24.04 ship QEMU >= 8 themselves.
set -eu

if [ "$(id -u)" != 0 ]; then
    echo "install-deps: run as root" >&2
    exit 1
fi

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

. /etc/os-release
export DEBIAN_FRONTEND=noninteractive
APT_OPTS="-y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"

qemu_target=""
if [ "${ID:-}" = debian ] && [ "${VERSION_CODENAME:-}" = bookworm ]; then
    src=/etc/apt/sources.list.d/xenia-bookworm-backports.sources
    if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        echo "install-deps: adding bookworm-backports for QEMU 10"
        cat > "$src" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    fi
    qemu_target="-t bookworm-backports"
fi

stamp=/var/lib/apt/periodic/xenia-update-stamp
if [ ! -f "$stamp" ] || [ -n "$(find /etc/apt/sources.list.d -newer "$stamp" 2>/dev/null)" ] \
   || [ "$(find "$stamp" -mmin +720 2>/dev/null)" ]; then
    apt-get update -q
    mkdir -p "$(dirname "$stamp")" && touch "$stamp"
fi

# shellcheck disable=SC2086
apt-get install $APT_OPTS $qemu_target qemu-system-x86 qemu-utils

# apt-get install with APT_OPTS, unless every package named is installed already: each
# apt-get reads its package lists for 1-2 s even with nothing to do, and run-tests.sh
# calls this script on every run.
apt_install() {
    for p in "$@"; do
        case "$p" in -*) continue ;; esac
        if ! dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q " ok installed"; then
            # shellcheck disable=SC2086
            apt-get install $APT_OPTS "$@"
            return
        fi
    done
}
# ovmf: UEFI firmware for firmware="uefi" HVM guests (SeaBIOS comes with qemu-system-x86).
# crun: the OCI runtime of container domains (type = "container"); util-linux gives
# nsenter (Xenia configures container NICs with it; the tests use unshare) and is
# essential on Debian, listed for minimal images.
# fdisk (sfdisk), dosfstools (mkfs.fat), mtools and xorriso: `xenia image build` writes the
# HVM images' partition tables, FAT filesystems and ISO with them (images/fstools.py).
# etcd-server: the cluster's store; xeniad runs its own member on cluster members
# (src/xenia/cluster/etcd_member.py, docs/cluster.md).
# shellcheck disable=SC2086
apt_install --no-install-recommends \
    python3 python3-venv python3-pip ca-certificates apt dpkg iproute2 kmod \
    nftables dnsmasq-base ovmf crun util-linux fdisk dosfstools mtools xorriso etcd-server
# The package enables a stock single-member etcd on localhost; Xenia's member is started by
# xeniad with the cluster's TLS, so the stock service only takes memory: keep it off.
if [ -d /run/systemd/system ] && systemctl is-enabled --quiet etcd 2>/dev/null; then
    systemctl disable --now etcd || true
fi
# swtpm: the software TPM behind `vtpm = [...]` (one swtpm process a domain).
# shellcheck disable=SC2086
apt_install --no-install-recommends swtpm
# lvm2: LVM storage pools (`pool create --type lvm`), and the tests that drive the real
# LVM tools on a loop device (storage/lvm.py).
# shellcheck disable=SC2086
apt_install --no-install-recommends lvm2
# Subordinate ids for the user namespaces of container domains.
"$(dirname "$0")/setup-subids.sh"
# The unprivileged user QEMU runs as (docs/security.md, "QEMU confinement"); xeniad makes
# it too when it is missing.
if ! getent passwd xenia-qemu >/dev/null; then
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin --comment "Xenia QEMU" -- xenia-qemu
fi
if [ "$want_test" = 1 ]; then
    # genisoimage: the CD-ROMs of test_disks.py, and isoinfo, an ISO 9660 reader independent
    # of xorriso that checks the ISOs xorriso writes.
    # shellcheck disable=SC2086
    apt_install --no-install-recommends git procps psmisc busybox iperf3 genisoimage
fi
if [ "$want_test" = 1 ]; then
    # chromium: the web UI's browser tests (tests/integration/test_ui.py) drive Debian's
    # headless Chromium with playwright; playwright's own browser download is not used.
    # shellcheck disable=SC2086
    apt_install --no-install-recommends chromium
fi
