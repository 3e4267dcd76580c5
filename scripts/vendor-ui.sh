#!/bin/sh
# Refreshes the web UI's JavaScript libraries in src/xenia/ui/static/vendor/ from the npm
# registry: the released tarball of each pinned version, its sha512 checked against the
# integrity the registry publishes, and only the files the UI loads, with the licence.
# No Node build step: these are the packages' own built files. Commit the result.
#   scripts/vendor-ui.sh            the pinned versions below
#   XTERM=6.0.0 scripts/vendor-ui.sh  another version of one of them
set -eu

XTERM="${XTERM:-6.0.0}"
NOVNC="${NOVNC:-1.7.0}"
UPLOT="${UPLOT:-1.6.32}"
REGISTRY="${NPM_REGISTRY:-https://registry.npmjs.org}"

here="$(cd "$(dirname "$0")/.." && pwd)"
dest="$here/src/xenia/ui/static/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# fetch NAME VERSION DIR: the package's tarball unpacked in $work/DIR/package
fetch() {
    name="$1"; version="$2"; dir="$3"
    meta="$work/$dir.json"
    curl -fsSL "$REGISTRY/$name/$version" -o "$meta"
    url="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["dist"]["tarball"])' "$meta")"
    want="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["dist"]["integrity"])' "$meta")"
    case "$want" in sha512-*) ;; *) echo "vendor-ui: $name $version: no sha512 integrity" >&2; exit 1;; esac
    curl -fsSL "$url" -o "$work/$dir.tgz"
    got="sha512-$(openssl dgst -sha512 -binary "$work/$dir.tgz" | base64 -w0)"
    if [ "$got" != "$want" ]; then
        echo "vendor-ui: $name $version: integrity mismatch ($got != $want)" >&2
        exit 1
    fi
    mkdir -p "$work/$dir"
    tar -xzf "$work/$dir.tgz" -C "$work/$dir"
    echo "$name $version $want" >> "$work/VERSIONS"
}

fetch "@xterm/xterm" "$XTERM" xterm
fetch "@novnc/novnc" "$NOVNC" novnc
fetch "uplot" "$UPLOT" uplot

rm -rf "$dest"
mkdir -p "$dest/xterm" "$dest/novnc" "$dest/uplot"
x="$work/xterm/package"
cp "$x/lib/xterm.js" "$x/css/xterm.css" "$x/LICENSE" "$dest/xterm/"
n="$work/novnc/package"
# noVNC is ES modules: core/ (rfb.js and what it imports) and vendor/pako, as published.
cp -r "$n/core" "$dest/novnc/"
[ -d "$n/vendor" ] && cp -r "$n/vendor" "$dest/novnc/"
cp "$n/LICENSE.txt" "$dest/novnc/"
u="$work/uplot/package"
cp "$u/dist/uPlot.iife.min.js" "$u/dist/uPlot.min.css" "$u/LICENSE" "$dest/uplot/"
cp "$work/VERSIONS" "$dest/VERSIONS"
echo "vendor-ui: vendored into $dest:"
cat "$dest/VERSIONS"
