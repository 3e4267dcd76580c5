"""Test helper: inside a fresh private mount namespace (unshare --mount), mount an empty
tmpfs on each directory given, then exec the command after `--`. Lets one xeniad NOT see
a directory the others share (non-shared storage on one machine).

    unshare --mount --propagation private python mountns_exec.py DIR... -- CMD...
"""

from __future__ import annotations

import os
import subprocess
import sys


def main() -> None:
    args = sys.argv[1:]
    split = args.index("--")
    dirs, cmd = args[:split], args[split + 1:]
    for d in dirs:
        os.makedirs(d, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1g", "tmpfs", d], check=True)
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main()
