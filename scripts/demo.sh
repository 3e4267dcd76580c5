#!/bin/sh
# The demo: boot a guest from an xl.cfg file, show its boot, run a command inside it,
# list it, shut it down. Uses the `xenia` on PATH.
set -eu
cfg=${1:-$(dirname "$0")/../examples/tiny.cfg}
name=tiny-demo
xenia=${XENIA:-xenia}

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

"$xenia" destroy "$name" 2>/dev/null || true

say "xenia create $cfg"
"$xenia" create "$cfg" name="$name"

say "its boot on the console (xenia console --wait)"
"$xenia" console --wait 'xenia-tiny: ready' --timeout 120 "$name"

say "a command inside the guest (xenia console --run)"
"$xenia" console --run 'uname -sr; grep MemTotal /proc/meminfo; echo "cpus: $(nproc)"' "$name"

say "xenia list"
"$xenia" list

say "xenia shutdown -w $name"
"$xenia" shutdown -w "$name"
"$xenia" list
say "done"
