"""crun as xeniad runs it: where it is, its version, and the verbs after `create`.

`crun create` runs inside the monitor (monitor.py); xeniad itself runs only `start`,
`state` and `delete`, which touch no cgroup (Xenia's cgroups are its own, crun runs with
--cgroup-manager=disabled) and so work on hybrid hosts too. Every call is a blocking
subprocess with an argv list and a timeout; async callers use asyncio.to_thread.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from xenia.errors import BackendError, NotSupported
from xenia.hostos.cgroupfs import CgroupLayout, host_layout

TIMEOUT = 30.0
UNIFIED = Path("/sys/fs/cgroup/unified")


def find_crun() -> str:
    """The crun binary ($XENIA_CRUN, else PATH); NotSupported with the fix if missing."""
    path = os.environ.get("XENIA_CRUN") or shutil.which("crun")
    if not path or not os.access(path, os.X_OK):
        raise NotSupported("Failed to find crun, the OCI runtime that runs container domains: "
                           "install it (apt-get install crun, or scripts/install-deps.sh)")
    return path


@functools.cache
def crun_version(path: str) -> str:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True,
                             timeout=TIMEOUT, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    first = out.splitlines()[0] if out else ""
    return first.removeprefix("crun version ").strip() or "unknown"


def hybrid(layout: CgroupLayout | None = None) -> bool:
    """True on a hybrid host: v1 hierarchies plus a v2 tree at /sys/fs/cgroup/unified."""
    layout = layout if layout is not None else host_layout()
    return (any(h.version == 1 for h in layout.hierarchies)
            and any(h.version == 2 and h.mount == UNIFIED for h in layout.hierarchies))


class Crun:
    """crun with Xenia's state directory (`--root`), so hosts (XENIA_ROOTs) do not mix."""

    def __init__(self, path: str, state_root: Path) -> None:
        self.path = path
        self.state_root = state_root

    def _run(self, *args: str, doing: str, timeout: float = TIMEOUT) -> str:
        argv = [self.path, "--root", str(self.state_root), *args]
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as e:
            raise BackendError(f"Failed {doing}: crun {args[0]} did not finish in "
                               f"{timeout:.0f} s") from e
        except OSError as e:
            raise BackendError(f"Failed {doing}: cannot run {self.path}: {e.strerror}") from e
        if proc.returncode != 0:
            msg = (proc.stderr or proc.stdout).strip() or f"exit status {proc.returncode}"
            raise BackendError(f"Failed {doing}: crun {args[0]}: {msg}")
        return proc.stdout

    def exists(self, cid: str) -> bool:
        return (self.state_root / cid / "status").is_file()

    def state(self, cid: str) -> dict[str, Any] | None:
        """crun's state of container `cid` ("created", "running", "stopped"...), None if
        crun does not know it."""
        if not self.exists(cid):
            return None
        # `--` before every id: an id is ours (a uuid), but never an option all the same.
        out = self._run("state", "--", cid, doing=f"to read the state of container {cid}")
        try:
            data = json.loads(out)
        except ValueError as e:
            raise BackendError(f"Failed to read the state of container {cid}: crun state "
                               f"printed no JSON: {out[:200]!r}") from e
        return data if isinstance(data, dict) else None

    def start(self, cid: str) -> None:
        """Let the created container's init exec (crun start)."""
        self._run("start", "--", cid, doing=f"to start container {cid}")

    def delete(self, cid: str, force: bool = False) -> None:
        """Forget a stopped container (force: kill it first). Idempotent."""
        if not self.exists(cid):
            return
        args = ["delete", *(["--force"] if force else []), "--", cid]
        try:
            self._run(*args, doing=f"to delete container {cid}")
        except BackendError:
            if self.exists(cid):
                raise
