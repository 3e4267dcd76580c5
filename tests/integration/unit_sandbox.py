"""Test helper: run a command under what packaging/xeniad.service asks of systemd, where
this machine has no systemd to ask (tests/integration/test_unit_sandbox.py).

    unshare --mount --propagation slave python unit_sandbox.py -- CMD...

Read from the unit file, applied here: ProtectSystem=full (/usr, /boot, /efi, /etc
read-only), ProtectHome=read-only (/home, /root, /run/user), NoNewPrivileges= and
CapabilityBoundingSet= (through setpriv), ProtectKernelModules= (CAP_SYS_MODULE dropped).
The seccomp parts (RestrictAddressFamilies=, SystemCallArchitectures=, LockPersonality=,
RestrictRealtime=) and PrivateTmp= are not emulated; docs/security.md says so.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parents[2] / "packaging" / "xeniad.service"


def directives(path: Path = UNIT) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            out[key] = value
    return out


def read_only(path: str) -> None:
    if os.path.isdir(path):
        subprocess.run(["mount", "--bind", path, path], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", path], check=True)


def main() -> None:
    args = sys.argv[1:]
    cmd = args[args.index("--") + 1:]
    d = directives()
    system = d.get("ProtectSystem", "no")
    if system in ("yes", "full", "strict"):
        for p in ("/usr", "/boot", "/efi") + (("/etc",) if system != "yes" else ()):
            read_only(p)
    if d.get("ProtectHome") == "read-only":
        for p in ("/home", "/root", "/run/user"):
            read_only(p)
    setpriv = ["setpriv"]
    if d.get("NoNewPrivileges") == "yes":
        setpriv.append("--no-new-privs")
    drop = []
    bounding = d.get("CapabilityBoundingSet", "")
    if bounding.startswith("~"):
        drop = [c.lower().removeprefix("cap_") for c in bounding[1:].split()]
    if d.get("ProtectKernelModules") == "yes" and "sys_module" not in drop:
        drop.append("sys_module")
    if drop:
        setpriv.append("--bounding-set=" + ",".join("-" + c for c in drop))
    os.execvp(setpriv[0], [*setpriv, "--", *cmd])


if __name__ == "__main__":
    main()
