"""The host programs Xenia runs (nft, dnsmasq, mkfs.fat, mtools, sfdisk, xorriso, ...):
found on PATH (plus the sbin directories), run from an argv list, never through a shell."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping

from xenia.errors import BackendError, NotSupported

# xeniad may run with a PATH that lacks the sbin dirs (a user's shell, cron).
_EXTRA_PATH = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def find_tool(name: str, package: str, doing: str) -> str:
    path = os.environ.get("PATH", "") + os.pathsep + os.pathsep.join(_EXTRA_PATH)
    found = shutil.which(name, path=path)
    if found is None:
        raise NotSupported(f"Failed {doing}: '{name}' is not installed; install the "
                           f"'{package}' package (scripts/install-deps.sh does)")
    return found


def run_tool(argv: list[str], doing: str, input: str | None = None,
             timeout: float = 30.0,
             env: Mapping[str, str] | None = None,
             errors: Callable[[str], str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run argv (never through a shell); BackendError with its stderr if it fails.
    `env`, when given, is the whole environment of the program; `errors` picks the lines
    that say what went wrong out of a chatty program's output."""
    try:
        res = subprocess.run(argv, input=input, capture_output=True, text=True,
                             timeout=timeout, check=False,
                             env=dict(env) if env is not None else None,
                             stdin=None if input is not None else subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BackendError(f"Failed {doing}: {os.path.basename(argv[0])}: {e}") from e
    if res.returncode != 0:
        msg = (res.stderr or res.stdout).strip()
        if errors is not None:
            msg = errors(msg) or msg
        msg = msg[-800:] or f"exit status {res.returncode}"
        raise BackendError(f"Failed {doing}: {os.path.basename(argv[0])}: {msg}")
    return res
