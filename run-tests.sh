#!/bin/sh
# Installs the test dependencies and runs the whole test suite (as root: guests, bridges).
#   ./run-tests.sh [pytest args]   (as root)
# Lint (ruff), types (mypy), unit tests, then integration tests with real QEMU guests.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

if [ "$(id -u)" != 0 ]; then
    echo "run-tests.sh: run as root: the tests start guests, bridges and taps" >&2
    exit 1
fi

scripts/install-deps.sh --test
# The distribution's Python (what install-deps.sh installed), not whatever python3 comes
# first on PATH (pyenv under /root, say, which unprivileged test processes cannot run).
py=/usr/bin/python3
[ -x "$py" ] || py=python3
[ -x .venv/bin/python ] || "$py" -m venv .venv
# Exactly the locked versions, each checked against its hash (scripts/lock-deps.sh makes
# the lock); then Xenia itself, without letting pip resolve anything further.
.venv/bin/pip install -q --require-hashes -r requirements-test.lock
.venv/bin/pip install -q --no-deps --no-build-isolation -e .

echo "run-tests.sh: ruff"
.venv/bin/ruff check src tests bench
echo "run-tests.sh: mypy"
.venv/bin/mypy
echo "run-tests.sh: pytest"
exec .venv/bin/pytest -ra "$@"
