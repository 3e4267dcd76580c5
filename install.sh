#!/bin/sh
# Xenia quick start: installs everything, builds the tiny guest image and runs the demo.
#   ./install.sh            install + demo (as root)
#   ./install.sh --no-demo  install only
# Installs: Debian/Ubuntu packages (QEMU, Python venv), the xenia package into
# /opt/xenia/venv with `xenia` and `xeniad` in /usr/local/bin, a systemd unit, and the
# tiny guest image in /var/lib/xenia/images/tiny.
set -eu
here=$(cd "$(dirname "$0")" && pwd)

if [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root" >&2
    exit 1
fi

"$here/scripts/install-deps.sh"

prefix=/opt/xenia
echo "install.sh: installing xenia into $prefix/venv"
py=/usr/bin/python3  # the distribution's Python, which install-deps.sh installed
[ -x "$py" ] || py=python3
[ -x "$prefix/venv/bin/python" ] || "$py" -m venv "$prefix/venv"
# Exactly the locked versions, each checked against its hash (scripts/lock-deps.sh makes
# the lock); then Xenia itself, without letting pip resolve anything further.
"$prefix/venv/bin/pip" install -q --require-hashes -r "$here/requirements.lock"
"$prefix/venv/bin/pip" install -q --no-deps --no-build-isolation "$here"
ln -sf "$prefix/venv/bin/xenia" /usr/local/bin/xenia
ln -sf "$prefix/venv/bin/xeniad" /usr/local/bin/xeniad

install -m 0644 "$here/packaging/xeniad.service" /etc/systemd/system/xeniad.service
# The unit's ProtectKernelModules=yes keeps xeniad from loading vfio-pci itself (PCI
# passthrough): load it at boot, and now.
install -m 0644 "$here/packaging/xenia-modules.conf" /etc/modules-load.d/xenia.conf
modprobe vfio-pci 2>/dev/null || true
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi

echo "install.sh: building the tiny guest image"
/usr/local/bin/xenia image build tiny

if [ "${1:-}" != "--no-demo" ]; then
    "$here/scripts/demo.sh" "$here/examples/tiny.cfg"
fi
