"""Bench helper: in the private mount namespace `unshare --mount` gave it, hide the
cgroup2 tree of a hybrid host (crun 1.8 refuses to run beside it, see
containers/monitor.py) and exec crun with the arguments given."""

from __future__ import annotations

import os
import subprocess
import sys

UNIFIED = "/sys/fs/cgroup/unified"

if __name__ == "__main__":
    if os.path.ismount(UNIFIED):
        subprocess.run(["umount", "-l", UNIFIED], check=True)
    os.execvp(sys.argv[1], sys.argv[1:])
