#!/bin/sh
# Regenerates the hash-pinned lock files from pyproject.toml:
#   requirements.lock        runtime dependencies (+ setuptools, to build Xenia itself)
#   requirements-test.lock   the same plus the [test] extra
# install.sh and run-tests.sh install exactly these with `pip install --require-hashes`.
# Resolved for the distribution's Python (Debian 12: 3.11) on Linux, from PyPI alone: no
# pip.conf, no extra index or find-links of this machine (which a fresh host lacks), so the
# hashes are PyPI's. Run it after changing a dependency; review and commit the diff.
#   scripts/lock-deps.sh [--upgrade]    (--upgrade: newest versions, not the locked ones)
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

py=/usr/bin/python3
[ -x "$py" ] || py=python3
pyver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
upgrade=""
[ "${1:-}" = "--upgrade" ] && upgrade="--upgrade"

tool=$(mktemp -d)
trap 'rm -rf "$tool"' EXIT
# uv resolves and hashes; it is installed from PyPI into a throwaway venv, ignoring
# every pip setting of this machine (--isolated; PIP_* are unset below too). Pinned: a
# new uv may resolve or hash differently, and a lock refresh should change only the locks.
UV_VERSION=0.13.8
env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL -u PIP_CONSTRAINT \
    PIP_CONFIG_FILE=/dev/null "$py" -m venv "$tool/venv"
env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL -u PIP_CONSTRAINT \
    PIP_CONFIG_FILE=/dev/null "$tool/venv/bin/pip" install -q --isolated "uv==$UV_VERSION"
# CVE-2025-47273 (PackageIndex path traversal) is fixed in 78.1.1.
printf 'setuptools>=78.1.1\n' > "$tool/build.in"

# Without --upgrade, uv keeps the versions already in the output file where they still
# satisfy pyproject.toml: a refresh changes only what must change.
compile() {
    out=$1
    shift
    # shellcheck disable=SC2086
    env -u UV_INDEX_URL -u UV_EXTRA_INDEX_URL -u UV_DEFAULT_INDEX -u UV_INDEX \
        -u UV_FIND_LINKS -u UV_CONSTRAINT \
        "$tool/venv/bin/uv" pip compile --no-config --quiet --generate-hashes \
        --python-version "$pyver" --python-platform x86_64-unknown-linux-gnu \
        --custom-compile-command "scripts/lock-deps.sh" $upgrade \
        -o "$out" pyproject.toml "$tool/build.in" "$@"
}
compile requirements.lock
compile requirements-test.lock --extra test
# The throwaway input's path is meaningless in the committed files.
sed -i "s|$tool/build.in|setuptools (to build xenia)|" requirements.lock requirements-test.lock
echo "lock-deps: wrote requirements.lock and requirements-test.lock"
